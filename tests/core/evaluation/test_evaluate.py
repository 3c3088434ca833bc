"""mergetune.core.evaluation.evaluate: metrics, barrier heights, curves (classifier and prompt space), baselines."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from core_fakes import FakeTask

from mergetune.core.config import BackboneSpec, PromptLearnerSpec
from mergetune.core.evaluation.evaluate import (
    Heads,
    accuracy,
    barrier,
    classifier_curves,
    ensemble,
    evaluate,
    feature_interpolation,
    scores,
)
from mergetune.core.evaluation.result import harmonic_mean
from mergetune.core.model import features as features_mod
from mergetune.core.model.backbone import load_backbone
from mergetune.core.model.features import EvalFeatures
from mergetune.core.model.prompts import PromptLearner, encode_template, init_ctx


@pytest.fixture(scope="module")
def bb():
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:9"))


class HandFeats:
    def __init__(self, splits):
        self.splits = splits

    def __getitem__(self, name):
        return self.splits[name]


def test_accuracy_harmonic_mean_and_barrier_by_hand():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(200 / 3)
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(0.0, 0.0) == 0.0
    # losses 1.0 -> 2.0 with a bump of 0.75 above the chord at alpha 0.5
    assert barrier([1.0, 2.25, 2.0], [0.0, 0.5, 1.0]) == pytest.approx(0.75)
    assert barrier([2.0, 1.0, 0.5], [0.0, 0.5, 1.0]) == pytest.approx(0.0)  # convex: the ends bound it


def _hand_setup():
    # 2-d features; base classes 0/1 along x/y. Zero-shot head is right on base, fine-tuned head swaps
    # class 1 past class 0 (class-1 images go to class 0); on novel, zero-shot is right and fine-tuned wrong.
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    y = torch.tensor([0, 1, 0, 1])
    zs = torch.eye(2)
    ft = torch.tensor([[1.0, 0.0], [1.0, -0.2]])
    heads = Heads(base={"zs": zs, "ft": ft, "rec": zs}, novel={"zs": zs, "ft": ft.flip(0), "rec": zs})
    feats = HandFeats({"test_base": (f, y), "test_novel": (f, y), "val": (f[:2], y[:2])})
    return feats, heads


def test_ensemble_averages_probabilities():
    feats, heads = _hand_setup()
    tau = 10.0
    m = ensemble(feats, heads, tau)
    f, y = feats["test_base"]
    p = (scores(f, heads.base["zs"], tau).softmax(-1) + scores(f, heads.base["ft"], tau).softmax(-1)) / 2
    assert m.base == pytest.approx(accuracy(p, y))
    # image (0, 1), class 1: zs probs ~[0, 1]; ft logits [0, -1.96] -> probs [0.876, 0.124]; mean -> class 1
    assert m.base == 100.0
    assert m.hm == pytest.approx(harmonic_mean(m.base, m.novel))


def test_feature_interpolation_picks_best_validation_alpha():
    feats, heads = _hand_setup()
    alpha_values = [0.0, 0.5, 1.0]
    fi = feature_interpolation(feats, heads, alpha_values, 10.0)
    # alpha 0 (zero-shot) and 0.5 are both 100% on val; ties go to the lower val loss, which is alpha 0
    # (the fine-tuned rows pull class 1 towards class 0 and raise the loss).
    assert fi.alpha == 0.0
    assert (fi.base, fi.novel) == (100.0, 100.0)


def test_classifier_curve_endpoints_and_unit_ends():
    feats, heads = _hand_setup()
    curves = classifier_curves(feats, heads, [0.0, 0.5, 1.0], 10.0)
    zs_ft = curves["zs_ft"]
    f, y = feats["test_base"]
    assert zs_ft.base_acc[0] == accuracy(scores(f, heads.base["zs"], 10.0), y) == 100.0
    assert zs_ft.base_acc[-1] == accuracy(scores(f, heads.base["ft"], 10.0), y) == 50.0
    assert zs_ft.base_loss[-1] == pytest.approx(float(F.cross_entropy(scores(f, heads.base["ft"], 10.0), y)))
    # midpoint of unit rows: class 1 head = normalise((0, 1)/2 + (1, -0.2)/|(1, -0.2)| / 2)
    h1 = F.normalize(torch.tensor([0.0, 1.0]) / 2 + F.normalize(torch.tensor([1.0, -0.2]), dim=0) / 2, dim=0)
    h = torch.stack([torch.tensor([1.0, 0.0]), h1])
    assert zs_ft.base_loss[1] == pytest.approx(float(F.cross_entropy(10.0 * f @ h.t(), y)), abs=1e-6)
    assert zs_ft.barrier_base == pytest.approx(
        max(
            loss - ((1 - a) * zs_ft.base_loss[0] + a * zs_ft.base_loss[-1])
            for loss, a in zip(zs_ft.base_loss, [0, 0.5, 1], strict=True)
        )
    )
    assert curves["zs_rec"].base_acc == [100.0, 100.0, 100.0]


@pytest.fixture(scope="module")
def evaluated(bb):
    task = FakeTask()
    g = torch.Generator().manual_seed(0)
    ctx_ft = init_ctx(bb, PromptLearnerSpec()) + 0.5 * torch.randn(4, 64, generator=g)
    ctx_rec = ctx_ft + 0.2 * torch.randn(4, 64, generator=g)
    ev_feats = EvalFeatures(bb, task)
    ev = evaluate(bb, task, ctx_ft, ctx_rec, spec=PromptLearnerSpec(), eval_feats=ev_feats, curve_step=0.25)
    return task, ctx_ft, ctx_rec, ev_feats, ev


def test_metrics_match_direct_computation(bb, evaluated):
    task, ctx_ft, ctx_rec, ev_feats, ev = evaluated
    tau = bb.logit_scale
    fb, yb = ev_feats["test_base"]
    fn, yn = ev_feats["test_novel"]
    zs_b = encode_template(bb, task.base_classnames, task.template)
    assert ev.metrics.zero_shot.base == accuracy(scores(fb, zs_b, tau), yb)
    with torch.no_grad():
        ft_n = PromptLearner(bb, task.novel_classnames, ctx_ft).text_features()
        rec_b = PromptLearner(bb, task.base_classnames, ctx_rec).text_features()
    assert ev.metrics.fine_tuned.novel == accuracy(scores(fn, ft_n, tau), yn)
    assert ev.metrics.recovered.base == accuracy(scores(fb, rec_b, tau), yb)
    m = ev.metrics.recovered
    assert m.hm == pytest.approx(harmonic_mean(m.base, m.novel))


def test_curves_cover_both_spaces_and_their_endpoints(bb, evaluated):
    task, ctx_ft, ctx_rec, ev_feats, ev = evaluated
    assert set(ev.curves) == {"classifier", "prompt"}
    for space in ("classifier", "prompt"):
        assert set(ev.curves[space]) == {"zs_ft", "zs_rec", "ft_rec"}
        for c in ev.curves[space].values():
            assert c.alphas == [0.0, 0.25, 0.5, 0.75, 1.0]
            assert len(c.base_acc) == len(c.novel_loss) == 5
            assert c.barrier_base >= -1e-6 and c.barrier_novel >= -1e-6
    m = ev.metrics
    for space in ("classifier", "prompt"):
        ft_rec = ev.curves[space]["ft_rec"]
        assert (ft_rec.base_acc[0], ft_rec.novel_acc[0]) == (m.fine_tuned.base, m.fine_tuned.novel)
        assert (ft_rec.base_acc[-1], ft_rec.novel_acc[-1]) == (m.recovered.base, m.recovered.novel)
    cls = ev.curves["classifier"]["zs_ft"]
    assert (cls.base_acc[0], cls.novel_acc[0]) == (m.zero_shot.base, m.zero_shot.novel)
    # prompt space: the zero-shot end is the "a photo of a" context, i.e. the prompt "a photo of a <name>."
    fb, yb = ev_feats["test_base"]
    photo = bb.encode_text([f"a photo of a {n}." for n in task.base_classnames])
    assert ev.curves["prompt"]["zs_ft"].base_acc[0] == accuracy(scores(fb, photo, bb.logit_scale), yb)
    assert ev.curves["prompt"]["zs_ft"].base_loss[0] == pytest.approx(
        float(F.cross_entropy(scores(fb, photo, bb.logit_scale), yb)), abs=1e-4
    )
    fi = ev.baselines.feature_interpolation
    assert fi.alpha in cls.alphas
    i = cls.alphas.index(fi.alpha)
    assert (fi.base, fi.novel) == (cls.base_acc[i], cls.novel_acc[i])


def test_test_features_are_computed_once_per_split(bb, monkeypatch):
    task = FakeTask()
    calls = []
    real = features_mod.encode_records
    monkeypatch.setattr(
        features_mod, "encode_records", lambda b, s, r, **k: calls.append(len(r)) or real(b, s, r, **k)
    )
    ctx = init_ctx(bb, PromptLearnerSpec())
    evaluate(bb, task, ctx, ctx, spec=PromptLearnerSpec(), curve_step=0.5)
    assert sorted(calls) == sorted([len(task.test_base), len(task.test_novel), len(task.val)])


def test_class_specific_context_and_long_context(bb):
    task = FakeTask()
    csc = init_ctx(bb, PromptLearnerSpec(csc=True), n_cls=3)
    ev = evaluate(bb, task, csc, csc, spec=PromptLearnerSpec(csc=True), curve_step=0.5)
    assert set(ev.curves["prompt"]) == {"zs_ft", "zs_rec", "ft_rec"}
    long_ctx = init_ctx(bb, PromptLearnerSpec(n_ctx=8, ctx_init=None))
    ev = evaluate(
        bb, task, long_ctx, long_ctx, spec=PromptLearnerSpec(n_ctx=8, ctx_init=None), curve_step=0.5
    )
    assert set(ev.curves["prompt"]) == {"ft_rec"}  # no "a photo of a" end for 8 tokens
    assert math.isfinite(ev.curves["prompt"]["ft_rec"].barrier_base)
