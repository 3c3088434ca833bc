"""Base-to-novel evaluation, interpolation curves and baselines (ALGORITHM.md sections 4-5).

Every number here is computed from image features encoded once per split (``EvalFeatures``) and
class heads [C, E]; a classifier is ``argmax F @ normalise(G)^T`` and its loss is
``CE(tau F normalise(G)^T, y)``.

Curves, alpha in ``alphas(step)``, for the segments zs_ft, zs_rec and ft_rec:

- classifier space: ``normalise((1 - a) G_a + a G_b)``. The zero-shot end is G_zs, whose rows are unit
  norm; so that the segment is not dominated by the larger-norm end, segments with a zero-shot end
  interpolate unit-normalised rows of both ends. ft_rec interpolates the unnormalised features, exactly
  the path the MergeTune objective samples.
- prompt space: ``ctx(a) = (1 - a) ctx_a + a ctx_b`` through the text encoder, with the embedding of
  "a photo of a" as the zero-shot end (broadcast over classes for class-specific contexts; absent when
  the context length is not 4 tokens). Novel classes of a class-specific context use its class mean.

Baselines: feature interpolation = the zs_ft classifier segment at the alpha with the best accuracy
on the (base-class) validation split, ties to the smaller validation loss then the smaller alpha; the
ensemble averages the softmax probabilities of the zero-shot and fine-tuned classifiers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mergetune.core.config import PromptLearnerSpec, alphas
from mergetune.core.evaluation.result import Baselines, Curve, FeatureInterpolation, Metrics, SplitMetrics
from mergetune.core.model.backbone import Backbone
from mergetune.core.model.features import EvalFeatures, TaskLike
from mergetune.core.model.prompts import PromptLearner, encode_template, novel_ctx, zero_shot_ctx

SEGMENTS = ("zs_ft", "zs_rec", "ft_rec")


def scores(feats: torch.Tensor, heads: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * F normalise(G)^T for one head [C, E] -> [N, C], or stacked heads [A, C, E] -> [A, N, C]."""
    h = F.normalize(heads.float(), dim=-1)
    if h.dim() == 2:
        return tau * feats @ h.t()
    return tau * torch.einsum("ne,ace->anc", feats, h)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0:
        return 0.0
    return 100.0 * int((logits.argmax(dim=-1) == labels).sum()) / labels.numel()


def ce(logits: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0:
        return 0.0
    return float(F.cross_entropy(logits.float(), labels))


def barrier(losses: list[float], alpha_values: list[float]) -> float:
    """max_a (loss(a) - [(1 - a) loss(0) + a loss(1)])."""
    l0, l1 = losses[0], losses[-1]
    return max(loss - ((1 - a) * l0 + a * l1) for loss, a in zip(losses, alpha_values, strict=True))


def curve_from_logits(
    alpha_values: list[float],
    splits: Iterable[tuple[str, torch.Tensor | Sequence[torch.Tensor], torch.Tensor]],
) -> Curve:
    """Accuracy and CE at every alpha, and the barriers, from (split, logits at each alpha, labels) for
    the splits "base" and "novel" (taken one at a time: pass a generator to hold one split's logits)."""
    out: dict[str, list[float]] = {}
    for split, lg, labels in splits:
        out[f"{split}_acc"] = [accuracy(x, labels) for x in lg]
        out[f"{split}_loss"] = [ce(x, labels) for x in lg]
    return Curve(
        alphas=list(alpha_values),
        barrier_base=barrier(out["base_loss"], alpha_values),
        barrier_novel=barrier(out["novel_loss"], alpha_values),
        **out,
    )


def _curve(
    eval_feats: EvalFeatures,
    heads_base: torch.Tensor,
    heads_novel: torch.Tensor,
    alpha_values: list[float],
    tau: float,
) -> Curve:
    def split(name: str, heads: torch.Tensor) -> tuple[str, torch.Tensor, torch.Tensor]:
        feats, labels = eval_feats[f"test_{name}"]
        return name, scores(feats, heads, tau), labels

    return curve_from_logits(
        alpha_values, (split(n, h) for n, h in (("base", heads_base), ("novel", heads_novel)))
    )


def classifier_path(g_a: torch.Tensor, g_b: torch.Tensor, alpha_values: list[float], unit_ends: bool):
    """[A, C, E] heads (1 - a) G_a + a G_b (normalised later, in ``scores``)."""
    if unit_ends:
        g_a, g_b = F.normalize(g_a.float(), dim=-1), F.normalize(g_b.float(), dim=-1)
    a = torch.tensor(alpha_values, dtype=torch.float32, device=g_a.device).view(-1, 1, 1)
    return (1 - a) * g_a.float().unsqueeze(0) + a * g_b.float().unsqueeze(0)


@dataclass
class Heads:
    """Class heads [C, E] of the three models on base and novel classes."""

    base: dict[str, torch.Tensor]
    novel: dict[str, torch.Tensor]


class PromptEvaluator:
    """Text features of a context on the base and the novel class lists (frozen, no grad)."""

    def __init__(self, backbone: Backbone, task: TaskLike, spec: PromptLearnerSpec, ctx_like: torch.Tensor):
        self.base = PromptLearner(backbone, task.base_classnames, ctx_like, spec).requires_grad_(False)
        self.novel = PromptLearner(backbone, task.novel_classnames, novel_ctx(ctx_like), spec).requires_grad_(
            False
        )

    @torch.no_grad()
    def features(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        ctx = ctx.to(self.base.ctx.device).float()
        return self.base.text_features(ctx).float(), self.novel.text_features(novel_ctx(ctx)).float()


def build_heads(
    backbone: Backbone,
    task: TaskLike,
    evaluator: PromptEvaluator,
    ctx_ft: torch.Tensor,
    ctx_rec: torch.Tensor,
) -> Heads:
    zs_b = encode_template(backbone, task.base_classnames, task.template)
    zs_n = encode_template(backbone, task.novel_classnames, task.template)
    ft_b, ft_n = evaluator.features(ctx_ft)
    rec_b, rec_n = evaluator.features(ctx_rec)
    return Heads(base={"zs": zs_b, "ft": ft_b, "rec": rec_b}, novel={"zs": zs_n, "ft": ft_n, "rec": rec_n})


def metrics_of(eval_feats: EvalFeatures, head_base: torch.Tensor, head_novel: torch.Tensor, tau: float):
    fb, yb = eval_feats["test_base"]
    fn, yn = eval_feats["test_novel"]
    return SplitMetrics.of(
        accuracy(scores(fb, head_base, tau), yb), accuracy(scores(fn, head_novel, tau), yn)
    )


def classifier_curves(eval_feats: EvalFeatures, heads: Heads, alpha_values: list[float], tau: float):
    curves = {}
    for seg in SEGMENTS:
        a, b = seg.split("_")
        unit = a == "zs"
        hb = classifier_path(heads.base[a], heads.base[b], alpha_values, unit)
        hn = classifier_path(heads.novel[a], heads.novel[b], alpha_values, unit)
        curves[seg] = _curve(eval_feats, hb, hn, alpha_values, tau)
    return curves


@torch.no_grad()
def prompt_curves(
    backbone: Backbone,
    evaluator: PromptEvaluator,
    eval_feats: EvalFeatures,
    ctx_ft: torch.Tensor,
    ctx_rec: torch.Tensor,
    alpha_values: list[float],
    tau: float,
) -> dict[str, Curve]:
    ends: dict[str, torch.Tensor] = {"ft": ctx_ft.float(), "rec": ctx_rec.float()}
    zs = zero_shot_ctx(backbone, ctx_ft.shape[-2])
    if zs is not None:
        ends["zs"] = zs.expand_as(ctx_ft).clone() if ctx_ft.dim() == 3 else zs
    curves = {}
    for seg in SEGMENTS:
        a, b = seg.split("_")
        if a not in ends:
            continue
        hb, hn = [], []
        for alpha in alpha_values:
            g_b, g_n = evaluator.features((1 - alpha) * ends[a] + alpha * ends[b])
            hb.append(g_b)
            hn.append(g_n)
        curves[seg] = _curve(eval_feats, torch.stack(hb), torch.stack(hn), alpha_values, tau)
    return curves


def feature_interpolation(eval_feats: EvalFeatures, heads: Heads, alpha_values: list[float], tau: float):
    fv, yv = eval_feats["val"]
    hb = classifier_path(heads.base["zs"], heads.base["ft"], alpha_values, True)
    hn = classifier_path(heads.novel["zs"], heads.novel["ft"], alpha_values, True)
    lg = scores(fv, hb, tau)
    keys = [(-accuracy(x, yv), ce(x, yv), a) for x, a in zip(lg, alpha_values, strict=True)]
    best = min(range(len(alpha_values)), key=lambda i: keys[i])
    m = metrics_of(eval_feats, hb[best], hn[best], tau)
    return FeatureInterpolation(alpha=alpha_values[best], base=m.base, novel=m.novel, hm=m.hm)


def ensemble(eval_feats: EvalFeatures, heads: Heads, tau: float) -> SplitMetrics:
    """Mean of the softmax probabilities of the zero-shot and fine-tuned classifiers."""
    acc = {}
    for split, h in (("base", heads.base), ("novel", heads.novel)):
        feats, labels = eval_feats[f"test_{split}"]
        p = (scores(feats, h["zs"], tau).softmax(-1) + scores(feats, h["ft"], tau).softmax(-1)) / 2
        acc[split] = accuracy(p, labels)
    return SplitMetrics.of(acc["base"], acc["novel"])


@dataclass
class Evaluation:
    metrics: Metrics
    baselines: Baselines
    curves: dict[str, dict[str, Curve]]


def evaluate(
    backbone: Backbone,
    task: TaskLike,
    ctx_ft: torch.Tensor,
    ctx_rec: torch.Tensor,
    *,
    spec: PromptLearnerSpec,
    eval_feats: EvalFeatures | None = None,
    curve_step: float = 0.1,
    prompt_space: bool = True,
    timer: Callable[[str], None] | None = None,
) -> Evaluation:
    """Metrics of the zero-shot, fine-tuned and recovered models, curves and baselines."""
    tau = backbone.logit_scale
    eval_feats = eval_feats or EvalFeatures(backbone, task)
    if timer:
        timer("eval_features")
    evaluator = PromptEvaluator(backbone, task, spec, ctx_ft)
    heads = build_heads(backbone, task, evaluator, ctx_ft, ctx_rec)
    metrics = Metrics(
        zero_shot=metrics_of(eval_feats, heads.base["zs"], heads.novel["zs"], tau),
        fine_tuned=metrics_of(eval_feats, heads.base["ft"], heads.novel["ft"], tau),
        recovered=metrics_of(eval_feats, heads.base["rec"], heads.novel["rec"], tau),
    )
    alpha_values = alphas(curve_step)
    baselines = Baselines(
        feature_interpolation=feature_interpolation(eval_feats, heads, alpha_values, tau),
        ensemble=ensemble(eval_feats, heads, tau),
    )
    curves = {"classifier": classifier_curves(eval_feats, heads, alpha_values, tau)}
    if prompt_space:
        curves["prompt"] = prompt_curves(backbone, evaluator, eval_feats, ctx_ft, ctx_rec, alpha_values, tau)
    if timer:
        timer("evaluation")
    return Evaluation(metrics=metrics, baselines=baselines, curves=curves)
