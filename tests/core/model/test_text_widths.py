"""mergetune.core.config.TEXT_WIDTHS (what the torch-free API checks a context's width against) is the
text width of every known model: open_clip's configs, and the tiny models as the core builds them."""

from __future__ import annotations

import open_clip
import pytest
import torch

from mergetune.core.config import KNOWN_MODELS, OPEN_CLIP_MODELS, TEXT_WIDTHS, TINY_MODELS, BackboneSpec
from mergetune.core.model.backbone import load_backbone


def test_text_widths_cover_every_known_model_with_open_clips_widths() -> None:
    assert set(TEXT_WIDTHS) == set(KNOWN_MODELS)
    wrong = {
        name: (TEXT_WIDTHS[name], open_clip.get_model_config(name)["text_cfg"]["width"])
        for name in OPEN_CLIP_MODELS
        if TEXT_WIDTHS[name] != open_clip.get_model_config(name)["text_cfg"]["width"]
    }
    assert wrong == {}


@pytest.mark.parametrize("name", sorted(TINY_MODELS))
def test_tiny_models_text_width(name: str) -> None:
    torch.set_num_threads(1)
    bb = load_backbone(BackboneSpec(model=name, pretrained="random"))
    assert bb.model.token_embedding.weight.shape[1] == TEXT_WIDTHS[name]
