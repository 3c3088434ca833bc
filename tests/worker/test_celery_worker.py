"""A REAL Celery worker process (``celery -A mergetune.worker.celery_app worker --pool solo -c 1``) on the real Redis
of this machine (database index 13) and the real Postgres, running the tiny backbone."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
import worker_support as ws
from sqlalchemy import select, update

from mergetune.common.db import session_scope
from mergetune.common.models import Job, WorkerHeartbeat
from mergetune.common.queue import enqueue_job
from mergetune.common.storage import get_store
from mergetune.worker.pipeline.artifacts import ARTIFACT_ORDER

pytestmark = pytest.mark.slow


def _status(url, job_id):
    return ws.job_row(url, job_id)["status"]


def _redis():
    import redis

    return redis.Redis.from_url(f"{ws.REDIS_URL}/{ws.WORKER_REDIS_DB}")


def test_worker_config_for_long_gpu_jobs(wsettings):
    from mergetune.worker.config import worker_config

    conf = worker_config(wsettings)
    assert conf["task_acks_late"] is True and conf["task_reject_on_worker_lost"] is True
    assert conf["worker_prefetch_multiplier"] == 1 and conf["worker_concurrency"] == 1
    assert conf["task_ignore_result"] is True and conf["result_backend"] is None
    assert conf["broker_transport_options"]["visibility_timeout"] == wsettings.VISIBILITY_TIMEOUT == 86400
    assert conf["task_default_queue"] == "mergetune"


def test_worker_runs_a_job_and_honours_cancel(tmp_path, wsettings, rows):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    w = ws.WorkerProcess(ws.settings_env(wsettings), tmp_path / "worker.log", nodename="w1@test").start()
    try:
        job_id = ws.make_job(url, project, ck, ds, epochs=2)
        enqueue_job(wsettings, job_id)
        ws.wait_for(lambda: _status(url, job_id) in ("succeeded", "failed"), 90, 0.2, "the job to finish")
        assert _status(url, job_id) == "succeeded", (ws.job_row(url, job_id)["error"], w.log()[-3000:])
        assert {a["name"] for a in ws.artifacts(url, job_id)} >= {"prompts.safetensors", "report.json"}
        with session_scope(url) as s:
            hb = s.get(WorkerHeartbeat, "w1@test")
            assert hb is not None and hb.current_job_id is None and hb.info["device"] == "cpu"
            first_beat = hb.last_seen

        long_job = ws.make_job(url, project, ck, ds, epochs=200, batch_size=1)
        enqueue_job(wsettings, long_job)
        ws.wait_for(
            lambda: (ws.job_row(url, long_job)["progress"] or {}).get("epoch", 0) >= 2, 60, 0.1, "epoch 2"
        )
        t0 = time.monotonic()
        with session_scope(url) as s:  # what POST /v1/jobs/{id}/cancel does
            s.execute(
                update(Job).where(Job.id == long_job).values(cancel_requested=True, status="cancelling")
            )
        ws.wait_for(lambda: _status(url, long_job) == "cancelled", 30, 0.1, "the job to be cancelled")
        assert time.monotonic() - t0 < 10  # cooperative: checked every step, read at most every 0.5 s
        assert ws.artifacts(url, long_job) == []
        assert "mergetune.run_job" in w.log() and "Traceback" not in w.log()

        def beat():  # the heartbeat thread keeps beating while the worker lives
            with session_scope(url) as s:
                return s.execute(
                    select(WorkerHeartbeat.last_seen).where(WorkerHeartbeat.hostname == "w1@test")
                ).scalar()

        ws.wait_for(lambda: beat() > first_beat, 15, 0.5, "a later heartbeat")
    finally:
        w.stop()


def test_sigkilled_worker_job_completes_on_a_new_worker_with_one_set_of_artifacts(tmp_path, wsettings, rows):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    env = ws.settings_env(wsettings)
    job_id = ws.make_job(url, project, ck, ds, epochs=12, batch_size=2)
    w1 = ws.WorkerProcess(env, tmp_path / "w1.log", nodename="gpu0@test").start()
    enqueue_job(wsettings, job_id)
    ws.wait_for(lambda: (ws.job_row(url, job_id)["progress"] or {}).get("epoch", 0) >= 4, 60, 0.05, "epoch 4")
    w1.kill()
    killed_at = ws.job_row(url, job_id)["progress"]["epoch"]
    assert _status(url, job_id) == "running"
    # acks_late: the message of the killed job is still unacknowledged in Redis, not lost.
    r = _redis()
    assert r.hlen("unacked") == 1

    w2 = ws.WorkerProcess(env, tmp_path / "w2.log", nodename="gpu0@test").start()  # the node restarts
    try:
        ws.wait_for(lambda: _status(url, job_id) in ("succeeded", "failed"), 120, 0.2, "the job to finish")
        job = ws.job_row(url, job_id)
        assert job["status"] == "succeeded", (job["error"], w2.log()[-3000:])
        assert job["attempts"] == 2
        evs = ws.events(url, job_id)
        resumed = [e["data"]["epoch"] for e in evs if e["type"] == "resume"]
        assert len(resumed) == 1 and 3 <= resumed[0] <= killed_at
        # every epoch reported exactly once: 1..k before the kill, k+1..12 after the resume from state k
        assert [e["data"]["epoch"] for e in evs if e["type"] == "epoch"] == list(range(1, 13))
        arts = ws.artifacts(url, job_id)
        # each prompt artifact once (every name the pipeline uploads except a head's)
        assert len(arts) == len({a["name"] for a in arts}) == len(set(ARTIFACT_ORDER) - {"head.safetensors"})
        store = get_store(wsettings)
        assert sorted(store.list(f"jobs/{job_id}/")) == sorted(a["key"] for a in arts)
        manifest = json.loads(store.get_bytes(f"jobs/{job_id}/manifest.json"))
        assert manifest["attempts"] == 2 and manifest["resumed_from_epoch"] == resumed[0]

        # The killed delivery is redelivered once kombu sweeps it (after the visibility timeout; forced here
        # with a zero timeout): the worker acknowledges it without rerunning the finished job.
        _sweep_unacked(wsettings.BROKER_URL)
        ws.wait_for(lambda: r.hlen("unacked") == 0 and r.llen("mergetune") == 0, 30, 0.2, "the redelivery")
        ws.wait_for(lambda: "skipped: already succeeded" in w2.log(), 10, 0.2, "the skip")
        assert ws.artifacts(url, job_id) == arts and ws.job_row(url, job_id)["attempts"] == 2
    finally:
        w2.stop()


def _sweep_unacked(broker_url: str) -> None:
    """What any worker's periodic sweep does once a message is older than the visibility timeout."""
    from kombu import Connection

    with Connection(broker_url, transport_options={"visibility_timeout": 0}) as conn:
        conn.default_channel.qos.restore_visible(num=100)


def test_kombu_redis_restores_messages_of_a_killed_consumer(wsettings):
    """The mechanism behind acks_late on Redis: a consumer killed before ack leaves the message in the
    ``unacked`` hash; a sweep after the visibility timeout puts it back on the queue."""
    code = f"""
import os, signal
from kombu import Connection
with Connection({wsettings.BROKER_URL!r}, transport_options={{"visibility_timeout": 1}}) as c:
    q = c.SimpleQueue("mt-restore-test")
    msg = q.get(timeout=5)
    print(msg.payload, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
"""
    from kombu import Connection

    with Connection(wsettings.BROKER_URL, transport_options={"visibility_timeout": 1}) as conn:
        q = conn.SimpleQueue("mt-restore-test")
        q.put({"job": "job_x"})
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.returncode == -9 and "job_x" in out.stdout
        r = _redis()
        assert r.llen("mt-restore-test") == 0 and r.hlen("unacked") == 1
        time.sleep(1.2)
        conn.default_channel.qos.restore_visible(num=10)
        assert r.llen("mt-restore-test") == 1 and r.hlen("unacked") == 0
        assert q.get(timeout=5).payload == {"job": "job_x"}
        q.close()
