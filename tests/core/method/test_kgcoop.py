"""KgCoOp end to end: a KgCoOp-style Dassl file (with the unused ``bias_vectors`` and a pickled
scheduler object) -> ingest -> recover(method=kgcoop) -> export -> ingest round trip."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from mergetune.core.checkpoints.export import export_prompts, read_export_metadata
from mergetune.core.checkpoints.ingest import ingest_checkpoint
from mergetune.core.config import (
    BackboneSpec,
    DatasetKind,
    FeatureMode,
    Hyperparameters,
    Method,
    PromptLearnerSpec,
)
from mergetune.core.data import base_to_novel, open_dataset
from mergetune.core.method.recovery import recover, train_coop
from mergetune.core.model.backbone import load_backbone
from mergetune.core.model.prompts import PromptLearner


def _write_kgcoop_dassl(path: Path, state_dict: dict, epoch: int) -> None:
    """KgCoOp's trainer saves Dassl's {state_dict, epoch, optimizer, scheduler}; the scheduler is an
    object of a class from a module the reader does not have (removed again after saving)."""
    mod = types.ModuleType("dassl_fake_sched")

    class Scheduler:
        def __init__(self, successor: object) -> None:
            self.successor, self.last_epoch = successor, epoch

    Scheduler.__module__ = "dassl_fake_sched"
    Scheduler.__qualname__ = "Scheduler"
    mod.Scheduler = Scheduler
    sys.modules["dassl_fake_sched"] = mod
    try:
        p = torch.nn.Parameter(state_dict["ctx"].clone())
        opt = torch.optim.SGD([p], lr=0.002, momentum=0.9)
        torch.save(
            {
                "state_dict": state_dict,
                "epoch": epoch,
                "optimizer": opt.state_dict(),
                "scheduler": Scheduler(torch.optim.lr_scheduler.CosineAnnealingLR(opt, epoch)),
            },
            path,
        )
    finally:
        sys.modules.pop("dassl_fake_sched", None)


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:4"))


def test_kgcoop_round_trip(tmp_path: Path, backbone) -> None:
    ds = open_dataset(
        DatasetKind.builtin, None, "", options={"num_classes": 4, "train_per_class": 2, "val_per_class": 1,
                                                 "test_per_class": 2},
    )  # fmt: skip
    task = base_to_novel(ds, shots=2, seed=1)
    hp = Hyperparameters(
        epochs=2, batch_size=4, lr=0.01, w_zs=8.0, feature_mode=FeatureMode.none, curve_step=0.5
    )
    spec = PromptLearnerSpec()  # 4 tokens from "a photo of a"
    ctx_ft = train_coop(backbone, task, hp, spec, method=Method.kgcoop)
    prefix, suffix = PromptLearner(backbone, task.base_classnames, ctx_ft, spec).dassl_buffers()
    src = tmp_path / "model.pth.tar-2"
    _write_kgcoop_dassl(
        src,
        {
            "ctx": ctx_ft,
            "token_prefix": prefix.cpu(),
            "token_suffix": suffix.cpu(),
            "bias_vectors": torch.zeros(1, backbone.text_width),  # KgCoOp's unused parameter
        },
        epoch=2,
    )
    ck = ingest_checkpoint(src, expected_dim=backbone.text_width)
    assert ck.format == "dassl" and ck.method == Method.kgcoop and ck.epoch == 2
    assert ck.n_ctx == 4 and not ck.csc and ck.n_cls == len(task.base_classnames)
    assert np.array_equal(ck.ctx, ctx_ft.numpy())

    out = recover(backbone, task, torch.from_numpy(ck.ctx), hp, method=ck.method)
    r = out.result
    assert r.config["method"] == "kgcoop" and out.ctx.shape == ctx_ft.shape
    assert not torch.equal(out.ctx, ctx_ft) and len(r.training) == 2
    for m in (r.metrics.zero_shot, r.metrics.fine_tuned, r.metrics.recovered):
        assert 0 <= m.base <= 100 and 0 <= m.novel <= 100

    learner = PromptLearner(backbone, task.base_classnames, out.ctx, spec)
    p2, s2 = learner.dassl_buffers()
    meta = {"method": ck.method.value, "classnames": task.base_classnames, "parent_sha256": "00" * 32}
    paths = export_prompts(
        tmp_path / "out", out.ctx, token_prefix=p2, token_suffix=s2, metadata=meta, epoch=2
    )
    assert read_export_metadata(paths["prompts.safetensors"])["method"] == "kgcoop"
    back = ingest_checkpoint(paths["prompts.safetensors"], expected_dim=backbone.text_width)
    assert back.method == Method.kgcoop  # from the provenance metadata
    assert np.array_equal(back.ctx, out.ctx.numpy())
    # the Dassl export has no bias_vectors (KgCoOp loads with strict=False and never uses it); its method
    # comes from the metadata it carries, and a given method wins; the context is bit-exact either way
    dassl = ingest_checkpoint(paths["prompts.pth.tar"], expected_dim=backbone.text_width)
    assert dassl.format == "dassl" and dassl.method == Method.kgcoop and dassl.epoch == 2
    assert np.array_equal(dassl.ctx, out.ctx.numpy())
    forced = ingest_checkpoint(paths["prompts.pth.tar"], method=Method.coop)
    assert forced.method == Method.coop and np.array_equal(forced.ctx, out.ctx.numpy())
    loaded = torch.load(paths["prompts.pth.tar"], weights_only=True)
    assert set(loaded["state_dict"]) == {"ctx", "token_prefix", "token_suffix"}
