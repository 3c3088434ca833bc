"""MMA exports: adapters.safetensors and the Dassl layout MMA's load_model reads, round trip."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import torch

from mergetune.core.checkpoints.export import MMA_ARCHIVE, export_mma, mma_member
from mergetune.core.checkpoints.ingest import ingest_checkpoint
from mergetune.core.checkpoints.mma_layout import AdapterLayout
from mergetune.core.config import Method
from mergetune.core.model.adapters import MMAAdapters

LAYOUT = AdapterLayout(text_width=64, visual_width=96, start=2, end=3, dim=32)


def test_export_round_trip(tmp_path: Path) -> None:
    src = MMAAdapters(LAYOUT, text_layers=3, visual_layers=4, seed=5)
    adapters = src.tensors()
    emb, tok = torch.randn(4, 77, 64), torch.randint(0, 100, (4, 77))
    meta = {"method": "mma", "layout": LAYOUT.to_json(), "classnames": ["a", "b", "c", "d"]}
    paths = export_mma(tmp_path, adapters, metadata=meta, epoch=5, buffers=(emb, tok))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["adapters.safetensors", MMA_ARCHIVE])

    # safetensors back through the safe ingestion
    st = ingest_checkpoint(paths["adapters.safetensors"])
    assert st.method == Method.mma and st.mma_layout == LAYOUT.to_json()
    assert st.metadata["classnames"] == ["a", "b", "c", "d"]
    assert st.adapters is not None
    for k, v in adapters.items():
        assert np.array_equal(st.adapters[k], v.numpy()), k

    # the tar unpacks where MMA's load_model(directory, epoch=5) looks
    with tarfile.open(paths[MMA_ARCHIVE]) as tar:
        names = tar.getnames()
        assert mma_member(5) == "adapter_learner/model.pth.tar-5" and mma_member(5) in names
        assert "adapter_learner/checkpoint" in names
        tar.extractall(tmp_path / "unpacked", filter="data")
    dassl = tmp_path / "unpacked" / mma_member(5)
    ck = ingest_checkpoint(dassl)
    assert ck.method == Method.mma and ck.format == "dassl" and ck.epoch == 5 and ck.n_cls == 4

    # what MMA's load_model does: torch.load (weights_only in torch >= 2.6), drop the two buffers,
    # load_state_dict(strict=False) into the AdapterLearner
    checkpoint = torch.load(dassl, map_location="cpu", weights_only=True)
    state_dict = checkpoint["state_dict"]
    assert torch.equal(state_dict["token_embedding"], emb) and torch.equal(
        state_dict["tokenized_prompts"], tok
    )
    del state_dict["token_embedding"], state_dict["tokenized_prompts"]
    dst = MMAAdapters(LAYOUT, text_layers=3, visual_layers=4, seed=9)
    result = dst.load_state_dict(state_dict, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    for k, v in dst.state_dict().items():
        assert torch.equal(v, adapters[k]), k
