"""A corpus of checkpoints in CoOp's own format goes REST upload -> job -> download -> reload.

The files are made by a from-scratch writer of Dassl's layout (``dassl/utils/torchtools.py``
``save_checkpoint`` called by ``dassl/engine/trainer.py`` ``save_model``): ``torch.save`` of
``{"state_dict", "epoch", "optimizer", "scheduler", "val_result"}`` at ``<out>/prompt_learner/model.pth.tar-<N>``
plus the ``checkpoint`` pointer file. ``state_dict`` is CoOp's PromptLearner state (``ctx``, ``token_prefix``,
``token_suffix``), ``optimizer`` the SGD state dict, ``scheduler`` the warm-up scheduler's state dict, whose
``successor`` is a pickled ``CosineAnnealingLR`` object holding the ``SGD`` object (older Dassl pickled the
warm-up scheduler object itself: one variant does, from a module named like Dassl's that is gone again when
the file is read). The service must treat every such object as inert.

Each variant runs a real job (tiny model, 1 epoch, lr 1e-9 so that the recovered context must equal the
uploaded one to float precision), is downloaded through the API and re-read three ways: re-uploaded, as the
safetensors file, and unpacked where CoOp's ``load_model`` looks (``prompt_learner/model.pth.tar-<epochs>``,
token buffers deleted as CoOp does). Position, protocol, shapes and values must survive every step.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import worker_support as ws

D = 64  # tiny-test text width
EPOCHS = 1


@dataclass(frozen=True)
class Variant:
    name: str
    rows: int | None  # CSC rows (None: generic)
    position: str | None  # the upload form field (None: not given -> end)
    protocol: str = "base2novel"
    n_ctx: int = 4
    fp16: bool = False
    old_dassl: bool = False  # the warm-up scheduler object itself pickled

    @property
    def expected_position(self) -> str:
        return self.position or "end"


VARIANTS = [
    Variant("generic-end", None, None),
    Variant("generic-middle", None, "middle", old_dassl=True),
    Variant("csc-middle-base", 3, "middle"),
    Variant("csc-front-all", 6, "front", protocol="all"),
    Variant("generic-nctx16", None, "end", n_ctx=16),
    Variant("generic-fp16-front", None, "front", fp16=True),
]


def _dassl_scheduler_module() -> tuple[dict[str, types.ModuleType], type]:
    """A stand-in for dassl.optim.lr_scheduler, present only while the file is written."""
    names = ["dassl", "dassl.optim", "dassl.optim.lr_scheduler"]
    mods = {n: types.ModuleType(n) for n in names}

    class ConstantWarmupScheduler:
        def __init__(self, optimizer: Any, successor: Any, warmup_epoch: int, cons_lr: float) -> None:
            self.optimizer, self.successor = optimizer, successor
            self.warmup_epoch, self.cons_lr, self.last_epoch = warmup_epoch, cons_lr, 0

        def state_dict(self) -> dict[str, Any]:  # torch's _LRScheduler.state_dict: __dict__ minus optimizer
            return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    ConstantWarmupScheduler.__module__ = "dassl.optim.lr_scheduler"
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    mods["dassl.optim.lr_scheduler"].ConstantWarmupScheduler = ConstantWarmupScheduler  # type: ignore[attr-defined]
    return mods, ConstantWarmupScheduler


def write_coop_checkpoint(out_dir: Path, v: Variant, n_cls: int, seed: int = 0) -> tuple[Path, torch.Tensor]:
    """CoOp's save_model -> Dassl's save_checkpoint, written from scratch. Returns (file, ctx as saved)."""
    g = torch.Generator().manual_seed(seed)
    dtype = torch.float16 if v.fp16 else torch.float32
    shape = (v.rows, v.n_ctx, D) if v.rows else (v.n_ctx, D)
    ctx = (torch.randn(shape, generator=g) * 0.02).to(dtype)
    # PromptLearner.state_dict(): the learned ctx and the two frozen token buffers of its class list
    state_dict = {
        "ctx": ctx,
        "token_prefix": torch.randn(n_cls, 1, D, generator=g).to(dtype),
        "token_suffix": torch.randn(n_cls, 77 - 1 - v.n_ctx, D, generator=g).to(dtype),
    }
    param = torch.nn.Parameter(ctx.float().clone())
    optim = torch.optim.SGD([param], lr=0.002, momentum=0.9, weight_decay=5e-4)
    param.grad = torch.ones_like(param)
    optim.step()
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optim, T_max=50)
    mods, warmup_cls = _dassl_scheduler_module()
    sys.modules.update(mods)
    try:
        warmup = warmup_cls(optim, cosine, warmup_epoch=1, cons_lr=1e-5)
        epoch = 50  # save_model(epoch=49) stores epoch + 1
        state = {
            "state_dict": state_dict,
            "epoch": epoch,
            "optimizer": optim.state_dict(),
            "scheduler": warmup if v.old_dassl else warmup.state_dict(),
            "val_result": None if v.old_dassl else 71.3,
        }
        save_dir = out_dir / v.name / "prompt_learner"
        save_dir.mkdir(parents=True)
        fpath = save_dir / f"model.pth.tar-{epoch}"
        torch.save(state, fpath)
        (save_dir / "checkpoint").write_text(f"{fpath.name}\n")
    finally:
        for n in mods:
            sys.modules.pop(n, None)
    return fpath, ctx


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, tuple[Path, torch.Tensor]]:
    out = tmp_path_factory.mktemp("coop-output")
    return {v.name: write_coop_checkpoint(out, v, n_cls=v.rows or 3, seed=i) for i, v in enumerate(VARIANTS)}


@pytest.fixture
def api(wsettings):
    from fastapi.testclient import TestClient

    from mergetune.api.main import create_app
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    with session_scope(wsettings.DATABASE_URL) as s:
        _, secret = repo.create_token(s, repo.get_or_create_project(s, f"corpus-{id(wsettings)}"))
    with TestClient(create_app(wsettings)) as client:
        client.headers["Authorization"] = f"Bearer {secret}"
        yield client


def _download(api, job_id: str, name: str) -> bytes:
    r = api.get(f"/v1/jobs/{job_id}/artifacts/{name}")
    assert r.status_code == 200, (name, r.text)
    return r.content


def _stored_ctx(wsettings, ckpt_id: str) -> torch.Tensor:
    from safetensors.torch import load_file

    from mergetune.common.db import session_scope
    from mergetune.common.models import Checkpoint

    with session_scope(wsettings.DATABASE_URL) as s:
        key = s.get(Checkpoint, ckpt_id).tensors_key
    return load_file(str(Path(wsettings.ARTIFACT_URL) / key))["ctx"]


@pytest.mark.slow
@pytest.mark.parametrize("v", VARIANTS, ids=[v.name for v in VARIANTS])
def test_coop_checkpoint_round_trip(v: Variant, corpus, api, wsettings, tmp_path) -> None:
    from mergetune.worker.pipeline import run_job

    path, ctx = corpus[v.name]
    form = {"class_token_position": v.position} if v.position else {}
    r = api.post("/v1/checkpoints", files={"file": (path.name, path.read_bytes())}, data=form)
    assert r.status_code == 201, r.text
    ck = r.json()
    assert ck["status"] == "ready" and ck["format"] == "dassl" and ck["method"] == "coop"
    assert ck["n_ctx"] == v.n_ctx and ck["ctx_dim"] == D and ck["csc"] == bool(v.rows)
    assert ck["class_token_position"] == v.position
    assert torch.equal(_stored_ctx(wsettings, ck["id"]), ctx.float())  # fp16 widened exactly

    r = api.post("/v1/datasets", json={"name": "tiny", "kind": "builtin", "options": ws.TINY_DATASET_OPTIONS})
    ds = r.json()
    body = {
        "checkpoint_id": ck["id"],
        "dataset_id": ds["id"],
        "backbone": ws.TINY_BACKBONE,
        "hyperparameters": {
            "epochs": EPOCHS,
            "lr": 1e-9,
            "warmup_epochs": 0,
            "batch_size": 8,
            "shots": 2,
            "feature_mode": "none",
            "curve_step": 0.5,
        },
    }
    if v.protocol != "base2novel":
        body["protocol"] = v.protocol
    r = api.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["prompt"] == {"class_token_position": v.expected_position} and job["protocol"] == v.protocol

    assert run_job(job["id"], settings=wsettings, hostname="corpus@test") == "succeeded"

    manifest = json.loads(_download(api, job["id"], "manifest.json"))
    assert manifest["config"]["prompt"]["class_token_position"] == v.expected_position
    assert manifest["config"]["protocol"] == v.protocol
    assert manifest["backbone"]["activation"] == "gelu"
    report = json.loads(_download(api, job["id"], "report.json"))
    assert report["protocol"]["name"] == v.protocol
    assert report["config"]["prompt"]["class_token_position"] == v.expected_position
    classes = ds["base_classes"] if v.protocol == "base2novel" else ds["classnames"]
    html = _download(api, job["id"], "report.html").decode()
    assert f"protocol {v.protocol}" in html and f"class token {v.expected_position}" in html

    # prompts.safetensors: the recovered ctx (lr 1e-9: the uploaded one), with its metadata
    from safetensors.torch import load as load_st

    sf = _download(api, job["id"], "prompts.safetensors")
    rec = load_st(sf)["ctx"]
    assert rec.shape == ctx.shape and rec.dtype == torch.float32
    assert (rec - ctx.float()).abs().max() < 1e-6
    meta = json.loads(json.loads(sf[8 : 8 + int.from_bytes(sf[:8], "little")])["__metadata__"]["mergetune"])
    assert meta["class_token_position"] == v.expected_position and meta["protocol"] == v.protocol
    assert meta["context_classes"] == classes

    # prompts-coop.tar, unpacked where CoOp's load_model(directory, epoch=EPOCHS) looks
    with tarfile.open(fileobj=io.BytesIO(_download(api, job["id"], "prompts-coop.tar"))) as tar:
        tar.extractall(tmp_path / "recovered", filter="data")
    model_file = tmp_path / "recovered" / "prompt_learner" / f"model.pth.tar-{EPOCHS}"
    checkpoint = torch.load(model_file, map_location="cpu", weights_only=True)
    state = checkpoint["state_dict"]
    assert checkpoint["epoch"] == EPOCHS
    assert state["token_prefix"].shape[0] == len(classes)  # the buffers of the classes the contexts cover
    del state["token_prefix"], state["token_suffix"]  # as CoOp's load_model does
    learner = torch.nn.Module()
    learner.ctx = torch.nn.Parameter(torch.zeros(ctx.shape))
    learner.load_state_dict(state, strict=False)
    assert torch.equal(learner.ctx.data, rec)
    assert checkpoint["mergetune"]["class_token_position"] == v.expected_position

    # re-upload of both downloads: same values, the position read back from our metadata
    for name in ("prompts.safetensors", "prompts.pth.tar"):
        r = api.post("/v1/checkpoints", files={"file": (name, _download(api, job["id"], name))})
        assert r.status_code == 201, r.text
        again = r.json()
        assert again["status"] == "ready" and again["class_token_position"] == v.expected_position
        assert again["n_ctx"] == v.n_ctx and again["csc"] == bool(v.rows)
        assert torch.equal(_stored_ctx(wsettings, again["id"]), rec)
