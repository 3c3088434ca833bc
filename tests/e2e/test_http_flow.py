"""The whole service through real HTTP: uvicorn (API) + a Celery worker process + Postgres + Redis.

upload -> dataset -> job (Idempotency-Key) -> poll -> events -> artifacts download; cancel of a running job."""

from __future__ import annotations

import hashlib
import json
import time

import httpx
import pytest
import worker_support as ws

pytestmark = pytest.mark.slow

HP = {"epochs": 2, "batch_size": 4, "shots": 4}
EXPECTED = {
    "prompts.safetensors",
    "prompts.pth.tar",
    "prompts-coop.tar",
    "report.json",
    "manifest.json",
    "report.html",
    "curves.png",
}


@pytest.fixture(scope="module")
def client(api, token, celery_worker):
    with httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def ckpt_and_dataset(client, checkpoint_file):
    with open(checkpoint_file, "rb") as f:
        r = client.post("/v1/checkpoints", files={"file": ("prompts.pth.tar", f)}, data={"name": "tiny"})
    assert r.status_code == 201, r.text
    ck = r.json()
    assert ck["status"] == "ready" and ck["format"] == "dassl" and ck["method"] == "coop"
    assert ck["n_ctx"] == 4 and ck["ctx_dim"] == 64 and ck["csc"] is False
    assert ck["sha256"] == hashlib.sha256(checkpoint_file.read_bytes()).hexdigest()

    r = client.post(
        "/v1/datasets", json={"name": "tiny-builtin", "kind": "builtin", "options": ws.TINY_DATASET_OPTIONS}
    )
    assert r.status_code == 201, r.text
    ds = r.json()
    assert ds["num_classes"] == 6 and len(ds["base_classes"]) == 3 and len(ds["novel_classes"]) == 3
    return ck, ds


def _wait(client, job_id, statuses, timeout):
    def done():
        job = client.get(f"/v1/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    return ws.wait_for(done, timeout, 0.2, f"job {job_id} to reach {statuses}")


def test_upload_dataset_job_poll_download(client, ckpt_and_dataset, tmp_path):
    ck, ds = ckpt_and_dataset
    body = {
        "checkpoint_id": ck["id"],
        "dataset_id": ds["id"],
        "backbone": ws.TINY_BACKBONE,
        "hyperparameters": HP,
        "metadata": {"run": "e2e"},
    }
    r = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "e2e-job-1"})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["hyperparameters"]["epochs"] == 2 and job["hyperparameters"]["w_zs"] == 10.0  # resolved
    again = client.post("/v1/jobs", json=body, headers={"Idempotency-Key": "e2e-job-1"})
    assert again.json()["id"] == job["id"]

    seen = set()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        cur = client.get(f"/v1/jobs/{job['id']}").json()
        seen.add(cur["status"])
        if cur["status"] in ("succeeded", "failed", "cancelled"):
            break
        time.sleep(0.1)
    assert cur["status"] == "succeeded", cur.get("error")
    assert cur["progress"]["epoch"] == 2 and cur["progress"]["epochs"] == 2
    assert set(cur["metrics"]) == {"zero_shot", "fine_tuned", "recovered"}
    assert cur["started_at"] and cur["finished_at"] and cur["error"] is None

    events = client.get(f"/v1/jobs/{job['id']}/events").json()
    items = events["data"] if isinstance(events, dict) else events
    statuses = [e["data"]["status"] for e in items if e["type"] == "status" and e.get("data")]
    assert statuses[-3:] == ["running", "evaluating", "succeeded"]
    assert sum(e["type"] == "epoch" for e in items) == 2

    listing = client.get(f"/v1/jobs/{job['id']}/artifacts").json()
    arts = listing["data"] if isinstance(listing, dict) else listing
    assert {a["name"] for a in arts} == EXPECTED
    for a in arts:
        r = client.get(f"/v1/jobs/{job['id']}/artifacts/{a['name']}")
        assert r.status_code == 200
        assert len(r.content) == a["bytes"] and hashlib.sha256(r.content).hexdigest() == a["sha256"]
        (tmp_path / a["name"]).write_bytes(r.content)
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["metrics"] == cur["metrics"] and report["manifest"]["seed"] == 1
    assert report["manifest"]["checkpoint"]["sha256"] == ck["sha256"]
    assert report["manifest"]["dataset"]["registered_split_sha256"] == ds["sha256_of_split"]
    from mergetune.core.checkpoints.ingest import ingest_checkpoint

    rec = ingest_checkpoint(tmp_path / "prompts.safetensors")
    assert rec.ctx.shape == (4, 64) and rec.method.value == "coop"
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<html" in (tmp_path / "report.html").read_bytes()[:500].lower()


def test_cancel_a_running_job(client, ckpt_and_dataset):
    ck, ds = ckpt_and_dataset
    body = {
        "checkpoint_id": ck["id"],
        "dataset_id": ds["id"],
        "backbone": ws.TINY_BACKBONE,
        "hyperparameters": {**HP, "epochs": 300, "batch_size": 1},
    }
    job = client.post("/v1/jobs", json=body).json()
    ws.wait_for(
        lambda: (client.get(f"/v1/jobs/{job['id']}").json().get("progress") or {}).get("epoch", 0) >= 2,
        60,
        0.1,
        "the job to train",
    )
    r = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert r.status_code in (200, 202), r.text
    assert r.json()["status"] == "cancelling"
    done = _wait(client, job["id"], ("cancelled", "succeeded", "failed"), 30)
    assert done["status"] == "cancelled" and done["progress"]["epoch"] < 300
    listing = client.get(f"/v1/jobs/{job['id']}/artifacts")
    arts = listing.json() if listing.status_code == 200 else []
    arts = arts["data"] if isinstance(arts, dict) else arts
    assert arts == []
    assert client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409
