"""MMA jobs through the worker pipeline (real Postgres, tiny random CLIP, built-in data): they run end to
end, export MMA's layouts, and a run that dies after an epoch (in process, or a Celery worker process
SIGKILLed mid-job) resumes to the same adapters."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import torch
import worker_support as ws

from mergetune.common.db import session_scope
from mergetune.common.models import Checkpoint, Job, new_id, utcnow
from mergetune.core.checkpoints.mma_layout import AdapterLayout
from mergetune.core.config import MMAHyperparameters
from mergetune.core.model.adapters import MMAAdapters
from mergetune.worker import pipeline

HOST = "w-mma@local"
# tiny-test: text 64 wide with 2 blocks, image 64 wide with 1 block -> adapters on block 1
LAYOUT = AdapterLayout(text_width=64, visual_width=64, start=1, end=1, dim=32)


def _mma_checkpoint(url, store, project) -> str:
    from safetensors.torch import save as st_save

    tensors = MMAAdapters(LAYOUT, text_layers=2, visual_layers=1, seed=3).tensors()
    data = st_save(tensors)
    ck_id = new_id("ckpt")
    key = f"checkpoints/{ck_id}/tensors.safetensors"
    store.put_bytes(key, data)
    with session_scope(url) as s:
        s.add(
            Checkpoint(
                id=ck_id, project_id=project, name="mma", filename="model.pth.tar-5", bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(), format="dassl", method="mma", status="ready",
                n_ctx=None, ctx_dim=64, csc=False, n_cls=3, original_key=key, tensors_key=key,
                info={"epoch": 5, "mma_layout": LAYOUT.to_json()},
            )
        )  # fmt: skip
    return ck_id


def _mma_job(url, project, ck, ds, **hp) -> str:
    resolved = MMAHyperparameters(**{"epochs": 3, "batch_size": 4, "shots": 4, **hp}).model_dump(mode="json")
    with session_scope(url) as s:
        job = Job(
            project_id=project, checkpoint_id=ck, dataset_id=ds, job_type="mma", backbone=dict(ws.TINY_BACKBONE),
            hyperparameters=resolved, metadata_={}, status="queued", queued_at=utcnow(),
        )  # fmt: skip
        s.add(job)
        s.flush()
        return job.id


class _Crash(BaseException):
    """Stands in for SIGKILL: not an Exception, so the pipeline records nothing and re-raises."""


def _adapters_of(store, url, job_id):
    key = next(a["key"] for a in ws.artifacts(url, job_id) if a["name"] == "adapters.safetensors")
    return ws.load_safetensors_bytes(store.get_bytes(key))


@pytest.mark.slow
def test_mma_job_runs_end_to_end_and_resumes_after_a_crash(wsettings, store, monkeypatch):
    url = wsettings.DATABASE_URL
    project = ws.make_project(url)
    ds = ws.make_dataset(url, wsettings, project)
    ck = _mma_checkpoint(url, store, project)

    reference = _mma_job(url, project, ck, ds)
    assert pipeline.run_job(reference, settings=wsettings, hostname=HOST, store=store) == "succeeded"
    names = {a["name"] for a in ws.artifacts(url, reference)}
    assert {
        "adapters.safetensors",
        "adapters-mma.tar",
        "report.json",
        "manifest.json",
        "report.html",
    } <= names
    report = json.loads(
        store.get_bytes(next(a["key"] for a in ws.artifacts(url, reference) if a["name"] == "report.json"))
    )
    assert set(report["curves"]) == {"adapter", "feature"}
    assert all(set(v) == {"zs_ft", "zs_rec", "ft_rec"} for v in report["curves"].values())
    assert report["manifest"]["config"]["method"] == "mma"
    assert report["config"]["layout"] == LAYOUT.to_json()
    assert report["config"]["hyperparameters"]["w_lmc"] == 10.0
    tar_key = next(a["key"] for a in ws.artifacts(url, reference) if a["name"] == "adapters-mma.tar")
    with tarfile.open(fileobj=io.BytesIO(store.get_bytes(tar_key))) as tar:
        assert "adapter_learner/model.pth.tar-3" in tar.getnames()

    job_id = _mma_job(url, project, ck, ds)
    real_epoch_end = pipeline.JobCallbacks.on_epoch_end

    def crash_after_one(self, state):
        real_epoch_end(self, state)
        if state["epoch"] == 1:
            raise _Crash()

    monkeypatch.setattr(pipeline.JobCallbacks, "on_epoch_end", crash_after_one)
    with pytest.raises(_Crash):
        pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store)
    monkeypatch.setattr(pipeline.JobCallbacks, "on_epoch_end", real_epoch_end)
    assert ws.job_row(url, job_id)["status"] == "running" and store.exists(pipeline.state_key(job_id))
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded"
    assert [e["data"]["epoch"] for e in ws.events(url, job_id) if e["type"] == "resume"] == [1]
    assert [e["data"]["epoch"] for e in ws.events(url, job_id) if e["type"] == "epoch"] == [1, 2, 3]
    a, b = _adapters_of(store, url, job_id), _adapters_of(store, url, reference)
    assert set(a) == set(LAYOUT.shapes())
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical to the uninterrupted run


@pytest.mark.slow
def test_a_sigkilled_celery_worker_mma_job_resumes_on_a_new_worker_to_the_same_adapters(
    tmp_path, wsettings, store
):
    """A real fault: the worker process running an MMA job is SIGKILLed mid-training; a new worker takes
    the unacknowledged message, resumes from the last epoch state and ends with the adapters of the same
    job run without interruption by the same kind of worker (bit for bit), every epoch reported once."""
    from mergetune.common.queue import enqueue_job

    url = wsettings.DATABASE_URL
    project = ws.make_project(url)
    ds = ws.make_dataset(url, wsettings, project)
    ck = _mma_checkpoint(url, store, project)
    hp = {"epochs": 25, "batch_size": 2}
    env = ws.settings_env(wsettings)

    def done(job_id: str) -> bool:
        return ws.job_row(url, job_id)["status"] in ("succeeded", "failed")

    w1 = ws.WorkerProcess(env, tmp_path / "w1.log", nodename="gpu0@test").start()
    try:
        reference = _mma_job(url, project, ck, ds, **hp)
        enqueue_job(wsettings, reference)
        ws.wait_for(lambda: done(reference), 180, 0.2, "the uninterrupted job")
        assert ws.job_row(url, reference)["status"] == "succeeded", w1.log()[-3000:]
        job_id = _mma_job(url, project, ck, ds, **hp)
        enqueue_job(wsettings, job_id)
        ws.wait_for(
            lambda: (ws.job_row(url, job_id)["progress"] or {}).get("epoch", 0) >= 3, 120, 0.02, "epoch 3"
        )
    except BaseException:
        w1.stop()
        raise
    w1.kill()
    killed_at = ws.job_row(url, job_id)["progress"]["epoch"]
    assert ws.job_row(url, job_id)["status"] == "running" and killed_at < hp["epochs"]

    w2 = ws.WorkerProcess(env, tmp_path / "w2.log", nodename="gpu0@test").start()  # the node restarts
    try:
        ws.wait_for(lambda: done(job_id), 180, 0.2, "the resumed job")
        job = ws.job_row(url, job_id)
        assert job["status"] == "succeeded", (job["error"], w2.log()[-3000:])
        assert job["attempts"] == 2
        evs = ws.events(url, job_id)
        resumed = [e["data"]["epoch"] for e in evs if e["type"] == "resume"]
        assert len(resumed) == 1 and 1 <= resumed[0] <= killed_at
        assert [e["data"]["epoch"] for e in evs if e["type"] == "epoch"] == list(range(1, hp["epochs"] + 1))
        arts = ws.artifacts(url, job_id)
        assert len(arts) == len({a["name"] for a in arts})  # one set of artifacts
        a, b = _adapters_of(store, url, job_id), _adapters_of(store, url, reference)
        assert set(a) == set(LAYOUT.shapes())
        assert all(torch.equal(a[k], b[k]) for k in a)
    finally:
        w2.stop()
