"""MMA adapters on open_clip's towers (mergetune.core.model.adapters; ALGORITHM.md section 6c): MMA's layout and
state-dict keys, zero adapters as the plain backbone, the adapted block."""

from __future__ import annotations

import pytest
import torch

from mergetune.core.checkpoints.mma_layout import AdapterLayout, default_span, layout_from_shapes
from mergetune.core.config import BackboneSpec
from mergetune.core.model.adapters import MMAAdapters, MMAModel, backbone_widths, layout_for
from mergetune.core.model.backbone import load_backbone


@pytest.fixture(scope="module")
def tiny():
    torch.set_num_threads(1)
    return load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"))


def _adapters(backbone, layout, seed=0):
    w = backbone_widths(backbone)
    return MMAAdapters(layout, w["text_layers"], w["visual_layers"], seed=seed)


def test_vit_b16_layout_is_mmas_config():
    """MMA's shipped config on ViT-B/16: blocks 5..12 (1-based), bottleneck 32, widths 512 / 768."""
    assert default_span(12) == (5, 12)
    lay = AdapterLayout(text_width=512, visual_width=768)
    shapes = lay.shapes()
    assert len(shapes) == 8 * (4 + 4 + 2)
    assert shapes["text_adapter.5.down.0.weight"] == (32, 512)
    assert shapes["text_adapter.12.up.weight"] == (512, 32)
    assert shapes["visual_adapter.5.down.0.weight"] == (32, 768)
    assert shapes["visual_adapter.12.up.bias"] == (768,)
    assert shapes["shared_adapter.5.0.weight"] == (32, 32)
    assert "text_adapter.4.up.weight" not in shapes and "shared_adapter.13.0.bias" not in shapes
    assert layout_from_shapes(shapes) == lay
    # small towers: the upper two thirds (tiny-clip: 4 blocks -> 2..4)
    assert default_span(4) == (2, 4) and default_span(1) == (1, 1) and default_span(24) == (9, 24)


def test_state_dict_keys_are_mmas(tiny):
    lay = layout_for(tiny)
    assert (lay.start, lay.end, lay.dim) == (2, 4, 32)
    sd = _adapters(tiny, lay).state_dict()
    assert {k: tuple(v.shape) for k, v in sd.items()} == lay.shapes()


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("shared_adapter.6.0.bias"), "missing"),
        (lambda s: s.update({"text_adapter.6.up.weight": (512, 16)}), "shape"),
        (lambda s: [s.pop(k) for k in list(s) if ".7." in k], "contiguous"),
        (lambda s: [s.pop(k) for k in list(s) if k.startswith("visual_adapter.12")], "same blocks"),
    ],
)
def test_layout_from_shapes_refuses_inconsistent_files(edit, message):
    shapes = dict(AdapterLayout(512, 768).shapes())
    edit(shapes)
    with pytest.raises(ValueError, match=message):
        layout_from_shapes(shapes)


def test_zero_adapters_are_the_plain_backbone(tiny):
    lay = layout_for(tiny)
    names = ["red circle", "blue square"]
    mma = MMAModel(tiny, names, lay)
    zero = _adapters(tiny, lay).zero_()
    ref_t = tiny.encode_text([f"a photo of a {n}." for n in names])
    assert torch.allclose(mma.text_features(zero), ref_t, atol=1e-5)
    pix = torch.randn(3, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref_i = tiny.model.encode_image(pix)
        assert torch.allclose(mma.image_features(mma.image_prefix(pix), zero), ref_i, atol=1e-5)


def test_adapted_block_adds_scaled_bottleneck_of_its_own_ln1(tiny):
    """Block i: block_i(x) + scale * up(shared(relu(down(ln_1_i(x))))) with relu after down and after
    the shared layer, exactly as MMA's ModifiedResidualAttentionBlock."""
    lay = layout_for(tiny)
    mma = MMAModel(tiny, ["a"], lay, scale=0.5)
    ad = _adapters(tiny, lay, seed=3)
    pix = torch.randn(2, 3, tiny.image_size, tiny.image_size, generator=torch.Generator().manual_seed(1))
    v = tiny.model.visual
    with torch.no_grad():
        x = v._embeds(pix)
        blocks = v.transformer.resblocks
        x = blocks[0](x)  # block 1: frozen, no adapter
        for i in (2, 3, 4):
            t, s = ad.visual_adapter[i], ad.shared_adapter[i]
            h = blocks[i - 1].ln_1(x)
            y = torch.relu(h @ t.down[0].weight.T + t.down[0].bias)
            y = torch.relu(y @ s[0].weight.T + s[0].bias)
            y = y @ t.up.weight.T + t.up.bias
            x = blocks[i - 1](x) + 0.5 * y
        pooled, _ = v._pool(x)
        want = pooled @ v.proj
        got = mma.image_features(mma.image_prefix(pix), ad)
    assert torch.allclose(got, want, atol=1e-5)
