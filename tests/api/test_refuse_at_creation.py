"""What a worker would refuse is refused when the object is created: a context of another width than
the backbone's text tower (every known model, the tiny ones included), weights no live worker has (the
inventory in a worker's heartbeat survives its job claims), and a CoOp dataset whose image folder is a
symlink out of the data root."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from mergetune.common.db import session_scope
from mergetune.common.models import Job, WorkerHeartbeat, utcnow
from mergetune.worker import jobdb


def _job(
    client: Any, auth: dict[str, str], job_body: dict[str, Any], model: str, pretrained: str = "random"
) -> Any:
    return client.post(
        "/v1/jobs", headers=auth, json={**job_body, "backbone": {"model": model, "pretrained": pretrained}}
    )


@pytest.mark.parametrize(("model", "width"), [("tiny-test", 64), ("tiny-clip", 128), ("ViT-S-16", 384)])
def test_a_context_of_another_width_is_refused_at_creation(client, auth, job_body, model, width):
    r = _job(client, auth, job_body, model)  # the checkpoint's ctx is [4, 512]
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("width_mismatch", "backbone.model")
    assert "512" in err["message"] and f"text width {width}" in err["message"]
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


@pytest.mark.parametrize("model", ["ViT-B-16-quickgelu", "ViT-M-16", "convnext_base"])
def test_a_context_of_the_backbones_width_is_accepted(client, auth, job_body, model):
    r = _job(client, auth, job_body, model)  # 512 wide, like the context
    assert r.status_code == 202, r.text


def test_the_weights_inventory_survives_a_job_claim(client, auth, job_body, settings):
    """While a worker runs a job its heartbeat still says which weights it has: a job naming weights it
    lacks is refused at once, one naming weights it has is accepted."""
    host = f"inventory-{os.getpid()}@test"
    url = settings.DATABASE_URL
    info = {"pid": 1, "device": "cpu", "weights": {"files": ["openai/ViT-B-16.pt"], "tags": []}}
    jobdb.heartbeat(url, host, info, reset_job=True)
    first = _job(client, auth, job_body, "ViT-B-16", "openai/ViT-B-16.pt")
    assert first.status_code == 202, first.text
    # the worker claims that job (what every job start does), with its start-up info
    with session_scope(url) as s:  # only this job is runnable for the claim
        s.query(Job).filter(Job.status == "queued", Job.id != first.json()["id"]).update(
            {"status": "cancelled"}
        )
    claim = jobdb.claim_job(url, first.json()["id"], host, info={"pid": 2, "device": "cpu"})
    assert claim.action == "run" and claim.job_id == first.json()["id"]
    with session_scope(url) as s:
        row = s.get(WorkerHeartbeat, host)
        assert row.current_job_id == first.json()["id"]
        assert row.info["weights"] == info["weights"] and row.info["pid"] == 2

    missing = _job(client, auth, job_body, "ViT-B-16", "openai/ViT-L-14.pt")
    assert missing.status_code == 422, missing.text
    err = missing.json()["error"]
    assert (err["code"], err["param"]) == ("weights_unavailable", "backbone.pretrained")
    assert _job(client, auth, job_body, "ViT-B-16", "openai/ViT-B-16.pt").status_code == 202
    with session_scope(url) as s:  # leave no live worker for the other tests
        row = s.get(WorkerHeartbeat, host)
        row.last_seen = utcnow().replace(year=2000)
        row.current_job_id = None


def _eurosat(root: Path, image_root: Path) -> None:
    """A CoOp EuroSAT folder under ``root`` whose split file names images under ``image_root``/2750."""
    split: dict[str, list[list[Any]]] = {}
    for s, n in (("train", 2), ("val", 1), ("test", 1)):
        split[s] = []
        for label in range(4):
            rel = f"Class{label}/{s}_{n}.jpg"
            (image_root / "2750" / f"Class{label}").mkdir(parents=True, exist_ok=True)
            (image_root / "2750" / rel).write_bytes(b"\xff\xd8\xff")
            split[s].append([rel, label, f"class{label}"])
    (root / "eurosat").mkdir(parents=True, exist_ok=True)
    (root / "eurosat" / "split_zhou_EuroSAT.json").write_text(json.dumps(split))


def test_a_coop_image_folder_symlinked_out_of_the_data_root_is_refused(client, auth, settings, tmp_path):
    outside = tmp_path / "elsewhere"
    _eurosat(settings.DATA_ROOT, outside)
    os.symlink(outside / "2750", settings.DATA_ROOT / "eurosat" / "2750")
    r = client.post("/v1/datasets", headers=auth, json={"name": "eu", "kind": "coop", "path": "eurosat"})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("link_outside_root", "path")
    assert "'eurosat/2750/Class0'" in err["message"]
    assert str(outside) not in err["message"]  # the server's paths are not told
    assert client.get("/v1/datasets", headers=auth).json()["data"] == []


def test_a_coop_image_file_symlinked_out_is_refused_and_one_inside_is_fine(client, auth, settings, tmp_path):
    _eurosat(settings.DATA_ROOT, settings.DATA_ROOT / "eurosat")
    body = {"name": "eu", "kind": "coop", "path": "eurosat"}
    assert client.post("/v1/datasets", headers=auth, json=body).status_code == 201
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"\xff\xd8\xff")
    image = settings.DATA_ROOT / "eurosat" / "2750" / "Class1" / "test_1.jpg"
    image.unlink()
    os.symlink(secret, image)
    r = client.post("/v1/datasets", headers=auth, json={**body, "name": "eu2"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "link_outside_root"
    assert "Class1/test_1.jpg" in r.json()["error"]["message"]
