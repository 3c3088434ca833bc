from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from api_support import upload
from safetensors.numpy import save as save_safetensors

from mergetune.core.config import HeadHyperparameters


def test_api_process_never_imports_torch():
    code = (
        "import sys\n"
        "import mergetune.api.main, mergetune.api.services.checkpoints, mergetune.api.services.datasets, mergetune.api.services.jobs, mergetune.cli, mergetune.ops\n"
        "mergetune.api.main.create_app()\n"
        "assert 'torch' not in sys.modules and 'open_clip' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_linear_head_job_uses_head_hyperparameters(client, auth, dataset):
    data = save_safetensors({"weight": np.ones((3, 512), np.float32), "bias": np.zeros(3, np.float32)})
    r = upload(client, auth, data, filename="head.safetensors", method="linear_head")
    assert r.status_code == 201, r.text
    ckpt = r.json()
    assert (ckpt["status"], ckpt["method"], ckpt["format"], ckpt["n_cls"]) == (
        "ready",
        "linear_head",
        "safetensors",
        3,
    )
    r = client.post("/v1/jobs", headers=auth, json={"checkpoint_id": ckpt["id"], "dataset_id": dataset["id"]})
    assert r.status_code == 202, r.text
    assert r.json()["job_type"] == "linear_head"
    assert r.json()["hyperparameters"] == HeadHyperparameters().model_dump(mode="json")
    r = client.post(
        "/v1/jobs",
        headers=auth,
        json={"checkpoint_id": ckpt["id"], "dataset_id": dataset["id"], "hyperparameters": {"w_zs": 1}},
    )
    assert r.status_code == 422 and r.json()["error"]["param"] == "hyperparameters.w_zs"


def test_rejected_checkpoint_cannot_start_a_job(client, auth, dataset):
    bad = upload(client, auth, b"\x80\x02garbage", filename="x.pth").json()
    assert bad["status"] == "rejected"
    r = client.post("/v1/jobs", headers=auth, json={"checkpoint_id": bad["id"], "dataset_id": dataset["id"]})
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "checkpoint_not_ready"
    assert r.json()["error"]["param"] == "checkpoint_id"


@pytest.mark.parametrize(
    "method,path,kwargs",
    [
        ("post", "/v1/jobs", {"json": {"checkpoint_id": 5, "dataset_id": None}}),
        ("post", "/v1/jobs", {"json": {"checkpoint_id": "c", "dataset_id": "d", "hyperparameters": "fast"}}),
        ("post", "/v1/jobs", {"json": ["not", "an", "object"]}),
        ("post", "/v1/jobs", {"content": b"", "headers": {"Content-Type": "application/json"}}),
        (
            "post",
            "/v1/datasets",
            {"json": {"name": "x", "kind": "builtin", "options": {"num_classes": "many"}}},
        ),
        ("post", "/v1/datasets", {"json": {"name": "x", "kind": "builtin", "options": {"num_classes": -3}}}),
        ("post", "/v1/datasets", {"json": {"name": "x", "kind": "imagefolder", "path": "a\x00b"}}),
        ("post", "/v1/datasets", {"json": {"name": "x", "kind": "coop", "path": "p", "coop_name": "nope"}}),
        ("post", "/v1/datasets", {"json": {"name": "", "kind": "builtin"}}),
        ("get", "/v1/jobs/job_x/events?after=abc", {}),
        ("get", "/v1/jobs?after=" + "z" * 100, {}),
        ("get", "/v1/checkpoints?limit=1000", {}),
        (
            "post",
            "/v1/checkpoints",
            {"content": b"--b\r\nbroken", "headers": {"Content-Type": "multipart/form-data; boundary=b"}},
        ),
        ("post", "/v1/checkpoints", {"content": b"x", "headers": {"Content-Type": "multipart/form-data"}}),
        ("post", "/v1/checkpoints", {"files": {"file": ("", io.BytesIO(b""))}}),
        ("post", "/v1/checkpoints", {"files": {"file": ("a.pt", b"x")}, "data": {"name": "n" * 5000}}),
    ],
)
def test_bad_input_gets_a_4xx_error_body(client, auth, method, path, kwargs):
    headers = {**auth, **kwargs.pop("headers", {})}
    r = (
        getattr(client, method)(path, headers=headers, **kwargs)
        if method == "get"
        else client.request(method.upper(), path, headers=headers, **kwargs)
    )
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    err = r.json()["error"]
    assert set(err) == {"code", "message", "param"}
    assert err["code"] and err["message"]
