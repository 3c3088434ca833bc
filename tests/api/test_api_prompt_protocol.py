"""Jobs that cannot run are refused at POST /v1/jobs: class-token position, protocol and class counts,
unknown backbones, weights outside the model root or on no live worker."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from api_support import upload

from mergetune.common.db import session_scope
from mergetune.common.models import WorkerHeartbeat
from mergetune.worker import jobdb

TINY = {"model": "tiny-test", "pretrained": "random"}
D = 64  # tiny-test text width


def _coop_bytes(rows: int | None, n_ctx: int = 4, seed: int = 0) -> bytes:
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randn((rows, n_ctx, D) if rows else (n_ctx, D), generator=g)
    buf = io.BytesIO()
    torch.save({"state_dict": {"ctx": ctx}, "epoch": 5, "optimizer": None, "scheduler": None}, buf)
    return buf.getvalue()


def _ckpt(client, auth, rows: int | None = None, **form: str) -> dict[str, Any]:
    r = upload(client, auth, _coop_bytes(rows), **form)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "ready"
    return r.json()


def _job(client, auth, ckpt, dataset, **body: Any):
    return client.post(
        "/v1/jobs",
        headers=auth,
        json={"checkpoint_id": ckpt["id"], "dataset_id": dataset["id"], "backbone": TINY, **body},
    )


def _err(r) -> dict[str, Any]:
    assert r.status_code == 422, r.text
    return r.json()["error"]


# -- class-token position ---------------------------------------------------------------------------
def test_upload_records_the_class_token_position_and_jobs_inherit_or_override_it(client, auth, dataset):
    ck = _ckpt(client, auth, class_token_position="middle")
    assert ck["class_token_position"] == "middle"
    assert client.get(f"/v1/checkpoints/{ck['id']}", headers=auth).json()["class_token_position"] == "middle"
    plain = _ckpt(client, auth)
    assert plain["class_token_position"] is None

    r = _job(client, auth, ck, dataset)
    assert r.status_code == 202, r.text
    assert r.json()["prompt"] == {"class_token_position": "middle"} and r.json()["protocol"] == "base2novel"
    r = _job(client, auth, ck, dataset, prompt={"class_token_position": "front"})
    assert r.status_code == 202 and r.json()["prompt"] == {"class_token_position": "front"}
    r = _job(client, auth, plain, dataset)
    assert r.status_code == 202 and r.json()["prompt"] == {"class_token_position": "end"}
    job = client.get(f"/v1/jobs/{r.json()['id']}", headers=auth).json()
    assert job["prompt"] == {"class_token_position": "end"} and job["protocol"] == "base2novel"


def test_bad_positions_are_refused_naming_the_field(client, auth, dataset):
    r = upload(client, auth, _coop_bytes(None), class_token_position="sideways")
    err = _err(r)
    assert err["param"] == "class_token_position" and "end, middle, front" in err["message"]
    ck = _ckpt(client, auth)
    err = _err(_job(client, auth, ck, dataset, prompt={"class_token_position": "diagonal"}))
    assert err["param"] == "prompt.class_token_position"
    err = _err(_job(client, auth, ck, dataset, protocol="some"))
    assert err["param"] == "protocol"


# -- class counts -----------------------------------------------------------------------------------
def test_csc_class_counts_are_checked_against_the_protocol(client, auth, dataset):
    """The tiny dataset has 6 classes: base2novel trains on the first 3, all on 6."""
    assert dataset["num_classes"] == 6 and len(dataset["base_classes"]) == 3
    base_only, every, other = _ckpt(client, auth, 3), _ckpt(client, auth, 6), _ckpt(client, auth, 5)

    assert _job(client, auth, base_only, dataset).status_code == 202
    r = _job(client, auth, every, dataset, protocol="all")
    assert r.status_code == 202 and r.json()["protocol"] == "all"

    err = _err(_job(client, auth, every, dataset))
    assert err["param"] == "checkpoint_id" and err["code"] == "class_count_mismatch"
    assert err["message"] == (
        "CSC checkpoint has 6 class contexts; dataset 'tiny' has 6 classes and the base split is the first 3; "
        "it covers every class: use protocol 'all'"
    )
    err = _err(_job(client, auth, base_only, dataset, protocol="all"))
    assert err["param"] == "checkpoint_id"
    assert "has 3 class contexts" in err["message"] and "use protocol 'base2novel'" in err["message"]
    for protocol in ("base2novel", "all"):
        err = _err(_job(client, auth, other, dataset, protocol=protocol))
        assert err["param"] == "checkpoint_id" and "has 5 class contexts" in err["message"]
    # a generic context fits any class list, under either protocol
    generic = _ckpt(client, auth)
    assert _job(client, auth, generic, dataset, protocol="all").status_code == 202


# -- backbone and weights ---------------------------------------------------------------------------
def test_unknown_backbone_is_refused_at_creation(client, auth, checkpoint, dataset):
    r = client.post(
        "/v1/jobs",
        headers=auth,
        json={
            "checkpoint_id": checkpoint["id"],
            "dataset_id": dataset["id"],
            "backbone": {"model": "ViT-Z-99"},
        },
    )
    err = _err(r)
    assert err["param"] == "backbone.model" and err["code"] == "unknown_backbone"
    r = client.post(
        "/v1/jobs",
        headers=auth,
        json={
            "checkpoint_id": checkpoint["id"],
            "dataset_id": dataset["id"],
            "backbone": {"model": "ViT-B-61"},
        },
    )
    assert "ViT-B-16" in _err(r)["message"]  # a suggestion


def _weights_job(client, auth, checkpoint, dataset, pretrained: str, model: str = "ViT-B-16"):
    return client.post(
        "/v1/jobs",
        headers=auth,
        json={
            "checkpoint_id": checkpoint["id"],
            "dataset_id": dataset["id"],
            "backbone": {"model": model, "pretrained": pretrained},
        },
    )


def test_weights_outside_the_model_root_get_one_answer(client, auth, checkpoint, dataset, settings, tmp_path):
    secret = tmp_path / "secret.pt"
    secret.write_bytes(b"not yours")
    answers = set()
    for bad in ("/etc/shadow", "/nonexistent/file.pt", str(secret), "../secret.pt", "x/../../y.pt"):
        err = _err(_weights_job(client, auth, checkpoint, dataset, bad))
        assert err["code"] == "path_outside_root" and err["param"] == "backbone.pretrained"
        assert "not yours" not in err["message"]
        answers.add(err["message"].replace(repr(bad), "<p>"))
    assert len(answers) == 1


def test_the_artifact_store_is_never_a_weights_source(make_client, auth, settings, dataset):
    """With the model root above the artifact store, a stored upload still cannot be named as weights."""
    client = make_client(MODEL_ROOT=settings.HOME, EMBEDDED=True)
    ck = _ckpt(client, auth)
    stored = next(p for p in Path(settings.ARTIFACT_URL).rglob("*") if p.is_file())
    rel = stored.relative_to(settings.HOME).as_posix()
    err = _err(_weights_job(client, auth, ck, dataset, rel))
    assert err["code"] == "path_outside_root" and err["param"] == "backbone.pretrained"
    err = _err(_weights_job(client, auth, ck, dataset, str(stored)))
    assert err["code"] == "path_outside_root"


@pytest.fixture
def heartbeat(settings):
    """Write (real) worker heartbeat rows with a weights report; removed afterwards so that other tests'
    jobs are not judged against them."""
    names: list[str] = []

    def _beat(name: str, files: list[str], tags: list[str]) -> None:
        names.append(name)
        jobdb.heartbeat(settings.DATABASE_URL, name, {"pid": 1, "weights": {"files": files, "tags": tags}})

    yield _beat
    with session_scope(settings.DATABASE_URL) as s:
        for name in names:
            row = s.get(WorkerHeartbeat, name)
            if row is not None:
                s.delete(row)


def test_weights_no_live_worker_reports_are_refused(client, auth, checkpoint, dataset, heartbeat):
    heartbeat("gpu0@test", ["ViT-B-16.pt", "openai/ViT-L-14.pt"], ["ViT-B-16/openai"])
    heartbeat("gpu1@test", ["other/ViT-B-16-laion.safetensors"], [])
    assert _weights_job(client, auth, checkpoint, dataset, "ViT-B-16.pt").status_code == 202
    assert (
        _weights_job(client, auth, checkpoint, dataset, "other/ViT-B-16-laion.safetensors").status_code == 202
    )
    assert _weights_job(client, auth, checkpoint, dataset, "openai").status_code == 202
    err = _err(_weights_job(client, auth, checkpoint, dataset, "missing.pt"))
    assert err["param"] == "backbone.pretrained" and err["code"] == "weights_unavailable"
    assert "2 worker(s)" in err["message"]
    err = _err(_weights_job(client, auth, checkpoint, dataset, "laion2b_s34b_b88k"))
    assert err["param"] == "backbone.pretrained" and "ViT-B-16/laion2b_s34b_b88k" in err["message"]
    # random weights need no file
    assert _weights_job(client, auth, checkpoint, dataset, "random:3").status_code == 202


def test_embedded_mode_checks_its_own_disk(make_client, auth, settings, dataset):
    client = make_client(EMBEDDED=True)
    ck = _ckpt(client, auth)
    err = _err(_weights_job(client, auth, ck, dataset, "ViT-B-16.pt", model="tiny-test"))
    assert err["code"] == "weights_unavailable" and err["param"] == "backbone.pretrained"
    assert settings.MODEL_ROOT is not None
    Path(settings.MODEL_ROOT).mkdir(parents=True, exist_ok=True)
    (Path(settings.MODEL_ROOT) / "ViT-B-16.pt").write_bytes(b"weights")
    assert _weights_job(client, auth, ck, dataset, "ViT-B-16.pt", model="tiny-test").status_code == 202
