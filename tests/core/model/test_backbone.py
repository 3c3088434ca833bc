"""mergetune.core.model.backbone: tiny registry, random seeds, local weights with sha256 identity, no downloads."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from mergetune.core.config import BackboneSpec
from mergetune.core.errors import BackboneError
from mergetune.core.model.backbone import load_backbone


@pytest.fixture(scope="module")
def tiny():
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:3"))


def test_tiny_backbone_shape_and_frozen(tiny):
    assert tiny.name == "tiny-test"
    assert tiny.identity == "random:3"
    assert tiny.text_width == 64
    assert tiny.embed_dim == 32
    assert tiny.image_size == 32
    assert tiny.logit_scale == pytest.approx(1 / 0.07, rel=1e-5)  # open_clip's init, exp'd
    assert not tiny.model.training
    assert all(not p.requires_grad for p in tiny.model.parameters())
    assert tiny.device == torch.device("cpu")


def test_random_seed_is_deterministic(tiny):
    again = load_backbone(BackboneSpec(model="tiny-test", pretrained="random:3"))
    other = load_backbone(BackboneSpec(model="tiny-test", pretrained="random:4"))
    w = tiny.model.token_embedding.weight
    assert torch.equal(w, again.model.token_embedding.weight)
    assert not torch.equal(w, other.model.token_embedding.weight)
    assert load_backbone(BackboneSpec(model="tiny-test", pretrained="random")).identity == "random:0"


def test_transforms_give_model_sized_tensors(tiny):
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3), dtype=np.uint8))
    assert tiny.test_transform(img).shape == (3, 32, 32)
    assert tiny.train_transform(img).shape == (3, 32, 32)
    feats = tiny.encode_images(torch.stack([tiny.test_transform(img)] * 2))
    assert feats.shape == (2, 32)
    assert torch.allclose(feats.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_local_weights_file_identity_is_sha256(tiny, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(tiny.model.state_dict(), path)
    loaded = load_backbone(BackboneSpec(model="tiny-test", pretrained=str(path)))
    assert loaded.identity == hashlib.sha256(path.read_bytes()).hexdigest()
    for (k, a), (_, b) in zip(
        tiny.model.state_dict().items(), loaded.model.state_dict().items(), strict=True
    ):
        assert torch.equal(a, b), k


def test_corrupt_weights_file(tmp_path):
    path = tmp_path / "bad.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneSpec(model="tiny-test", pretrained=str(path)))
    assert e.value.code == "weights_invalid"


def test_unknown_backbone():
    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneSpec(model="ViT-Q-99", pretrained="random"))
    assert e.value.code == "unknown_backbone"
    assert e.value.param == "backbone.model"
    assert "ViT-Q-99" in str(e.value)


def test_uncached_pretrained_tag_is_never_downloaded(tmp_path):
    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneSpec(model="ViT-B-16", pretrained="openai"), cache_dir=str(tmp_path))
    assert e.value.code == "weights_missing"
    assert e.value.param == "backbone.pretrained"
    assert str(tmp_path / "ViT-B-16.pt") in str(e.value)  # names the file it looked for


def test_unknown_tag_and_bad_random(tmp_path):
    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneSpec(model="ViT-B-16", pretrained="no-such-tag"), cache_dir=str(tmp_path))
    assert e.value.code == "weights_missing"
    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneSpec(model="tiny-test", pretrained="openai"))
    assert e.value.code == "weights_missing"
    with pytest.raises(BackboneError):
        load_backbone(BackboneSpec(model="tiny-test", pretrained="random:x"))


def test_builtin_weights_missing_names_the_file(tmp_path, monkeypatch):
    try:
        from mergetune.core.builtin import model as builtin_model
    except ImportError:
        builtin_model = None
    missing = tmp_path / "absent.safetensors"
    if builtin_model is not None:
        monkeypatch.setattr(builtin_model, "WEIGHTS_PATH", missing)
    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"))
    assert e.value.code == "weights_missing"
    if builtin_model is not None:
        assert str(missing) in str(e.value)


def test_builtin_only_for_tiny_clip():
    with pytest.raises(BackboneError) as e:
        load_backbone(BackboneSpec(model="tiny-test", pretrained="builtin"))
    assert e.value.code == "weights_missing"


def test_builtin_packed_weights_load(tmp_path, monkeypatch):
    builtin_model = pytest.importorskip("mergetune.core.builtin.model")
    if not hasattr(builtin_model, "save_weights"):
        pytest.skip("mergetune.core.builtin.model has no save_weights")
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = builtin_model.new_tiny_clip()
    path = tmp_path / "tiny_clip.safetensors"
    builtin_model.save_weights(model, path)
    monkeypatch.setattr(builtin_model, "WEIGHTS_PATH", path)
    bb = load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"))
    assert bb.identity == hashlib.sha256(path.read_bytes()).hexdigest()
    tokens = bb.tokenizer(["a photo of a red square."])
    expected = builtin_model.load_weights_into(builtin_model.new_tiny_clip(), path).encode_text(tokens)
    assert torch.allclose(bb.model.encode_text(tokens), expected, atol=1e-6)
