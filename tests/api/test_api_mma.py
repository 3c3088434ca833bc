"""MMA checkpoints through REST: upload detects method "mma"; job creation checks the adapters against
the backbone and resolves MMA's hyperparameter defaults."""

from __future__ import annotations

from pathlib import Path

from api_support import upload

from mergetune.core.checkpoints.mma_layout import AdapterLayout
from mergetune.core.config import MMAHyperparameters
from tests.mma_files import mma_state_dict, write_mma_dassl


def _mma_bytes(tmp_path: Path) -> bytes:
    return write_mma_dassl(tmp_path, mma_state_dict(AdapterLayout(512, 768), n_cls=3)).read_bytes()


def test_mma_upload_and_job(client, auth, dataset, tmp_path):
    r = upload(client, auth, _mma_bytes(tmp_path), filename="model.pth.tar-5")
    assert r.status_code == 201, r.text
    ck = r.json()
    assert ck["status"] == "ready" and ck["method"] == "mma"
    assert ck["ctx_dim"] == 512 and ck["n_cls"] == 3
    body = {"checkpoint_id": ck["id"], "dataset_id": dataset["id"]}
    r = client.post("/v1/jobs", headers=auth, json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["job_type"] == "mma"
    assert job["hyperparameters"] == MMAHyperparameters().model_dump(mode="json")
    hp = job["hyperparameters"]
    assert (hp["w_lmc"], hp["num_samples"], hp["epochs"], hp["batch_size"], hp["lr"], hp["warmup_epochs"]) == (
        10.0, 5, 5, 16, 0.0015, 0,
    )  # fmt: skip
    # ViT-B-16 adapters do not fit ViT-L-14 (text 768 wide); ResNets have no blocks to adapt
    for model, words in (("ViT-L-14", "text width is 768"), ("RN50", "ResNet")):
        r = client.post(
            "/v1/jobs", headers=auth, json={**body, "backbone": {"model": model, "pretrained": "openai"}}
        )
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert (
            err["code"] == "width_mismatch" and err["param"] == "backbone.model" and words in err["message"]
        )
    r = client.post("/v1/jobs", headers=auth, json={**body, "hyperparameters": {"feature_mode": "bank"}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "hyperparameters.feature_mode"
    assert hp["gradient_scale"] is False  # the reference's update
    r = client.post("/v1/jobs", headers=auth, json={**body, "hyperparameters": {"gradient_scale": "maybe"}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "hyperparameters.gradient_scale"
    r = client.post("/v1/jobs", headers=auth, json={**body, "prompt": {"class_token_position": "middle"}})
    assert r.status_code == 422 and r.json()["error"]["param"] == "prompt.class_token_position"


def test_mma_upload_with_forced_method_refuses_a_coop_file(client, auth, ctx_and_bytes):
    r = upload(client, auth, ctx_and_bytes[1], method="mma")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "rejected"
    assert body["error"]["code"] == "bad_rank" and body["error"]["param"] == "file"
    assert "no MMA adapter keys" in body["error"]["message"]
