"""mergetune.core.model.prompts: the learner reproduces model.encode_text; EOT trimming is exact."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mergetune.core.config import BackboneSpec, PromptLearnerSpec
from mergetune.core.errors import ConfigError
from mergetune.core.model.backbone import load_backbone
from mergetune.core.model.prompts import PromptLearner, encode_template, init_ctx, novel_ctx, zero_shot_ctx

NAMES = ["cat", "golden retriever", "red_square", "a very long class name with many words"]
FORMATS = {"end": "a photo of a {}.", "middle": "a photo {} of a.", "front": "{} a photo of a."}


@pytest.fixture(scope="module")
def bb():
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:1"))


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True])
def test_init_context_reproduces_encode_text(bb, position, csc):
    spec = PromptLearnerSpec(class_token_position=position, csc=csc)
    learner = PromptLearner(bb, NAMES, None, spec)
    assert learner.ctx.shape == ((len(NAMES), 4, 64) if csc else (4, 64))
    texts = [FORMATS[position].format(n.replace("_", " ")) for n in NAMES]
    expected = bb.model.encode_text(bb.tokenizer(texts))
    with torch.no_grad():
        got = learner.text_features()
    assert got.shape == (len(NAMES), bb.embed_dim)
    assert torch.allclose(got, expected, atol=1e-5), (got - expected).abs().max()


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_trimmed_path_equals_full_77_token_path(bb, position):
    ctx = torch.randn(4, 64, generator=torch.Generator().manual_seed(0)) * 0.5
    learner = PromptLearner(bb, NAMES, ctx, PromptLearnerSpec(class_token_position=position, ctx_init=None))
    assert learner.trim_len < 77
    # the longest prompt's EOT is the last kept position
    assert learner.trim_len == int(learner.tokens.argmax(dim=-1).max()) + 1
    trimmed = learner.text_features()
    full = learner.text_features(trim=False)
    assert torch.allclose(trimmed, full, atol=1e-5)
    (g1,) = torch.autograd.grad(trimmed.square().sum(), learner.ctx)
    (g2,) = torch.autograd.grad(full.square().sum(), learner.ctx)
    assert torch.allclose(g1, g2, atol=1e-5)


def test_gradient_reaches_only_ctx(bb):
    learner = PromptLearner(bb, NAMES[:2], None, PromptLearnerSpec())
    learner.text_features().sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in bb.model.parameters())


def test_dassl_buffers_shapes(bb):
    learner = PromptLearner(bb, NAMES, None, PromptLearnerSpec())
    prefix, suffix = learner.dassl_buffers()
    assert prefix.shape == (len(NAMES), 1, 64)
    assert suffix.shape == (len(NAMES), 77 - 1 - 4, 64)
    sos = bb.model.token_embedding.weight[bb.tokenizer(["x"])[0, 0]]
    assert torch.equal(prefix[0, 0], sos)


def test_init_ctx_is_the_embedding_of_a_photo_of_a(bb):
    ctx = init_ctx(bb, PromptLearnerSpec())
    ids = bb.tokenizer(["a photo of a"])[0, 1:5]
    assert torch.equal(ctx, bb.model.token_embedding.weight[ids])
    assert torch.equal(zero_shot_ctx(bb, 4), ctx)
    assert zero_shot_ctx(bb, 16) is None
    rnd = init_ctx(bb, PromptLearnerSpec(n_ctx=16, ctx_init=None, csc=True), n_cls=3, seed=5)
    assert rnd.shape == (3, 16, 64)
    assert rnd.std().item() == pytest.approx(0.02, rel=0.1)
    assert torch.equal(
        rnd, init_ctx(bb, PromptLearnerSpec(n_ctx=16, ctx_init=None, csc=True), n_cls=3, seed=5)
    )


def test_novel_ctx():
    generic = torch.ones(4, 8)
    assert novel_ctx(generic) is generic
    csc = torch.arange(2 * 4 * 8, dtype=torch.float32).view(2, 4, 8)
    assert torch.equal(novel_ctx(csc), csc.mean(0))


def test_encode_template_is_normalised_encode_text(bb):
    g = encode_template(bb, ["cat", "dog_house"], "a photo of a {}, a type of pet.")
    ref = F.normalize(
        bb.model.encode_text(
            bb.tokenizer(["a photo of a cat, a type of pet.", "a photo of a dog house, a type of pet."])
        ),
        dim=-1,
    )
    assert torch.allclose(g, ref, atol=1e-6)


def test_bad_inputs_fail_fast(bb):
    with pytest.raises(ConfigError) as e:
        PromptLearner(bb, NAMES, torch.zeros(4, 512))
    assert e.value.param == "ctx" and "512" in str(e.value) and "64" in str(e.value)
    with pytest.raises(ConfigError) as e:
        PromptLearner(bb, [], torch.zeros(4, 64))
    assert e.value.param == "classnames"
    with pytest.raises(ConfigError) as e:
        PromptLearner(bb, NAMES, torch.zeros(3, 4, 64))  # CSC with the wrong class count
    assert e.value.param == "classnames"
    with pytest.raises(ConfigError) as e:
        init_ctx(bb, PromptLearnerSpec(n_ctx=16))  # "a photo of a" is 4 tokens
    assert e.value.param == "prompt.n_ctx"
    with pytest.raises(ConfigError):
        encode_template(bb, [], "a photo of a {}.")
