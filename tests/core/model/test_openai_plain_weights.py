"""Plain state dicts in OpenAI's layout, without OpenAI's three extra ints (what
``torch.save(model.state_dict())`` gives for OpenAI's or CoOp's CLIP): kept in fp16 as OpenAI's code
keeps them, they are built with QuickGELU, the activation they were trained with; in fp32 the file
cannot tell them from open_clip's own weights, so the GELU name builds GELU with a warning that names
the ``-quickgelu`` model. Random-weight models written in OpenAI's layout; features compared with
open_clip's own OpenAI loader."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch

from mergetune.core.config import BackboneSpec
from mergetune.core.model.backbone import load_backbone

TOKENS_TEXT = ["a photo of a forest.", "a satellite photo of annual crop land.", "x"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _plain(model: torch.nn.Module, *, fp16: bool) -> dict[str, torch.Tensor]:
    """OpenAI's keys (open_clip's CLIP keys), none of OpenAI's extra ints."""
    return {
        k: (v.half() if fp16 and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()
    }


def _with_ints(sd: dict[str, torch.Tensor], resolution: int) -> dict[str, torch.Tensor]:
    return {
        **sd,
        "input_resolution": torch.tensor(resolution),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(49408),
    }


def test_tiny_plain_fp16_state_dict_is_built_like_openais(tmp_path: Path) -> None:
    src = load_backbone(BackboneSpec(model="tiny-test", pretrained="random:3"))
    torch.save(_plain(src.model, fp16=True), tmp_path / "plain16.pt")
    torch.save(_with_ints(_plain(src.model, fp16=True), 32), tmp_path / "openai.pt")
    plain = load_backbone(BackboneSpec(model="tiny-test", pretrained="plain16.pt"), model_root=tmp_path)
    openai = load_backbone(BackboneSpec(model="tiny-test", pretrained="openai.pt"), model_root=tmp_path)
    assert plain.activation == "quick_gelu" and plain.weights_format == "openai_state_dict"
    assert len(plain.warnings) == 1 and "QuickGELU" in plain.warnings[0]
    tokens = plain.tokenizer(TOKENS_TEXT)
    with torch.no_grad():
        assert torch.equal(plain.model.encode_text(tokens), openai.model.encode_text(tokens))


def test_tiny_plain_fp32_state_dict_without_a_quickgelu_twin_is_built_as_named(tmp_path: Path) -> None:
    src = load_backbone(BackboneSpec(model="tiny-test", pretrained="random:4"))
    torch.save(_plain(src.model, fp16=False), tmp_path / "plain32.pt")
    bb = load_backbone(BackboneSpec(model="tiny-test", pretrained="plain32.pt"), model_root=tmp_path)
    assert bb.activation == "gelu" and bb.weights_format == "state_dict" and bb.warnings == []


@pytest.fixture(scope="module")
def vit_b16_files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random ViT-B/16 written three ways: plain fp16, plain fp32 (the same values), and OpenAI's own
    (fp16 + ints)."""
    root = tmp_path_factory.mktemp("vitb16")
    torch.manual_seed(0)
    src = open_clip.create_model("ViT-B-16", pretrained=None)
    torch.save(_plain(src, fp16=True), root / "plain16.pt")
    rounded = {k: v.float() if v.is_floating_point() else v for k, v in _plain(src, fp16=True).items()}
    torch.save(rounded, root / "plain32.pt")  # OpenAI's weights cast to fp32 (as CoOp's fp32 runs do)
    torch.save(_with_ints(_plain(src, fp16=True), 224), root / "openai.pt")
    return root


def _text_gap(bb: object, ref: torch.nn.Module) -> float:
    tokens = bb.tokenizer(TOKENS_TEXT)  # type: ignore[attr-defined]
    with torch.no_grad():
        return (bb.model.encode_text(tokens) - ref.encode_text(tokens)).abs().max().item()  # type: ignore[attr-defined]


@pytest.mark.slow
def test_vit_b16_plain_state_dicts_get_quickgelu_or_a_warning_naming_it(vit_b16_files: Path) -> None:
    root = vit_b16_files
    ref = open_clip.load_openai_model(str(root / "openai.pt"), precision="fp32", device="cpu").eval()

    fp16 = load_backbone(BackboneSpec(model="ViT-B-16", pretrained="plain16.pt"), model_root=root)
    assert fp16.activation == "quick_gelu" and fp16.warnings
    assert _text_gap(fp16, ref) < 1e-5  # the same model as OpenAI's own code builds
    del fp16

    fp32 = load_backbone(BackboneSpec(model="ViT-B-16", pretrained="plain32.pt"), model_root=root)
    assert fp32.activation == "gelu" and fp32.weights_format == "state_dict"
    assert len(fp32.warnings) == 1 and "'ViT-B-16-quickgelu'" in fp32.warnings[0]
    assert _text_gap(fp32, ref) > 1e-3  # GELU: measurably another model, hence the warning
    del fp32

    twin = load_backbone(BackboneSpec(model="ViT-B-16-quickgelu", pretrained="plain32.pt"), model_root=root)
    assert twin.activation == "quick_gelu" and twin.warnings == []
    assert _text_gap(twin, ref) < 1e-5
