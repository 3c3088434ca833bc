"""mergetune.core.method.objectives: hand-computed values, the step-0 parity, the surrogate identity, and the efficient
loss against a naive reference-style computation (value and gradient)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mergetune.core.config import BackboneSpec, Hyperparameters, LossType, PromptLearnerSpec, path_points
from mergetune.core.method.objectives import (
    LossWeights,
    classification_loss,
    path_loss,
    total_loss,
    zero_shot_surrogate,
)
from mergetune.core.model.backbone import load_backbone
from mergetune.core.model.prompts import PromptLearner, encode_template

# Fixed small tensors: F (unit rows), labels, learned G, anchor, fine-tuned G; tau = 2.
FEATS = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
LABELS = torch.tensor([0, 1])
G = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
ANCHOR = torch.eye(2)
G_FT = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
TAU = 2.0


def test_ce_by_hand():
    # n(G) = [[1, 0], [s, s]], s = 1/sqrt(2). Row 0 logits [2, 2s] -> log(1 + e^(2s - 2));
    # row 1 logits [0, 2s] -> log(1 + e^(-2s)). Mean = 0.3300846500601321.
    s = 1 / math.sqrt(2)
    by_hand = (math.log1p(math.exp(2 * s - 2)) + math.log1p(math.exp(-2 * s))) / 2
    assert by_hand == pytest.approx(0.3300846500601321, abs=1e-12)
    assert classification_loss(FEATS, LABELS, G, TAU).item() == pytest.approx(0.3300846500601321, abs=1e-6)


def test_cosine_and_l2_surrogates_by_hand():
    # cos rows: 1 and s -> 1 - (1 + s)/2 = 0.14644660940672627
    assert zero_shot_surrogate(G, ANCHOR, LossType.cosine).item() == pytest.approx(
        0.14644660940672627, abs=1e-6
    )
    # |n(G) - A| rows: 0 and sqrt(s^2 + (1 - s)^2) = 0.7653668647 -> mean 0.3826834323650897 (not squared)
    assert zero_shot_surrogate(G, ANCHOR, LossType.l2).item() == pytest.approx(0.3826834323650897, abs=1e-6)


def test_path_term_by_hand():
    # K = 2 -> t = 0.25, 0.75; heads (1 - t) G_ft + t G, normalised, then CE; value from an independent
    # numpy computation: 0.8783263929721364.
    assert path_points(2) == [0.25, 0.75]
    got = path_loss(FEATS, LABELS, G, G_FT, TAU, [0.25, 0.75])
    assert got.item() == pytest.approx(0.8783263929721364, abs=1e-6)
    # t = 0.25 alone, by hand: heads [[0.5, 0.75], [1.0, 0.25]] (rows (1-t)G_ft + tG).
    h = F.normalize(torch.tensor([[0.5, 0.75], [1.0, 0.25]]), dim=-1)
    lg = TAU * FEATS @ h.t()
    assert path_loss(FEATS, LABELS, G, G_FT, TAU, [0.25]).item() == pytest.approx(
        F.cross_entropy(lg, LABELS).item(), abs=1e-6
    )


def test_total_mergetune_by_hand():
    w = LossWeights(w_zs=10.0, loss_type=LossType.cosine, w_lmc=1.0, num_samples=2, path_term=True)
    parts = total_loss(w, FEATS, LABELS, G, TAU, anchor=ANCHOR, ft_feats=G_FT)
    # 0.3300846500601321 + 10 * 0.14644660940672627 + 0.8783263929721364
    assert parts.total.item() == pytest.approx(2.6728771370995315, abs=1e-5)
    assert parts.ce.item() == pytest.approx(0.3300846500601321, abs=1e-6)
    off = total_loss(LossWeights(w_zs=10.0, w_lmc=1.0, num_samples=2, path_term=False), FEATS, LABELS, G, TAU,
                     anchor=ANCHOR, ft_feats=G_FT)  # fmt: skip
    assert off.total.item() == pytest.approx(0.3300846500601321 + 1.4644660940672627, abs=1e-5)
    assert off.lmc.item() == 0.0
    coop = total_loss(LossWeights.coop(), FEATS, LABELS, G, TAU)
    assert coop.total.item() == pytest.approx(0.3300846500601321, abs=1e-6)


def test_weights_from_hyperparameters():
    w = LossWeights.mergetune(Hyperparameters())
    assert (w.w_zs, w.w_lmc, w.num_samples, w.path_term, w.loss_type) == (10.0, 1.0, 5, True, LossType.cosine)
    assert path_points(5) == pytest.approx([0.1, 0.3, 0.5, 0.7, 0.9])


def test_surrogate_identity_for_unit_rows():
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(7, 16, generator=g), dim=-1)
    b = F.normalize(torch.randn(7, 16, generator=g), dim=-1)
    one_minus_cos = 1 - (a * b).sum(-1)
    half_sq = (a - b).square().sum(-1) / 2
    assert torch.allclose(one_minus_cos, half_sq, atol=1e-6)
    # the cosine surrogate is the mean of |a - b|^2 / 2, the l2 one the mean of |a - b|
    assert zero_shot_surrogate(a, b, LossType.cosine).item() == pytest.approx(half_sq.mean().item(), abs=1e-6)
    assert zero_shot_surrogate(a, b, LossType.l2).item() == pytest.approx(
        (2 * half_sq).sqrt().mean().item(), abs=1e-6
    )


@pytest.fixture(scope="module")
def bb():
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:2"))


NAMES = ["cat", "dog", "red square", "blue circle", "green star"]


def test_step0_parity_path_term_equals_ce(bb):
    learner = PromptLearner(bb, NAMES, None, PromptLearnerSpec())
    pixels = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    feats = bb.encode_images(pixels)
    labels = torch.tensor([0, 1, 2, 3, 4, 0])
    gw = learner.text_features()
    g_ft = gw.detach().clone()
    ce = classification_loss(feats, labels, gw, bb.logit_scale)
    for t in path_points(5):
        assert path_loss(feats, labels, gw, g_ft, bb.logit_scale, [t]).item() == pytest.approx(
            ce.item(), abs=1e-5
        )


def _naive_reference_loss(bb, learner, ctx_ft, pixels, labels, anchor_template, hp):
    """Reference-style: image encoder run 1 + K times, G_ft and G_zs re-encoded every step, learned
    prompts encoded twice, 77-token text path, per-t loop."""
    tau = bb.model.logit_scale.exp()

    def img():
        return F.normalize(bb.model.encode_image(pixels), dim=-1)

    gw = learner.text_features(trim=False)
    loss = F.cross_entropy(tau * img() @ F.normalize(gw, dim=-1).t(), labels)
    g_zs = F.normalize(bb.model.encode_text(bb.tokenizer([anchor_template.format(n) for n in NAMES])), dim=-1)
    cos = F.cosine_similarity(F.normalize(gw, dim=-1), g_zs, dim=-1)
    loss = loss + hp.w_zs * (1.0 - cos.mean())
    gw2 = learner.text_features(trim=False)  # encoded a second time, as the reference does
    k_losses = []
    for t in path_points(hp.num_samples):
        with torch.no_grad():
            g_ft = learner.text_features(ctx_ft, trim=False)
        head = F.normalize((1 - t) * g_ft + t * gw2, dim=-1)
        k_losses.append(F.cross_entropy(tau * img() @ head.t(), labels))
    return loss + hp.w_lmc * torch.stack(k_losses).mean()


def test_efficient_loss_equals_naive_reference(bb):
    hp = Hyperparameters()
    g = torch.Generator().manual_seed(3)
    ctx_ft = PromptLearner(bb, NAMES, None, PromptLearnerSpec()).ctx.detach() + 0.3 * torch.randn(
        4, 64, generator=g
    )
    ctx = ctx_ft + 0.2 * torch.randn(4, 64, generator=g)
    pixels = torch.randn(8, 3, 32, 32, generator=g)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    template = "a photo of a {}."

    naive_learner = PromptLearner(bb, NAMES, ctx.clone(), PromptLearnerSpec(ctx_init=None))
    naive = _naive_reference_loss(bb, naive_learner, ctx_ft, pixels, labels, template, hp)
    naive.backward()

    fast_learner = PromptLearner(bb, NAMES, ctx.clone(), PromptLearnerSpec(ctx_init=None))
    feats = bb.encode_images(pixels)  # once
    anchor = encode_template(bb, NAMES, template)  # once per job
    with torch.no_grad():
        g_ft = PromptLearner(
            bb, NAMES, ctx_ft, PromptLearnerSpec(ctx_init=None)
        ).text_features()  # once per job
    parts = total_loss(
        LossWeights.mergetune(hp), feats, labels, fast_learner.text_features(), bb.logit_scale, anchor=anchor,
        ft_feats=g_ft,
    )  # fmt: skip
    parts.total.backward()
    assert parts.total.item() == pytest.approx(naive.item(), abs=1e-5)
    assert parts.lmc.item() > 0 and parts.zs.item() > 0
    assert torch.allclose(fast_learner.ctx.grad, naive_learner.ctx.grad, atol=1e-5, rtol=1e-4)
    assert naive_learner.ctx.grad.abs().max() > 1e-4
