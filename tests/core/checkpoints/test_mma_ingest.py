"""MMA's Dassl checkpoints through the safe ingestion (no torch.load), detected as method "mma"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mergetune.core.checkpoints.ingest import ingest_checkpoint
from mergetune.core.checkpoints.mma_layout import AdapterLayout
from mergetune.core.config import Method
from mergetune.core.errors import CheckpointError
from tests.mma_files import mma_state_dict, write_mma_dassl

VIT_B16 = AdapterLayout(text_width=512, visual_width=768)


def test_mma_dassl_file_is_detected_and_read(tmp_path: Path) -> None:
    sd = mma_state_dict(VIT_B16, n_cls=19)
    path = write_mma_dassl(tmp_path, sd)
    assert path.name == "model.pth.tar-5" and path.parent.name == "adapter_learner"
    ing = ingest_checkpoint(path, expected_dim=512)
    assert ing.method == Method.mma and ing.format == "dassl" and ing.epoch == 5
    assert ing.mma_layout == {"text_width": 512, "visual_width": 768, "start": 5, "end": 12, "dim": 32}
    assert ing.n_cls == 19 and ing.ctx_dim == 512 and ing.ctx is None
    assert ing.adapters is not None and set(ing.adapters) == set(VIT_B16.shapes())
    k = "visual_adapter.7.up.weight"
    assert ing.adapters[k].dtype == np.float32
    assert np.array_equal(ing.adapters[k], sd[k].numpy())
    assert ing.summary()["mma_layout"]["end"] == 12


def test_mma_fp16_and_prefixed_state_dict(tmp_path: Path) -> None:
    sd = {f"module.{k}": v.half() for k, v in mma_state_dict(VIT_B16).items() if k != "tokenized_prompts"}
    torch.save(sd, tmp_path / "mma.pth")
    ing = ingest_checkpoint(tmp_path / "mma.pth")
    assert ing.method == Method.mma and ing.adapters is not None
    assert ing.adapters["shared_adapter.5.0.weight"].dtype == np.float32


@pytest.mark.parametrize(
    "edit, code",
    [
        (lambda sd: sd.pop("shared_adapter.9.0.weight"), "bad_rank"),
        (lambda sd: sd.update({"text_adapter.5.up.weight": torch.zeros(512, 16)}), "bad_rank"),
        (lambda sd: sd.update({"visual_adapter.6.up.bias": torch.full((768,), float("nan"))}), "non_finite"),
    ],
)
def test_mma_rejections(tmp_path: Path, edit, code: str) -> None:
    sd = mma_state_dict(VIT_B16)
    edit(sd)
    path = write_mma_dassl(tmp_path, sd)
    with pytest.raises(CheckpointError) as info:
        ingest_checkpoint(path)
    assert info.value.code == code and info.value.param == "file"


def test_mma_width_checked_against_backbone(tmp_path: Path) -> None:
    path = write_mma_dassl(tmp_path, mma_state_dict(VIT_B16))
    with pytest.raises(CheckpointError) as info:
        ingest_checkpoint(path, expected_dim=768)
    assert info.value.code == "width_mismatch"


def test_mma_adapters_come_back_from_the_sandboxed_parser(tmp_path: Path) -> None:
    from mergetune.core.checkpoints.sandbox import ingest_sandboxed

    sd = mma_state_dict(VIT_B16, n_cls=7)
    ing = ingest_sandboxed(write_mma_dassl(tmp_path, sd), filename="model.pth.tar-5")
    assert ing.method == Method.mma and ing.n_cls == 7 and ing.mma_layout is not None
    assert ing.adapters is not None and set(ing.adapters) == set(VIT_B16.shapes())
    assert np.array_equal(
        ing.adapters["text_adapter.12.down.0.weight"], sd["text_adapter.12.down.0.weight"].numpy()
    )
