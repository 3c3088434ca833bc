"""Weights uploaded to the service, on the worker: a job naming ``weights:<id>`` (or ``sha256:<hex>``) runs
on a worker whose model root is empty, with an artifact store that is a bucket (moto's server mode, no
shared disk): the file comes from the store into the input cache under its sha256, verified, and is the
backbone the job ran on. Bytes that do not match the recorded sha256 fail the job on
``backbone.pretrained``."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json

import pytest
import worker_support as ws
from conftest import REDIS_DB

BUCKET = "worker-weights"


@pytest.fixture
def s3settings(tmp_path, worker_pg_url, s3_endpoint, clean_queue):
    import s3_support as s3

    with contextlib.suppress(Exception):
        s3.client(s3_endpoint).create_bucket(Bucket=BUCKET)
    base = ws.make_settings(tmp_path / "home", worker_pg_url, f"{ws.REDIS_URL}/{REDIS_DB}")
    return base.model_copy(
        update={
            "ARTIFACT_URL": f"s3://{BUCKET}/{tmp_path.name}",
            "S3_ENDPOINT_URL": s3_endpoint,
            **s3.CREDENTIALS,
        }
    )


def _weights_bytes(seed: int) -> bytes:
    """tiny-test's random weights as a plain state dict (what ``torch.save(model.state_dict())`` writes)."""
    import torch

    from mergetune.core.config import BackboneSpec
    from mergetune.core.model.backbone import load_backbone

    model = load_backbone(BackboneSpec(model="tiny-test", pretrained=f"random:{seed}")).model
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getvalue()


def _upload(url: str, store, project: str, data: bytes) -> tuple[str, str]:
    """What POST /v1/weights leaves behind: the file under its sha256 in the store, and the record."""
    from mergetune.common.db import session_scope
    from mergetune.common.models import UploadedWeights, new_id
    from mergetune.common.uploaded_weights import storage_key

    sha = hashlib.sha256(data).hexdigest()
    key = storage_key(project, sha, ".pt")
    store.put_bytes(key, data)
    wid = new_id("wgt")
    with session_scope(url) as s:
        s.add(
            UploadedWeights(
                id=wid,
                project_id=project,
                name="tiny",
                filename="tiny.pt",
                bytes=len(data),
                sha256=sha,
                format="state_dict",
                storage_key=key,
                summary={"format": "state_dict", "layout": "clip", "text_width": 64},
            )
        )
    return wid, sha


def _job(url: str, project: str, ck: str, ds: str, pretrained: str) -> str:
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job

    job_id = ws.make_job(url, project, ck, ds, epochs=1, shots=2, feature_mode="none")
    with session_scope(url) as s:
        s.get(Job, job_id).backbone = {"model": "tiny-test", "pretrained": pretrained}
    return job_id


def test_a_job_runs_on_uploaded_weights_with_an_empty_model_root(s3settings, ctx_ft):
    from mergetune.common.storage import get_store
    from mergetune.core.checkpoints.weights import inventory
    from mergetune.worker.backbones import clear
    from mergetune.worker.pipeline import run_job

    url, settings = s3settings.DATABASE_URL, s3settings
    assert inventory(settings.MODEL_ROOT) == []  # nothing on this worker's disk
    store = get_store(settings)
    project = ws.make_project(url)
    ck = ws.make_checkpoint(url, store, project, ctx_ft)
    ds = ws.make_dataset(url, settings, project)
    data = _weights_bytes(7)
    wid, sha = _upload(url, store, project, data)

    for pretrained in (f"weights:{wid}", f"sha256:{sha}"):
        clear()
        job_id = _job(url, project, ck, ds, pretrained)
        assert run_job(job_id, settings=settings, hostname="w@test") == "succeeded", ws.job_row(url, job_id)
        manifest = json.loads(store.get_bytes(f"jobs/{job_id}/manifest.json"))
        assert manifest["backbone"]["pretrained"] == pretrained
        assert manifest["backbone"]["weights_sha256"] == sha  # the job ran on the uploaded file
    cached = settings.INPUT_CACHE_DIR / "objects" / f"sha256-{sha}.pt"
    assert cached.read_bytes() == data

    # bytes in the store that are not the recorded ones never become a backbone
    other = _weights_bytes(8)
    bad_id, bad_sha = _upload(url, store, project, other)
    from mergetune.common.uploaded_weights import storage_key

    store.put_bytes(storage_key(project, bad_sha, ".pt"), data)  # replaced behind the record's back
    clear()
    job_id = _job(url, project, ck, ds, f"weights:{bad_id}")
    assert run_job(job_id, settings=settings, hostname="w@test") == "failed"
    err = ws.job_row(url, job_id)["error"]
    assert err["param"] == "backbone.pretrained" and err["code"] == "weights_invalid", err
    assert not (settings.INPUT_CACHE_DIR / "objects" / f"sha256-{bad_sha}.pt").exists()
