"""mergetune.core.checkpoints.ingest: Dassl / state-dict / safetensors checkpoints, method detection and rejections."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from mergetune.core.checkpoints.ingest import ingest_checkpoint
from mergetune.core.checkpoints.safe_pickle import TorchZipFile
from mergetune.core.config import Method
from mergetune.core.errors import CheckpointError


def _fake_dassl_modules() -> tuple[list[str], type]:
    names = ["dassl", "dassl.optim", "dassl.optim.lr_scheduler"]
    mods = {n: types.ModuleType(n) for n in names}

    class ConstantWarmupScheduler:
        def __init__(self, successor: object) -> None:
            self.successor = successor
            self.warmup_epoch = 1
            self.cons_lr = 1e-5
            self.last_epoch = 50

    ConstantWarmupScheduler.__module__ = "dassl.optim.lr_scheduler"
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    mods["dassl.optim.lr_scheduler"].ConstantWarmupScheduler = ConstantWarmupScheduler
    sys.modules.update(mods)
    return names, ConstantWarmupScheduler


def write_dassl(path: Path, state_dict: dict, epoch: int = 50) -> None:
    """A real-layout Dassl checkpoint: {state_dict, epoch, optimizer, scheduler}, where the scheduler
    is an object of a class from a module that is removed again after saving."""
    names, sched_cls = _fake_dassl_modules()
    try:
        p = torch.nn.Parameter(state_dict["ctx"].clone())
        opt = torch.optim.SGD([p], lr=0.002, momentum=0.9, weight_decay=5e-4)
        p.grad = torch.ones_like(p)
        opt.step()
        torch.save(
            {
                "state_dict": state_dict,
                "epoch": epoch,
                "optimizer": opt.state_dict(),
                # like Dassl's ConstantWarmupScheduler: a real torch scheduler (holding the optimizer
                # and its parameters) as successor, all pickled as objects
                "scheduler": sched_cls(torch.optim.lr_scheduler.CosineAnnealingLR(opt, 50)),
                "val_result": None,
            },
            path,
        )
    finally:
        for n in names:
            sys.modules.pop(n, None)


def coop_state(n_cls: int = 10, m: int = 4, d: int = 512, csc: bool = False, seed: int = 0) -> dict:
    gen = torch.Generator().manual_seed(seed)
    ctx = torch.randn((n_cls, m, d) if csc else (m, d), generator=gen)
    return {
        "ctx": ctx,
        "token_prefix": torch.randn(n_cls, 1, d, generator=gen),
        "token_suffix": torch.randn(n_cls, 77 - 1 - m, d, generator=gen),
    }


def test_real_layout_dassl_coop(tmp_path: Path) -> None:
    sd = coop_state()
    f = tmp_path / "prompt_learner" / "model.pth.tar-50"
    f.parent.mkdir()
    write_dassl(f, sd)
    ck = ingest_checkpoint(f, expected_dim=512, n_cls=10)
    assert ck.format == "dassl"
    assert ck.method == Method.coop
    assert (ck.n_ctx, ck.ctx_dim, ck.csc, ck.n_cls, ck.epoch) == (4, 512, False, 10, 50)
    assert ck.ctx.dtype == np.float32 and ck.ctx.shape == (4, 512)
    np.testing.assert_array_equal(ck.ctx, sd["ctx"].numpy())
    assert ck.unknown_globals[0] == "dassl.optim.lr_scheduler.ConstantWarmupScheduler"
    assert "torch.optim.lr_scheduler.CosineAnnealingLR" in ck.unknown_globals
    assert ck.summary()["method"] == "coop"


def test_token_buffers_never_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sd = coop_state(n_cls=50)
    write_dassl(tmp_path / "model-best.pth.tar", sd)
    read = []
    orig = TorchZipFile.read_storage
    monkeypatch.setattr(
        TorchZipFile, "read_storage", lambda self, ref: read.append(ref.numel) or orig(self, ref)
    )
    ck = ingest_checkpoint(tmp_path / "model-best.pth.tar", filename="model-best.pth.tar")
    assert ck.n_cls == 50
    assert read == [4 * 512]  # only ctx; not token_prefix / token_suffix / optimizer buffers


def test_kgcoop_with_bias_vectors(tmp_path: Path) -> None:
    sd = coop_state(n_cls=6, d=512)
    sd["bias_vectors"] = torch.zeros(1, 512)
    write_dassl(tmp_path / "model.pth.tar-5", sd, epoch=5)
    ck = ingest_checkpoint(tmp_path / "model.pth.tar-5", expected_dim=512)
    assert ck.method == Method.kgcoop
    assert (ck.n_ctx, ck.ctx_dim, ck.epoch) == (4, 512, 5)
    np.testing.assert_array_equal(ck.ctx, sd["ctx"].numpy())


def test_explicit_method_overrides_detection(tmp_path: Path) -> None:
    torch.save(coop_state(d=64), tmp_path / "s.pth")
    assert ingest_checkpoint(tmp_path / "s.pth", method=Method.kgcoop).method == Method.kgcoop
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "s.pth", method=Method.linear_head)
    assert ei.value.code == "missing_ctx"


def test_bare_state_dict_with_prefix_and_csc(tmp_path: Path) -> None:
    sd = coop_state(n_cls=5, m=8, d=64, csc=True)
    torch.save({f"prompt_learner.{k}": v for k, v in sd.items()}, tmp_path / "sd.pt")
    ck = ingest_checkpoint(tmp_path / "sd.pt", expected_dim=64, n_cls=5)
    assert ck.format == "state_dict" and ck.csc and (ck.n_ctx, ck.ctx_dim, ck.n_cls) == (8, 64, 5)
    np.testing.assert_array_equal(ck.ctx, sd["ctx"].numpy())
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "sd.pt", n_cls=7)
    assert (ei.value.code, ei.value.param) == ("class_mismatch", "file")


def test_half_and_bfloat16_ctx(tmp_path: Path) -> None:
    for dt in (torch.float16, torch.bfloat16, torch.float64):
        ctx = torch.randn(4, 32).to(dt)
        torch.save({"ctx": ctx}, tmp_path / "c.pt")
        ck = ingest_checkpoint(tmp_path / "c.pt")
        assert ck.ctx.dtype == np.float32
        np.testing.assert_array_equal(ck.ctx, ctx.float().numpy())


@pytest.mark.parametrize(
    "state,kwargs,code",
    [
        ({"token_prefix": torch.zeros(2, 1, 8)}, {}, "missing_ctx"),
        ({"ctx": torch.zeros(8)}, {}, "bad_rank"),
        ({"ctx": torch.zeros(1, 2, 3, 8)}, {}, "bad_rank"),
        ({"ctx": torch.zeros(0, 8)}, {}, "bad_rank"),
        ({"ctx": torch.zeros(4, 8, dtype=torch.int64)}, {}, "bad_dtype"),
        ({"ctx": torch.tensor([[1.0, float("nan")]])}, {}, "non_finite"),
        ({"ctx": torch.tensor([[1.0, float("inf")]])}, {}, "non_finite"),
        ({"ctx": torch.zeros(4, 8)}, {"expected_dim": 512}, "width_mismatch"),
        ({"ctx": torch.zeros(4, 8)}, {"max_tensor_bytes": 64}, "too_large"),
        ({}, {}, "missing_ctx"),
    ],
)
def test_rejections(tmp_path: Path, state: dict, kwargs: dict, code: str) -> None:
    torch.save(state, tmp_path / "x.pth")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "x.pth", **kwargs)
    assert ei.value.code == code
    assert ei.value.param == "file"


def test_non_dict_and_missing_files(tmp_path: Path) -> None:
    torch.save([torch.zeros(4, 8)], tmp_path / "list.pth")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "list.pth")
    assert ei.value.code == "not_a_checkpoint"
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "empty.pth")
    assert ei.value.code == "truncated"
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "nope.pth")
    assert ei.value.code == "not_a_checkpoint"


def test_safetensors_ctx_and_bf16(tmp_path: Path) -> None:
    ctx = torch.randn(4, 64)
    save_file({"ctx": ctx, "bias_vectors": torch.zeros(1, 64)}, str(tmp_path / "p.safetensors"))
    ck = ingest_checkpoint(tmp_path / "p.safetensors", expected_dim=64)
    assert (ck.format, ck.method, ck.n_ctx, ck.ctx_dim) == ("safetensors", Method.kgcoop, 4, 64)
    np.testing.assert_array_equal(ck.ctx, ctx.numpy())
    bf = torch.randn(3, 4, 16).to(torch.bfloat16)
    save_file({"ctx": bf}, str(tmp_path / "b.safetensors"))
    ck = ingest_checkpoint(tmp_path / "b.safetensors", n_cls=3)
    assert ck.csc
    np.testing.assert_array_equal(ck.ctx, bf.float().numpy())


def test_safetensors_corrupt(tmp_path: Path) -> None:
    save_file({"ctx": torch.randn(4, 64)}, str(tmp_path / "p.safetensors"))
    data = (tmp_path / "p.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(data[:-100])
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "t.safetensors")
    assert ei.value.code == "truncated"
    import struct

    (tmp_path / "h.safetensors").write_bytes(struct.pack("<Q", 10) + b"{not json}")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "h.safetensors")
    assert ei.value.code == "not_a_checkpoint"
    (tmp_path / "junk.safetensors").write_text("hello world, not tensors")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "junk.safetensors")
    assert ei.value.code == "not_a_checkpoint"
    hdr = b'{"ctx":{"dtype":"F32","shape":[1000000000,1000],"data_offsets":[0,4000000000000]}}'
    (tmp_path / "big.safetensors").write_bytes(struct.pack("<Q", len(hdr)) + hdr)
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "big.safetensors")
    assert ei.value.code == "too_large"


@pytest.mark.parametrize("prefix", ["", "head.", "classifier.", "fc.", "module.head."])
def test_linear_head_layouts(tmp_path: Path, prefix: str) -> None:
    w, b = torch.randn(10, 32), torch.randn(10)
    torch.save({f"{prefix}weight": w, f"{prefix}bias": b}, tmp_path / "h.pt")
    ck = ingest_checkpoint(tmp_path / "h.pt", expected_dim=32, n_cls=10)
    assert ck.method == Method.linear_head and ck.ctx is None
    assert (ck.n_cls, ck.ctx_dim) == (10, 32)
    np.testing.assert_array_equal(ck.head_weight, w.numpy())
    np.testing.assert_array_equal(ck.head_bias, b.numpy())


def test_linear_head_safetensors_and_rejections(tmp_path: Path) -> None:
    w = torch.randn(5, 16)
    save_file({"weight": w}, str(tmp_path / "h.safetensors"))
    ck = ingest_checkpoint(tmp_path / "h.safetensors")
    assert ck.method == Method.linear_head and ck.head_bias is None
    np.testing.assert_array_equal(ck.head_weight, w.numpy())
    for kwargs, code in [({"n_cls": 6}, "class_mismatch"), ({"expected_dim": 17}, "width_mismatch")]:
        with pytest.raises(CheckpointError) as ei:
            ingest_checkpoint(tmp_path / "h.safetensors", **kwargs)
        assert ei.value.code == code
    torch.save({"fc.weight": torch.randn(5, 16), "fc.bias": torch.randn(4)}, tmp_path / "b.pt")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "b.pt")
    assert ei.value.code == "bad_rank"
    torch.save({"weight": torch.randn(5, 16, 2)}, tmp_path / "r.pt")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(tmp_path / "r.pt", method="linear_head")
    assert ei.value.code == "bad_rank"
