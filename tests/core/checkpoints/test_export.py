"""mergetune.core.checkpoints.export: prompts.safetensors + Dassl prompts.pth.tar, bit-exact round trip through ingest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from mergetune.core.checkpoints.export import export_head, export_prompts, read_export_metadata
from mergetune.core.checkpoints.ingest import ingest_checkpoint
from mergetune.core.config import Method

META = {
    "method": "coop",
    "classnames": ["red circle", "blue square"],
    "backbone": {"model": "tiny-test", "pretrained": "random:0"},
    "weights_sha256": "ab" * 32,
    "parent_sha256": "cd" * 32,
    "hyperparameters": {"w_zs": 10.0, "epochs": 2},
}


@pytest.mark.parametrize("csc", [False, True])
def test_round_trip_bit_exact(tmp_path: Path, csc: bool) -> None:
    ctx = torch.randn((2, 4, 64) if csc else (4, 64)) * 1e-3
    ctx.view(-1)[0] = 1e-40  # a denormal survives too
    prefix, suffix = torch.randn(2, 1, 64), torch.randn(2, 72, 64)
    paths = export_prompts(tmp_path, ctx, token_prefix=prefix, token_suffix=suffix, metadata=META, epoch=7)
    assert set(paths) == {"prompts.safetensors", "prompts.pth.tar", "prompts-coop.tar"}
    for name in ("prompts.safetensors", "prompts.pth.tar"):  # the tar holds the second one
        ck = ingest_checkpoint(paths[name], expected_dim=64, n_cls=2)
        assert ck.ctx.tobytes() == ctx.numpy().tobytes(), name
        assert ck.method == Method.coop and ck.csc == csc and ck.n_ctx == 4
    assert ingest_checkpoint(paths["prompts.pth.tar"]).epoch == 7
    assert ingest_checkpoint(paths["prompts.pth.tar"]).unknown_globals == []
    assert not list(tmp_path.glob("*.tmp"))


def test_safetensors_header_metadata(tmp_path: Path) -> None:
    paths = export_prompts(
        tmp_path,
        np.ones((4, 8), np.float32),
        token_prefix=None,
        token_suffix=None,
        metadata={**META, "method": "kgcoop"},
        epoch=1,
    )
    with safe_open(str(paths["prompts.safetensors"]), framework="np") as f:
        meta = f.metadata()
        assert list(f.keys()) == ["ctx"]
    assert meta["method"] == "kgcoop" and meta["n_ctx"] == "4" and meta["ctx_dim"] == "8"
    full = json.loads(meta["mergetune"])
    assert full["classnames"] == META["classnames"] and full["parent_sha256"] == "cd" * 32
    assert full["hyperparameters"] == {"w_zs": 10.0, "epochs": 2}
    assert read_export_metadata(paths["prompts.safetensors"])["backbone"]["model"] == "tiny-test"
    # the metadata method is honoured on ingest
    assert ingest_checkpoint(paths["prompts.safetensors"]).method == Method.kgcoop


def test_dassl_file_loads_with_weights_only(tmp_path: Path) -> None:
    ctx = torch.randn(4, 16)
    prefix, suffix = torch.randn(3, 1, 16), torch.randn(3, 72, 16)
    paths = export_prompts(
        tmp_path, torch.nn.Parameter(ctx), token_prefix=prefix, token_suffix=suffix, metadata=META, epoch=3
    )
    ck = torch.load(paths["prompts.pth.tar"], weights_only=True)
    # Dassl's save_model keys (optimizer/scheduler/val_result empty), plus our metadata
    assert set(ck) == {"state_dict", "epoch", "optimizer", "scheduler", "val_result", "mergetune"}
    assert ck["epoch"] == 3 and type(ck["epoch"]) is int and ck["optimizer"] is None
    assert ck["mergetune"]["n_ctx"] == 4
    assert set(ck["state_dict"]) == {"ctx", "token_prefix", "token_suffix"}
    assert type(ck["state_dict"]["ctx"]) is torch.Tensor and not ck["state_dict"]["ctx"].requires_grad
    assert torch.equal(ck["state_dict"]["ctx"], ctx)
    assert torch.equal(ck["state_dict"]["token_suffix"], suffix)


def test_head_export_round_trip(tmp_path: Path) -> None:
    w, b = torch.randn(10, 32), torch.randn(10)
    paths = export_head(tmp_path, w, b, metadata={"classnames": list("abcdefghij")})
    ck = ingest_checkpoint(paths["head.safetensors"], n_cls=10, expected_dim=32)
    assert ck.method == Method.linear_head
    assert ck.head_weight.tobytes() == w.numpy().tobytes() and ck.head_bias.tobytes() == b.numpy().tobytes()
    assert read_export_metadata(paths["head.safetensors"])["method"] == "linear_head"


def test_coop_archive_puts_the_file_where_coops_loader_looks(tmp_path: Path) -> None:
    """CoOp's load_model(directory, epoch) opens <directory>/prompt_learner/model.pth.tar-<epoch>."""
    import tarfile

    meta = {**META, "class_token_position": "middle", "protocol": "all", "context_classes": ["a", "b"]}
    ctx = torch.randn(2, 4, 16)
    paths = export_prompts(
        tmp_path / "out", ctx, token_prefix=None, token_suffix=None, metadata=meta, epoch=12
    )
    with tarfile.open(paths["prompts-coop.tar"]) as tar:
        assert tar.getnames() == [
            "prompt_learner/model.pth.tar-12",
            "prompt_learner/checkpoint",
            "mergetune.json",
        ]
        tar.extractall(tmp_path / "coop", filter="data")
    model_file = tmp_path / "coop" / "prompt_learner" / "model.pth.tar-12"
    assert model_file.read_bytes() == paths["prompts.pth.tar"].read_bytes()
    assert (tmp_path / "coop" / "prompt_learner" / "checkpoint").read_text() == "model.pth.tar-12\n"
    ck = torch.load(model_file, weights_only=True)
    assert torch.equal(ck["state_dict"]["ctx"], ctx) and ck["epoch"] == 12
    assert ck["mergetune"]["class_token_position"] == "middle" and ck["mergetune"]["protocol"] == "all"
    assert ck["mergetune"]["context_classes"] == ["a", "b"]
    meta_sf = read_export_metadata(paths["prompts.safetensors"])
    assert meta_sf["class_token_position"] == "middle" and meta_sf["context_classes"] == ["a", "b"]
