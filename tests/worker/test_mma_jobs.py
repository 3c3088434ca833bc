"""MMA jobs through the worker pipeline (real Postgres, tiny random CLIP, built-in data): they run end to
end, export MMA's layouts, and a run that dies after an epoch resumes to the same adapters."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
import torch
import worker_support as ws

from common.db import session_scope
from common.models import Checkpoint, Job, new_id, utcnow
from core.config import MMAHyperparameters
from core.mma import MMAAdapters
from core.mma_layout import AdapterLayout
from worker import pipeline

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
