"""One reconciler pass against a real Postgres and a real Redis: stalled jobs (fresh heartbeat, old
progress stamp) are requeued once and their old owner is fenced off; queued jobs without a message get
exactly one; the stale ``unacked`` entry a killed worker leaves is removed; the claim lets one of two
concurrent workers win; a resumed job reports the time of all its attempts."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from datetime import timedelta

import pytest
import worker_support as ws
from sqlalchemy import update

from mergetune.common.db import session_scope
from mergetune.common.models import Job, WorkerHeartbeat, utcnow
from mergetune.common.queue import enqueue_job
from mergetune.worker import jobdb, pipeline
from mergetune.worker.reconcile import _job_id_of, broker_job_ids, reconcile_once

REDIS_DB = 21  # of this session's private redis-server (tests/conftest.py starts it with 32 databases)


def _redis_url() -> str:
    # read now, not at import: the private server's URL is set in pytest_configure
    return f"{os.environ['MERGETUNE_TEST_REDIS_URL']}/{REDIS_DB}"


@pytest.fixture(scope="module")
def rec_pg_url():
    with ws.fresh_database("mt_reconcile") as url:
        yield url


@pytest.fixture
def rsettings(tmp_path, rec_pg_url):
    _redis().flushdb()
    return ws.make_settings(
        tmp_path / "home",
        rec_pg_url,
        _redis_url(),
        RECONCILE_STALL_TIMEOUT=5.0,
        RECONCILE_QUEUE_GRACE=2.0,
    )


@pytest.fixture
def rows(rsettings):
    from mergetune.common.storage import LocalStore

    url = rsettings.DATABASE_URL
    with session_scope(url) as s:  # earlier tests' jobs are not this test's business
        s.execute(
            update(Job).where(Job.finished_at.is_(None)).values(status="cancelled", finished_at=utcnow())
        )
    project = ws.make_project(url)
    store = LocalStore(rsettings.ARTIFACT_URL)
    return (
        project,
        ws.make_checkpoint(url, store, project, ws.tiny_ctx()),
        ws.make_dataset(url, rsettings, project),
    )


def _redis():
    import redis

    return redis.Redis.from_url(_redis_url())


def _set(url: str, job_id: str, **values) -> None:
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(**values))


def test_a_stalled_job_with_a_live_worker_is_requeued_once_and_its_old_owner_fenced(rsettings, rows):
    url = rsettings.DATABASE_URL
    job_id = ws.make_job(url, *rows)
    claim = jobdb.claim_job(url, job_id, "w1@test")
    assert claim.action == "run" and claim.attempt == 1
    jobdb.heartbeat(url, "w1@test")  # the worker is alive and says it runs the job ...
    assert reconcile_once(rsettings).stalled == []  # ... and its stamp is fresh: nothing to do
    _set(url, job_id, progress_at=utcnow() - timedelta(seconds=6))  # ... but no progress for 6 s > 5 s

    rep = reconcile_once(rsettings)
    assert rep.stalled == [job_id] and rep.orphaned == [] and rep.lost == []
    job = ws.job_row(url, job_id)
    assert job["status"] == "queued" and job["enqueued_at"] is not None
    assert broker_job_ids(rsettings) == {job_id} and _redis().llen("mergetune") == 1
    assert any("No progress from worker w1@test" in e["message"] for e in ws.events(url, job_id))
    # the old owner's lease ended: its next check stops it and it cannot finish the job
    assert jobdb.stop_flags(url, job_id, claim.attempt) == (False, None)
    from mergetune.common.models import JobStatus

    assert not jobdb.finish_job(url, job_id, "w1@test", JobStatus.succeeded, message="x", attempt=1)

    again = reconcile_once(rsettings)  # idempotent: no second requeue, no second message
    assert again.stalled == [] and again.lost == [] and _redis().llen("mergetune") == 1

    # two workers take the redelivered message at once: exactly one runs it
    outcomes: list[str] = []
    barrier = threading.Barrier(2)

    def take(host: str) -> None:
        barrier.wait()
        outcomes.append(jobdb.claim_job(url, job_id, host).action)

    threads = [threading.Thread(target=take, args=(h,)) for h in ("w2@test", "w3@test")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["run", "skip"]
    assert ws.job_row(url, job_id)["attempts"] == 2


def test_a_queued_job_whose_message_is_gone_is_sent_again_once(rsettings, rows):
    url = rsettings.DATABASE_URL
    waiting = ws.make_job(url, *rows)  # in Postgres, never sent (as after a Redis restart without AOF)
    fresh = ws.make_job(url, *rows)
    enqueue_job(rsettings, fresh)
    _set(url, waiting, queued_at=utcnow() - timedelta(seconds=10))
    _set(url, fresh, queued_at=utcnow() - timedelta(seconds=10))

    rep = reconcile_once(rsettings)
    assert rep.lost == [waiting]  # the other one has its message
    assert sorted(broker_job_ids(rsettings) or ()) == sorted([waiting, fresh])
    assert any("re-enqueued" in e["message"] for e in ws.events(url, waiting))
    assert reconcile_once(rsettings).lost == []  # sent just now: within the grace period
    _set(url, waiting, enqueued_at=utcnow() - timedelta(seconds=10))
    assert reconcile_once(rsettings).lost == []  # its message is in the queue: nothing to resend
    assert _redis().llen("mergetune") == 2


def _deliver_and_die(broker_url: str) -> None:
    """A consumer that takes one message and is SIGKILLed before acknowledging it (a killed worker)."""
    code = f"""
import os, signal
from kombu import Connection
with Connection({broker_url!r}) as c:
    q = c.SimpleQueue("mergetune")
    q.get(timeout=10)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == -9, out.stderr


def test_the_unacked_entry_of_a_killed_delivery_is_removed_not_left_for_24_h(rsettings, rows):
    url = rsettings.DATABASE_URL
    r = _redis()
    done = ws.make_job(url, *rows)
    enqueue_job(rsettings, done)
    _deliver_and_die(rsettings.BROKER_URL)
    assert r.hlen("unacked") == 1 and _job_id_of(next(iter(r.hvals("unacked")))) == done
    assert reconcile_once(rsettings).swept == 0  # still queued: this delivery may be alive
    _set(url, done, status="succeeded")  # finished by the worker the job was requeued to
    assert reconcile_once(rsettings).swept == 1
    assert r.hlen("unacked") == 0 and r.zcard("unacked_index") == 0

    # A worker took the job a minute ago and was killed; nothing else runs it.
    requeued = ws.make_job(url, *rows)
    enqueue_job(rsettings, requeued)
    _deliver_and_die(rsettings.BROKER_URL)
    (tag,) = r.hkeys("unacked")
    r.zadd("unacked_index", {tag: r.zscore("unacked_index", tag) - 60})
    _set(url, requeued, status="running", worker_host="dead@test", attempts=1)
    rep = reconcile_once(rsettings)  # requeued (its worker has no heartbeat), sent again, old entry gone
    assert rep.orphaned == [requeued] and rep.swept == 1
    assert r.hlen("unacked") == 0 and broker_job_ids(rsettings) == {requeued}


def test_a_resumed_job_reports_the_time_of_all_its_attempts(rsettings, rows):
    import torch

    torch.set_num_threads(1)
    url = rsettings.DATABASE_URL
    job_id = ws.make_job(url, *rows, epochs=1)
    assert jobdb.claim_job(url, job_id, "dead@test").action == "run"
    now = utcnow()
    # the first attempt ran 60 s (start to last progress stamp), then its worker died
    _set(
        url, job_id, attempt_started_at=now - timedelta(seconds=100), progress_at=now - timedelta(seconds=40)
    )
    with session_scope(url) as s:
        s.execute(
            update(WorkerHeartbeat)
            .where(WorkerHeartbeat.hostname == "dead@test")
            .values(last_seen=now - timedelta(seconds=120))
        )
    assert pipeline.run_job(job_id, settings=rsettings, hostname="w@test") == "succeeded"
    job = ws.job_row(url, job_id)
    last = [e for e in ws.events(url, job_id) if e["type"] == "status"][-1]["message"]
    seconds = float(last.split(" in ")[1].split(" s")[0])
    assert last.startswith("Job succeeded in ") and last.endswith("(2 attempts)"), last
    assert 60.0 <= seconds < 60.0 + 60 and job["run_seconds"] == pytest.approx(seconds, abs=0.05)


def test_a_job_handed_back_during_an_outage_is_released_for_any_worker(rsettings, rows):
    """A worker that gave a job back while the database was down stops vouching for it once the
    database answers (its heartbeat releases the job), unless it claimed the job again meanwhile."""
    url = rsettings.DATABASE_URL
    job_id = ws.make_job(url, *rows)
    assert jobdb.claim_job(url, job_id, "w1@test").attempt == 1
    assert jobdb.claim_job(url, job_id, "w2@test").action == "skip"  # w1 is alive and runs it

    jobdb.heartbeat(url, "w1@test", release={job_id: 1})  # handed back in attempt 1
    with session_scope(url) as s:
        assert s.get(WorkerHeartbeat, "w1@test").current_job_id is None
    rep = reconcile_once(rsettings)  # the job is nobody's now: requeued and sent again
    assert rep.orphaned == [job_id] and broker_job_ids(rsettings) == {job_id}
    claim = jobdb.claim_job(url, job_id, "w2@test")
    assert claim.action == "run" and claim.attempt == 2 and claim.resumed

    jobdb.heartbeat(url, "w2@test", release={job_id: 1})  # a stale release never drops a live claim
    with session_scope(url) as s:
        assert s.get(WorkerHeartbeat, "w2@test").current_job_id == job_id


def test_embedded_mode_sqlite_and_filesystem_queue(tmp_path):
    """The embedded mode's reconciler (SQLite, kombu's filesystem queue): a queued job whose message file
    is gone is sent again, once; a stalled one is requeued."""
    from mergetune.common.db import upgrade_head
    from mergetune.common.storage import LocalStore

    home = tmp_path / "home"
    settings = ws.make_settings(
        home,
        f"sqlite:///{home / 'mergetune.db'}",
        "filesystem://",
        RECONCILE_QUEUE_GRACE=2.0,
        RECONCILE_STALL_TIMEOUT=5.0,
    )
    url = settings.DATABASE_URL
    upgrade_head(url)
    project = ws.make_project(url)
    ck = ws.make_checkpoint(url, LocalStore(settings.ARTIFACT_URL), project, ws.tiny_ctx())
    ds = ws.make_dataset(url, settings, project)
    lost = ws.make_job(url, project, ck, ds)
    _set(url, lost, queued_at=utcnow() - timedelta(seconds=10))
    stalled = ws.make_job(url, project, ck, ds)
    assert jobdb.claim_job(url, stalled, "embedded@test").action == "run"
    jobdb.heartbeat(url, "embedded@test")
    _set(url, stalled, progress_at=utcnow() - timedelta(seconds=6))

    rep = reconcile_once(settings)
    assert rep.lost == [lost] and rep.stalled == [stalled]
    assert broker_job_ids(settings) == {lost, stalled} and len(list(settings.queue_dir.glob("*.msg"))) == 2
    _set(url, lost, enqueued_at=utcnow() - timedelta(seconds=10))
    again = reconcile_once(settings)
    assert again.lost == [] and again.stalled == [] and len(list(settings.queue_dir.glob("*.msg"))) == 2
