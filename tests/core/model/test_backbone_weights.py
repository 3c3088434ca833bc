"""Backbone names and weights: the static model list, weights confinement, OpenAI formats with QuickGELU."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import open_clip
import pytest
import torch

from mergetune.core.checkpoints.weights import inventory, is_file_reference, resolve_weights, weights_relpath
from mergetune.core.config import KNOWN_MODELS, OPEN_CLIP_MODELS, TINY_MODELS, BackboneSpec
from mergetune.core.errors import BackboneError
from mergetune.core.model.backbone import load_backbone

TOKENS_TEXT = ["a photo of a forest.", "a satellite photo of annual crop land.", "x"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_known_models_is_open_clips_standard_text_tower_list() -> None:
    """mergetune.core.config.OPEN_CLIP_MODELS (what the torch-free API accepts) is open_clip's registry filtered by
    the rule load_backbone applies (no HF / multimodal text tower). Regenerate it when open_clip changes."""
    usable = set()
    for name in open_clip.list_models():
        if name.startswith(
            "mergetune::"
        ):  # mergetune.core.model.backbone registers the configs it builds under this prefix
            continue
        cfg = open_clip.get_model_config(name)
        text = cfg.get("text_cfg", {})
        if "hf_model_name" in text or "hf_tokenizer_name" in text or "multimodal_cfg" in cfg:
            continue
        usable.add(name)
    assert set(OPEN_CLIP_MODELS) == usable
    assert KNOWN_MODELS == OPEN_CLIP_MODELS | TINY_MODELS
    assert "ViT-B-16" in KNOWN_MODELS and "ViT-B-16-quickgelu" in KNOWN_MODELS and "tiny-clip" in KNOWN_MODELS


def test_core_weights_and_config_import_without_torch() -> None:
    code = "import sys, mergetune.core.config, mergetune.core.checkpoints.weights; assert 'torch' not in sys.modules"
    assert os.system(f'{sys.executable} -c "{code}"') == 0


# -- confinement ------------------------------------------------------------------------------------
def test_file_references() -> None:
    assert is_file_reference("ViT-B-16.pt") and is_file_reference("openai/ViT-B-16.bin")
    assert is_file_reference("/models/x") and is_file_reference("./x")
    assert not is_file_reference("openai") and not is_file_reference("random:3")
    assert not is_file_reference("builtin") and not is_file_reference("laion2b_s34b_b88k")


def test_weights_paths_are_confined_with_one_answer(tmp_path: Path) -> None:
    root = tmp_path / "models"
    (root / "sub").mkdir(parents=True)
    (root / "sub" / "w.pt").write_bytes(b"x")
    outside = tmp_path / "secret.pt"
    outside.write_bytes(b"x")
    (root / "link.pt").symlink_to(outside)
    store = root / "artifacts"
    store.mkdir()
    (store / "upload.pt").write_bytes(b"x")

    assert weights_relpath(root, "sub/w.pt") == "sub/w.pt"
    assert weights_relpath(root, str(root / "sub" / "w.pt")) == "sub/w.pt"
    assert resolve_weights(root, "sub/w.pt") == (root / "sub" / "w.pt").resolve()

    messages = set()
    for bad in (
        "/etc/shadow",
        "/nonexistent/file.pt",
        str(outside),
        "../secret.pt",
        "sub/../../secret.pt",
        "link.pt",
    ):
        with pytest.raises(BackboneError) as err:
            resolve_weights(root, bad)
        assert err.value.code == "path_outside_root" and err.value.param == "backbone.pretrained"
        messages.add(err.value.message.replace(bad[:200], "<p>"))
    with pytest.raises(BackboneError) as err:
        resolve_weights(root, "artifacts/upload.pt", forbidden=[store])
    assert err.value.code == "path_outside_root"
    messages.add(err.value.message.replace("artifacts/upload.pt", "<p>"))
    assert len(messages) == 1  # existing or not, outside is answered the same way
    with pytest.raises(BackboneError) as err:
        resolve_weights(root, "sub/none.pt")
    assert err.value.code == "weights_missing"

    assert inventory(root, forbidden=[store]) == ["sub/w.pt"]  # the symlink out and the store are skipped


def _tiny_openai_state_dict(model: torch.nn.Module, *, fp16: bool = True) -> dict[str, torch.Tensor]:
    """open_clip's CLIP keys are OpenAI's; OpenAI adds three ints and keeps most weights in fp16."""
    sd = {
        k: (v.half() if fp16 and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()
    }
    sd["input_resolution"] = torch.tensor(32)
    sd["context_length"] = torch.tensor(77)
    sd["vocab_size"] = torch.tensor(49408)
    return sd


def test_openai_state_dict_is_built_with_quick_gelu_and_warns_on_a_gelu_name(tmp_path: Path) -> None:
    src = load_backbone(BackboneSpec(model="tiny-test", pretrained="random:7"))
    assert src.activation == "gelu" and src.weights_format is None
    torch.save(_tiny_openai_state_dict(src.model), tmp_path / "openai.pt")
    torch.save(src.model.state_dict(), tmp_path / "plain.pt")

    bb = load_backbone(BackboneSpec(model="tiny-test", pretrained="openai.pt"), model_root=tmp_path)
    assert bb.activation == "quick_gelu" and bb.weights_format == "openai_state_dict"
    assert len(bb.warnings) == 1 and "GELU" in bb.warnings[0] and "QuickGELU" in bb.warnings[0]
    plain = load_backbone(BackboneSpec(model="tiny-test", pretrained="plain.pt"), model_root=tmp_path)
    assert plain.activation == "gelu" and plain.weights_format == "state_dict" and plain.warnings == []

    # same weights (fp16-rounded), other activation: the text features differ measurably
    tokens = bb.tokenizer(TOKENS_TEXT)
    with torch.no_grad():
        quick = bb.model.encode_text(tokens)
        gelu = plain.model.encode_text(tokens)
    assert (quick - gelu).abs().max() > 1e-4


def test_torchscript_archive_is_recognised(tmp_path: Path) -> None:
    src = load_backbone(BackboneSpec(model="tiny-test", pretrained="random:8"))
    torch.jit.script(src.model).save(str(tmp_path / "ts.pt"))
    bb = load_backbone(BackboneSpec(model="tiny-test", pretrained="ts.pt"), model_root=tmp_path)
    assert bb.weights_format == "openai_torchscript" and bb.activation == "quick_gelu"
    for name, p in bb.model.state_dict().items():
        assert torch.equal(p, src.model.state_dict()[name]), name


def test_weights_errors_never_quote_the_file(tmp_path: Path) -> None:
    torch.save({"token_of_another_project": torch.zeros(3)}, tmp_path / "foreign.pt")
    (tmp_path / "junk.bin").write_bytes(b"PK\x03\x04 not really a zip, secret-bytes-here")
    for name in ("foreign.pt", "junk.bin"):
        with pytest.raises(BackboneError) as err:
            load_backbone(BackboneSpec(model="tiny-test", pretrained=name), model_root=tmp_path)
        assert err.value.code == "weights_invalid"
        assert "token_of_another_project" not in err.value.message and "secret" not in err.value.message
    sd = _tiny_openai_state_dict(load_backbone(BackboneSpec(model="tiny-test", pretrained="random")).model)
    sd["secret_extra_tensor"] = torch.zeros(1)
    torch.save(sd, tmp_path / "extra.pt")
    with pytest.raises(BackboneError) as err:
        load_backbone(BackboneSpec(model="tiny-test", pretrained="extra.pt"), model_root=tmp_path)
    assert err.value.code == "weights_invalid" and "secret_extra_tensor" not in err.value.message


@pytest.mark.slow
def test_random_vit_b16_in_openai_layout_matches_open_clips_openai_loader(tmp_path: Path) -> None:
    """A random-weight ViT-B/16 saved as OpenAI does (its keys, fp16, the three extra ints) loads through the
    service (name ViT-B-16: QuickGELU plus a warning) and through open_clip.load_openai_model; features equal."""
    torch.manual_seed(0)
    src = open_clip.create_model("ViT-B-16", pretrained=None)
    path = tmp_path / "ViT-B-16.pt"
    torch.save(_tiny_openai_state_dict(src), path)
    del src

    bb = load_backbone(BackboneSpec(model="ViT-B-16", pretrained="ViT-B-16.pt"), model_root=tmp_path)
    assert bb.activation == "quick_gelu" and bb.weights_format == "openai_state_dict" and bb.warnings
    ref = open_clip.load_openai_model(str(path), precision="fp32", device="cpu").eval()
    tokens = bb.tokenizer(TOKENS_TEXT)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        text_gap = (bb.model.encode_text(tokens) - ref.encode_text(tokens)).abs().max().item()
        image_gap = (bb.model.encode_image(images) - ref.encode_image(images)).abs().max().item()
    assert text_gap < 1e-5 and image_gap < 1e-5
