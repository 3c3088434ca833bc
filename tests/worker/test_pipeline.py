"""The job pipeline in-process against the real Postgres (fresh, migrated database), the tiny random
CLIP and the builtin dataset. The Celery process around it is covered by tests/worker/test_celery_worker.py
and tests/e2e."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timedelta

import pytest
import worker_support as ws
from sqlalchemy import update

from mergetune.common.db import session_scope
from mergetune.common.models import Job, WorkerHeartbeat, utcnow
from mergetune.worker import jobdb, pipeline

HOST = "w-test@local"
EXPECTED = {
    "prompts.safetensors",
    "prompts.pth.tar",
    "prompts-coop.tar",
    "report.json",
    "manifest.json",
    "report.html",
    "curves.png",
}


def test_job_succeeds_with_one_set_of_artifacts_and_is_not_rerun(wsettings, store, rows, ctx_ft):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds, epochs=2)

    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded"

    job = ws.job_row(url, job_id)
    assert job["status"] == "succeeded" and job["attempts"] == 1 and job["worker_host"] == HOST
    assert job["error"] is None and job["finished_at"] >= job["started_at"]
    # 3 base classes x 4 shots = 12 images, batch 4 -> 3 steps per epoch; progress is 1-based.
    progress = job["progress"]
    assert {k: progress[k] for k in ("epoch", "epochs", "step", "steps")} == {
        "epoch": 2,
        "epochs": 2,
        "step": 3,
        "steps": 3,
    }
    # the measured epochs the estimate is paced from: both, each a positive duration, the last one's end
    assert progress["epochs_done"] == 2 and progress["epochs_measured"] == 2
    assert len(progress["epoch_seconds"]) == 2 and all(sec > 0 for sec in progress["epoch_seconds"])
    assert job["started_at"] <= datetime.fromisoformat(progress["epoch_done_at"]) <= job["finished_at"]
    assert set(progress) == {"epoch", "epochs", "step", "steps", "loss", "epoch_seconds", "epochs_measured",
                             "epochs_done", "epoch_done_at"}  # fmt: skip
    assert set(job["metrics"]) == {"zero_shot", "fine_tuned", "recovered"}
    for m in job["metrics"].values():
        assert set(m) == {"base", "novel", "hm"} and all(0.0 <= v <= 100.0 for v in m.values())

    arts = {a["name"]: a for a in ws.artifacts(url, job_id)}
    assert set(arts) == EXPECTED
    for name, a in arts.items():
        data = store.get_bytes(a["key"])
        assert a["key"] == f"jobs/{job_id}/{name}"
        assert len(data) == a["bytes"] and hashlib.sha256(data).hexdigest() == a["sha256"]
    # nothing else under the job's prefix (the epoch state is removed after success)
    assert sorted(store.list(f"jobs/{job_id}/")) == sorted(a["key"] for a in arts.values())

    report = json.loads(store.get_bytes(arts["report.json"]["key"]))
    assert {"metrics", "baselines", "curves", "training", "timings", "config", "manifest"} <= set(report)
    assert report["metrics"] == job["metrics"] and len(report["training"]) == 2
    manifest = json.loads(store.get_bytes(arts["manifest.json"]["key"]))
    assert manifest == report["manifest"]
    assert manifest["seed"] == 1 and manifest["config"]["hyperparameters"]["epochs"] == 2
    assert manifest["backbone"] == {
        "model": "tiny-test",
        "pretrained": "random",
        "weights_sha256": "random:0",
    } or (manifest["backbone"]["weights_sha256"].startswith("random"))
    assert manifest["dataset"]["registered_split_sha256"] == manifest["dataset"]["dataset_sha256"]
    assert manifest["packages"]["torch"] and manifest["packages"]["python"]
    assert manifest["worker"]["node"] == HOST and manifest["worker"]["device"] == "cpu"
    assert {"load_backbone", "load_dataset", "recover", "export", "total"} <= set(manifest["timings"])
    # the dataset kind's training transform is recorded; the verdict is the job's and the report's
    assert manifest["dataset"]["train_transform"]["name"] == "small_image_flip"
    assert report["config"]["train_transform"] == manifest["dataset"]["train_transform"]
    assert job["verdict"] == report["verdict"] and job["verdict"]["text"].startswith("Recovered HM ")
    verdict_events = [e for e in ws.events(url, job_id) if e["type"] == "verdict"]
    assert [e["message"] for e in verdict_events] == [job["verdict"]["text"]]
    # each epoch event carries the epoch's mean loss parts and validation accuracy
    records = [e["data"]["record"] for e in ws.events(url, job_id) if e["type"] == "epoch"]
    assert [r["ce"] for r in records] == [t["ce"] for t in report["training"]]
    assert all(0.0 <= r["val_acc"] <= 100.0 for r in records)

    tensors = ws.load_safetensors_bytes(store.get_bytes(arts["prompts.safetensors"]["key"]))
    assert tensors["ctx"].shape == ctx_ft.shape and not bool((tensors["ctx"] == ctx_ft).all())

    types = [e["type"] for e in ws.events(url, job_id)]
    assert types[0] == "status" and types.count("epoch") == 2 and types[-1] == "status"
    statuses = [e["data"]["status"] for e in ws.events(url, job_id) if e["type"] == "status"]
    assert statuses == ["running", "evaluating", "succeeded"]
    with session_scope(url) as s:
        assert s.get(WorkerHeartbeat, HOST).current_job_id is None

    # A redelivered message for a finished job changes nothing.
    before = ws.artifacts(url, job_id)
    assert (
        pipeline.run_job(job_id, settings=wsettings, hostname="other@x", store=store)
        == "skipped: already succeeded; nothing else to run"  # and no other job is queued
    )
    assert ws.artifacts(url, job_id) == before and ws.job_row(url, job_id)["attempts"] == 1


class _Crash(BaseException):
    """Stands in for SIGKILL: not an Exception, so the pipeline records nothing and re-raises."""


def test_interrupted_job_resumes_from_its_epoch_state_and_ends_identical(wsettings, store, rows, monkeypatch):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    reference = ws.make_job(url, project, ck, ds, epochs=4)
    assert pipeline.run_job(reference, settings=wsettings, hostname=HOST, store=store) == "succeeded"

    job_id = ws.make_job(url, project, ck, ds, epochs=4)
    real_epoch_end = pipeline.JobCallbacks.on_epoch_end

    def crash_after_two(self, state):
        real_epoch_end(self, state)
        if state["epoch"] == 2:
            raise _Crash()

    monkeypatch.setattr(pipeline.JobCallbacks, "on_epoch_end", crash_after_two)
    with pytest.raises(_Crash):
        pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store)
    monkeypatch.setattr(pipeline.JobCallbacks, "on_epoch_end", real_epoch_end)
    job = ws.job_row(url, job_id)
    assert job["status"] == "running" and store.exists(pipeline.state_key(job_id))
    assert ws.artifacts(url, job_id) == []

    # Redelivered to the same node (restarted): resumes at epoch 2 and finishes.
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded"
    job = ws.job_row(url, job_id)
    assert job["attempts"] == 2 and job["status"] == "succeeded"
    resume = [e for e in ws.events(url, job_id) if e["type"] == "resume"]
    assert [e["data"]["epoch"] for e in resume] == [2]
    assert [e["data"]["epoch"] for e in ws.events(url, job_id) if e["type"] == "epoch"] == [1, 2, 3, 4]
    assert not store.exists(pipeline.state_key(job_id))

    def ctx_of(j):
        key = next(a["key"] for a in ws.artifacts(url, j) if a["name"] == "prompts.safetensors")
        return ws.load_safetensors_bytes(store.get_bytes(key))["ctx"]

    assert bool((ctx_of(job_id) == ctx_of(reference)).all())  # bit-identical to the uninterrupted run
    assert len(ws.artifacts(url, job_id)) == len(EXPECTED)


def test_worker_killed_between_state_and_event_still_logs_every_epoch_once(
    wsettings, store, rows, monkeypatch
):
    """The epoch state is stored before its event; a crash in between must not lose the event."""
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds, epochs=4)
    real_add_event = jobdb.add_event

    def crash_on_epoch_two_event(url_, job_id_, type_, message, level="info", **data):
        if type_ == "epoch" and data.get("epoch") == 2:
            raise _Crash()
        real_add_event(url_, job_id_, type_, message, level, **data)

    monkeypatch.setattr(jobdb, "add_event", crash_on_epoch_two_event)
    with pytest.raises(_Crash):
        pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store)
    monkeypatch.setattr(jobdb, "add_event", real_add_event)
    assert [e["data"]["epoch"] for e in ws.events(url, job_id) if e["type"] == "epoch"] == [1]

    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded"
    epochs = [e for e in ws.events(url, job_id) if e["type"] == "epoch"]
    assert [e["data"]["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert all(isinstance(e["data"]["loss"], float) and e["data"]["loss"] > 0 for e in epochs)


def test_cancel_requested_before_start_and_during_training(wsettings, store, rows, monkeypatch):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    early = ws.make_job(url, project, ck, ds)
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == early).values(cancel_requested=True, status="cancelling"))
    assert pipeline.run_job(early, settings=wsettings, hostname=HOST, store=store) == "cancelled"
    assert ws.job_row(url, early)["status"] == "cancelled" and ws.job_row(url, early)["attempts"] == 0

    job_id = ws.make_job(url, project, ck, ds, epochs=5)
    real = pipeline.JobCallbacks.on_epoch_end

    def cancel_after_first_epoch(self, state):
        real(self, state)
        if state["epoch"] == 1:  # what POST /v1/jobs/{id}/cancel does
            with session_scope(url) as s:
                s.execute(
                    update(Job).where(Job.id == job_id).values(cancel_requested=True, status="cancelling")
                )
            self._last_cancel_check = float("-inf")  # do not wait for the 0.5 s throttle

    monkeypatch.setattr(pipeline.JobCallbacks, "on_epoch_end", cancel_after_first_epoch)
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "cancelled"
    job = ws.job_row(url, job_id)
    assert job["status"] == "cancelled" and job["finished_at"] is not None and job["progress"]["epoch"] == 1
    assert ws.artifacts(url, job_id) == [] and store.list(f"jobs/{job_id}/") == []
    assert [e["type"] for e in ws.events(url, job_id)].count("epoch") == 1


def test_user_error_and_system_error_are_told_apart(wsettings, store, rows, monkeypatch):
    url = wsettings.DATABASE_URL
    project, _, ds = rows
    import torch

    bad = ws.make_checkpoint(url, store, project, torch.zeros(4, 7))  # width 7 != the backbone's 64
    job_id = ws.make_job(url, project, bad, ds)
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "failed"
    err = ws.job_row(url, job_id)["error"]
    assert err["user_error"] is True and err["code"] not in ("internal_error", "core_error"), err
    assert ws.job_row(url, job_id)["status"] == "failed" and ws.artifacts(url, job_id) == []

    _, ck, _ = rows
    job_id = ws.make_job(url, project, ck, ds)

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr("mergetune.core.method.recovery.recover", boom)
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "failed"
    err = ws.job_row(url, job_id)["error"]
    assert err == {"code": "internal_error", "message": "RuntimeError: disk on fire", "user_error": False}
    assert any(e["type"] == "traceback" and "disk on fire" in e["message"] for e in ws.events(url, job_id))


def test_a_loss_that_goes_non_finite_fails_the_job_with_its_code(wsettings, store, rows):
    import torch

    url = wsettings.DATABASE_URL
    project, _, ds = rows
    # a context this large overflows the text encoder: the first loss is NaN
    huge = ws.make_checkpoint(url, store, project, torch.full((4, 64), 1e30))
    job_id = ws.make_job(url, project, huge, ds, epochs=2)
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "failed"
    job = ws.job_row(url, job_id)
    assert job["error"]["code"] == "non_finite_loss" and job["error"]["user_error"] is True
    assert "epoch 1 step 1" in job["error"]["message"]
    assert job["verdict"] is None and ws.artifacts(url, job_id) == []


def _own(url, job_id, host, *, seen_ago: float, current: bool):
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(status="running", worker_host=host, attempts=1))
        hb = s.get(WorkerHeartbeat, host) or WorkerHeartbeat(hostname=host)
        hb.last_seen = utcnow() - timedelta(seconds=seen_ago)
        hb.current_job_id = job_id if current else None
        s.add(hb)


def test_redelivery_skips_a_job_owned_by_a_live_worker_and_takes_over_a_dead_ones(wsettings, store, rows):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds)
    _own(url, job_id, "live@a", seen_ago=1, current=True)
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == (
        "skipped: running on live worker live@a; nothing else to run"
    )
    assert ws.job_row(url, job_id)["attempts"] == 1

    _own(url, job_id, "dead@b", seen_ago=jobdb.STALE_AFTER + 5, current=True)
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded"
    job = ws.job_row(url, job_id)
    assert job["attempts"] == 2 and job["worker_host"] == HOST


def test_reaper_requeues_only_orphaned_jobs(wsettings, rows):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    live = ws.make_job(url, project, ck, ds)
    stale = ws.make_job(url, project, ck, ds)
    restarted = ws.make_job(url, project, ck, ds)
    _own(url, live, "r-live@a", seen_ago=2, current=True)
    _own(url, stale, "r-stale@b", seen_ago=jobdb.STALE_AFTER + 1, current=True)
    _own(url, restarted, "r-restarted@c", seen_ago=0, current=False)  # same node name, new process
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == restarted).values(status="cancelling", cancel_requested=True))

    requeued = set(jobdb.requeue_orphans(url)) & {live, stale, restarted}
    assert requeued == {stale, restarted}
    assert ws.job_row(url, live)["status"] == "running"
    assert ws.job_row(url, stale)["status"] == "queued"
    assert ws.job_row(url, restarted)["status"] == "cancelling"
    assert any("requeued" in e["message"] for e in ws.events(url, stale))
    assert not set(jobdb.requeue_orphans(url)) & {live, stale}  # a second pass finds nothing new


def test_callbacks_throttle_progress_writes_and_cancel_reads(wsettings, store, rows):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds)
    now = [100.0]
    cb = pipeline.JobCallbacks(url, job_id, store, epochs=3, clock=lambda: now[0])
    for step in range(10):  # 10 steps within 0.9 s: one write (the first), no end of epoch
        cb.on_progress(0, step, 1.0 / (step + 1), epochs=3, steps=20)
        now[0] += 0.1
    assert cb.progress_writes == 1
    cb.on_progress(0, 19, 0.05, epochs=3, steps=20)  # end of epoch: always written
    assert cb.progress_writes == 2
    assert ws.job_row(url, job_id)["progress"] == {
        "epoch": 1,
        "epochs": 3,
        "step": 20,
        "steps": 20,
        "loss": 0.05,
    }

    for _ in range(20):  # 20 checks over 1 s -> 2 database reads
        assert cb.should_stop() is False
        now[0] += 0.05
    assert cb.cancel_reads == 2
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(cancel_requested=True))
    now[0] += 0.5
    assert cb.should_stop() is True and cb.should_stop() is True and cb.cancel_reads == 3


def test_linear_head_job_exports_a_head(wsettings, store, rows):
    import torch

    from mergetune.core.config import BackboneSpec
    from mergetune.core.model.backbone import load_backbone

    url = wsettings.DATABASE_URL
    project, _, ds = rows
    dim = load_backbone(BackboneSpec(**ws.TINY_BACKBONE)).embed_dim
    g = torch.Generator().manual_seed(3)
    head = {"weight": torch.randn(3, dim, generator=g), "bias": torch.zeros(3)}  # the 3 base classes
    ck = ws.make_checkpoint(url, store, project, None, method="linear_head", head=head)
    shift = ws.make_dataset(
        url, wsettings, project, options={**ws.TINY_DATASET_OPTIONS, "domain": "shift"}, name="tiny-shift"
    )
    job_id = ws.make_job(url, project, ck, ds, job_type="linear_head", epochs=2, eval_dataset_ids=[shift])

    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded", (
        ws.job_row(url, job_id)["error"]
    )
    names = {a["name"] for a in ws.artifacts(url, job_id)}
    assert "head.safetensors" in names and {"report.json", "manifest.json"} <= names
    assert not names & {"prompts.safetensors", "prompts.pth.tar"}
    key = f"jobs/{job_id}/head.safetensors"
    out = ws.load_safetensors_bytes(store.get_bytes(key))
    assert out["weight"].shape == (3, dim) and out["bias"].shape == (3,)
    manifest = json.loads(store.get_bytes(f"jobs/{job_id}/manifest.json"))
    assert (
        manifest["config"]["method"] == "linear_head" and manifest["config"]["hyperparameters"]["lam"] == 1e-3
    )
    # The built-in default shifted split stays; the registered extra dataset comes on top.
    report = json.loads(store.get_bytes(f"jobs/{job_id}/report.json"))
    extra = {e["dataset"]: e for e in report["extra_evaluations"]}
    assert set(extra) == {"builtin-shift", "tiny-shift"}
    assert extra["tiny-shift"] == extra["builtin-shift"] | {"dataset": "tiny-shift"}, extra
    # (a base-class head has no rows for the 6 shifted classes: only zero-shot is reported there)
    assert extra["tiny-shift"]["classes"] == 6 and extra["tiny-shift"]["zero_shot"] is not None


def test_a_node_that_lost_the_job_stops_without_touching_it(wsettings, store, rows, monkeypatch):
    """A node presumed dead (stale heartbeat) whose job was taken over stops at its next check and leaves
    the job, its state and its artifacts to the new owner."""
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds, epochs=4)
    real = pipeline.JobCallbacks.on_epoch_end

    def taken_over_after_first_epoch(self, state):
        real(self, state)
        if state["epoch"] == 1:
            with session_scope(url) as s:
                s.execute(update(Job).where(Job.id == job_id).values(worker_host="new-owner@x"))
            self._last_cancel_check = float("-inf")

    monkeypatch.setattr(pipeline.JobCallbacks, "on_epoch_end", taken_over_after_first_epoch)
    assert (
        pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "skipped: lost ownership"
    )
    job = ws.job_row(url, job_id)
    assert job["status"] == "running" and job["worker_host"] == "new-owner@x" and job["finished_at"] is None
    assert store.exists(pipeline.state_key(job_id)) and ws.artifacts(url, job_id) == []


def test_job_runs_with_the_s3_artifact_store(wsettings, rows, ctx_ft, s3_endpoint, s3_credentials):
    """Checkpoint tensors, epoch state and artifacts in an S3 bucket (moto server over HTTP)."""
    from mergetune.common.storage import S3Store

    url = wsettings.DATABASE_URL
    s3 = S3Store("s3://mergetune-jobs/prod", endpoint_url=s3_endpoint)
    s3.ensure_bucket()
    project, _, ds = rows
    ck = ws.make_checkpoint(url, s3, project, ctx_ft)
    job_id = ws.make_job(url, project, ck, ds, epochs=2)
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=s3) == "succeeded"
    arts = {a["name"]: a for a in ws.artifacts(url, job_id)}
    assert set(arts) == EXPECTED
    keys = s3.client.list_objects_v2(Bucket="mergetune-jobs", Prefix=f"prod/jobs/{job_id}/")["Contents"]
    assert sorted(k["Key"] for k in keys) == sorted(f"prod/{a['key']}" for a in arts.values())
    assert s3.sha256(arts["prompts.safetensors"]["key"]) == arts["prompts.safetensors"]["sha256"]


def test_job_is_evaluated_on_its_extra_datasets(wsettings, store, rows):
    """eval_dataset_ids: each extra dataset is opened like the main one and listed in report.json's
    extra_evaluations under its registered name (here the built-in "shift" domain: same classes)."""
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    shift = ws.make_dataset(
        url, wsettings, project, options={**ws.TINY_DATASET_OPTIONS, "domain": "shift"}, name="tiny-shift"
    )
    job_id = ws.make_job(url, project, ck, ds, epochs=1, eval_dataset_ids=[shift])

    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded", (
        ws.job_row(url, job_id)["error"]
    )
    report = json.loads(store.get_bytes(f"jobs/{job_id}/report.json"))
    extra = {e["dataset"]: e for e in report["extra_evaluations"]}
    assert set(extra) == {"tiny-shift"}
    row = extra["tiny-shift"]
    assert row["kind"] == "shift" and row["mapping"] == "same" and row["classes"] == 6 and row["images"] > 0
    for key in ("zero_shot", "fine_tuned", "recovered"):
        assert isinstance(row[key], float) and 0.0 <= row[key] <= 100.0, (key, row)
    (entry,) = report["manifest"]["eval_datasets"]
    assert entry["id"] == shift and entry["report_name"] == "tiny-shift"
    assert entry["dataset_sha256"] == entry["registered_split_sha256"]
    html = store.get_bytes(f"jobs/{job_id}/report.html").decode()
    assert "tiny-shift" in html and 'id="extra"' in html


def test_a_bad_extra_dataset_fails_the_job_as_a_user_error_naming_it(wsettings, store, rows):
    from mergetune.common.models import Dataset

    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    with session_scope(url) as s:
        bad = Dataset(
            project_id=project,
            name="gone-folder",
            kind="imagefolder",
            path="does/not/exist",
            num_classes=2,
            classnames=["a", "b"],
            base_classes=["a"],
            novel_classes=["b"],
            split_sizes={"test": 2},
            template="a photo of a {}.",
            sha256_of_split="0" * 64,
        )
        s.add(bad)
        s.flush()
        bad_id = bad.id
    job_id = ws.make_job(url, project, ck, ds, epochs=1, eval_dataset_ids=[ds, bad_id])

    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "failed"
    job = ws.job_row(url, job_id)
    err = job["error"]
    assert err["user_error"] is True and err["param"] == "eval_dataset_ids[1]", err
    assert "gone-folder" in err["message"] and bad_id in err["message"]
    assert ws.artifacts(url, job_id) == [] and [e["type"] for e in ws.events(url, job_id)].count("epoch") == 0
