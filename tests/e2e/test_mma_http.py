"""An MMA job through real HTTP (uvicorn + a Celery worker process + Postgres + Redis) with the tiny
model: MMA's Dassl file uploaded, detected as "mma", recovered, its exports downloaded and read back."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path

import httpx
import pytest
import torch
import worker_support as ws

from mergetune.core.checkpoints.ingest import ingest_checkpoint
from mergetune.core.checkpoints.mma_layout import AdapterLayout
from tests.mma_files import mma_state_dict, write_mma_dassl

pytestmark = pytest.mark.slow

LAYOUT = AdapterLayout(text_width=64, visual_width=64, start=1, end=1)  # tiny-test: 2 text / 1 image blocks


@pytest.fixture(scope="module")
def client(api, token, celery_worker):
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        yield c


def test_mma_job_over_http(client, tmp_path: Path) -> None:
    path = write_mma_dassl(tmp_path / "mma", mma_state_dict(LAYOUT, n_cls=3, seed=1))
    r = client.post("/v1/checkpoints", files={"file": (path.name, path.read_bytes())}, data={"name": "mma"})
    assert r.status_code == 201, r.text
    ck = r.json()
    assert ck["status"] == "ready" and ck["method"] == "mma" and ck["format"] == "dassl"
    r = client.post(
        "/v1/datasets", json={"name": "tiny-mma", "kind": "builtin", "options": ws.TINY_DATASET_OPTIONS}
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    body = {
        "checkpoint_id": ck["id"],
        "dataset_id": ds["id"],
        "backbone": ws.TINY_BACKBONE,
        "hyperparameters": {"epochs": 2, "batch_size": 4, "shots": 4},
    }
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["job_type"] == "mma" and job["hyperparameters"]["w_lmc"] == 10.0

    def done():
        cur = client.get(f"/v1/jobs/{job['id']}").json()
        return cur if cur["status"] in ("succeeded", "failed", "cancelled") else None

    cur = ws.wait_for(done, 180, 0.2, "the MMA job to finish")
    assert cur["status"] == "succeeded", cur.get("error")
    assert set(cur["metrics"]) == {"zero_shot", "fine_tuned", "recovered"}
    arts = client.get(f"/v1/jobs/{job['id']}/artifacts").json()
    arts = arts["data"] if isinstance(arts, dict) else arts
    names = {a["name"] for a in arts}
    assert {"adapters.safetensors", "adapters-mma.tar", "report.json", "manifest.json"} <= names
    for a in arts:
        data = client.get(f"/v1/jobs/{job['id']}/artifacts/{a['name']}").content
        assert hashlib.sha256(data).hexdigest() == a["sha256"]
        (tmp_path / a["name"]).write_bytes(data)
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["curves"]) == {"adapter", "feature"}
    rec = ingest_checkpoint(tmp_path / "adapters.safetensors")
    assert rec.method.value == "mma" and rec.mma_layout == LAYOUT.to_json()
    with tarfile.open(tmp_path / "adapters-mma.tar") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    dassl = torch.load(tmp_path / "unpacked/adapter_learner/model.pth.tar-2", weights_only=True)
    assert set(dassl["state_dict"]) == set(LAYOUT.shapes()) | {"token_embedding", "tokenized_prompts"}
    assert torch.equal(
        dassl["state_dict"]["text_adapter.1.up.weight"],
        torch.from_numpy(rec.adapters["text_adapter.1.up.weight"]),
    )
