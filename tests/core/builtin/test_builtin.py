"""The built-in procedural dataset and tiny CLIP (core/builtin)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mergetune.core.builtin import model as M
from mergetune.core.builtin import pretrain as P
from mergetune.core.builtin import render as R


def test_class_list():
    assert len(R.COLOURS) == 12 and len(R.SHAPES) == 8
    assert len(R.CLASSNAMES) == 96 == R.NUM_CLASSES
    assert list(R.CLASSNAMES) == sorted(R.CLASSNAMES)
    assert len(set(R.CLASSNAMES)) == 96
    assert R.CLASSNAMES[0] == "black circle" and R.CLASSNAMES[-1] == "yellow triangle"
    # base = first 48 classes = the first 6 colours alphabetically
    assert {c.split()[0] for c in R.CLASSNAMES[:48]} == set(sorted(R.COLOURS)[:6])
    assert R.TEMPLATE == "a photo of a {}." and R.DOWNSTREAM_HUE == 0.6
    assert R.SHIFT_DOMAIN["hue"] != R.DOWNSTREAM_HUE


def test_render_deterministic_and_varied():
    a = np.asarray(R.render(17, 3, 5))
    b = np.asarray(R.render(17, 3, 5))
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(R.render(17, 3, 6)))
    assert not np.array_equal(a, np.asarray(R.render(17, 4, 5)))
    assert not np.array_equal(a, np.asarray(R.render(18, 3, 5)))
    img = R.render(17, 3, 5, hue=0.6)
    assert img.size == (32, 32) and img.mode == "RGB"
    assert np.array_equal(np.asarray(img), np.asarray(R.render(17, 3, 5, hue=0.6)))
    assert not np.array_equal(a, np.asarray(img))
    assert not np.array_equal(a, np.asarray(R.render(17, 3, 5, blur=1.0)))
    with pytest.raises(ValueError):
        R.render(96, 0, 0)


def test_hue_rotation_keeps_grey_and_inverts():
    grey = np.full((2, 2, 3), 100.0)
    assert np.allclose(R.hue_rotate(grey, 0.6), grey)
    x = np.random.default_rng(0).uniform(0, 255, size=(4, 4, 3))
    assert np.allclose(R.hue_rotate(R.hue_rotate(x, 0.6), -0.6), x)
    assert np.allclose(R.hue_rotate(x, 2 * np.pi), x)
    # luma is preserved
    luma = np.array([0.299, 0.587, 0.114])
    assert np.allclose(R.hue_rotate(x, 1.0) @ luma, x @ luma)


def test_captions():
    caps = {R.caption(5, 0, i) for i in range(40)}
    assert len(caps) > 5
    assert all("black" in c and "square" in c for c in caps)
    assert R.caption(5, 0, 1) == R.caption(5, 0, 1)
    img, text = R.render_with_caption(5, 0, 1)
    assert text == R.caption(5, 0, 1)
    assert np.array_equal(np.asarray(img), np.asarray(R.render(5, 0, 1)))


def test_tokenizer_round_trip():
    tok = M.get_tokenizer()
    ids = tok(["a photo of a red circle."])
    assert ids.shape == (1, 77)
    assert ids[0, 0].item() == M.SOT_TOKEN
    eot = int(ids[0].argmax())
    assert ids[0, eot].item() == M.EOT_TOKEN
    assert tok.decode(ids[0, 1:eot].tolist()).strip() == "a photo of a red circle ."


def test_weights_file_loads_into_config():
    assert M.WEIGHTS_PATH.is_file()
    assert M.WEIGHTS_PATH.stat().st_size < 6_000_000
    meta = M.read_metadata()
    assert json.loads(meta["config"]) == M.TINY_CLIP_CONFIG
    model = M.build_tiny_clip()
    assert model.visual.image_size == (32, 32)
    assert model.token_embedding.weight.shape == (M.VOCAB_SIZE, M.TINY_CLIP_CONFIG["text_cfg"]["width"])
    assert model.text_projection.shape[1] == M.TINY_CLIP_CONFIG["embed_dim"]
    # every token the builtin data uses has a trained (non-zero) embedding row
    used = P.used_token_ids()
    assert bool((model.token_embedding.weight[used].abs().sum(1) > 0).all())
    assert len(M.weights_sha256()) == 64 and M.weights_sha256() == M.weights_sha256(M.WEIGHTS_PATH)


def test_missing_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        M.build_tiny_clip(path=tmp_path / "nope.safetensors")


def test_pack_unpack_round_trip():
    torch.manual_seed(0)
    model = M.new_tiny_clip()
    with torch.no_grad():
        keep = torch.zeros(M.VOCAB_SIZE, dtype=torch.bool)
        keep[[3, 320, 49406, 49407]] = True
        model.token_embedding.weight[~keep] = 0
    sd = M.unpack_state_dict(M.pack_state_dict(model))
    ref = model.state_dict()
    assert sd.keys() == ref.keys()
    for k, v in ref.items():
        assert torch.allclose(sd[k], v.to(torch.float16).to(torch.float32)), k


def test_trimmed_text_encoder_matches_full_pass():
    torch.manual_seed(0)
    model = M.new_tiny_clip()
    tokens = P.tokenize(["a photo of a red circle.", "a small grey star on a dark background"])
    full = model.encode_text(tokens)
    assert torch.allclose(P.encode_text_trimmed(model, tokens), full, atol=1e-5)


def test_zero_shot_source_domain_well_above_chance():
    model = M.build_tiny_clip()
    labels = list(range(96)) * 2
    feats = P.image_features(model, labels, 123, [50_000 + k // 96 for k in range(len(labels))])
    with torch.no_grad():
        tokens = M.get_tokenizer()([R.TEMPLATE.format(c) for c in R.CLASSNAMES])
        text = F.normalize(model.encode_text(tokens), dim=-1)  # the full 77-token open_clip path
    acc = (feats @ text.T).argmax(1).eq(torch.tensor(labels)).float().mean().item()
    assert acc > 0.3  # chance is 1/96 (about 0.5 measured for the shipped file)
