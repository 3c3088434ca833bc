"""Evaluation of MMA adapters (ALGORITHM.md section 6c): zero-shot, fine-tuned and recovered adapters on the
base / novel test splits, interpolation curves in adapter-parameter and feature space, the naive baselines,
and validation accuracy during training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mergetune.core.config import alphas
from mergetune.core.evaluation.evaluate import accuracy, barrier
from mergetune.core.evaluation.result import Baselines, Curve, FeatureInterpolation, Metrics, SplitMetrics
from mergetune.core.model.adapters import MMAAdapters, MMAModel, backbone_widths, prefixes_of
from mergetune.core.model.features import TaskLike, labels_of
from mergetune.core.model.prompts import encode_template


@torch.no_grad()
def val_accuracy(
    mma: MMAModel, adapters: MMAAdapters, val: tuple[torch.Tensor, torch.Tensor]
) -> float | None:
    """Top-1 (%) on validation prefixes with text features computed now (never a cache from an earlier
    evaluation: the reference's stale cache is not copied)."""
    prefix, labels = val
    if labels.numel() == 0:
        return None
    text = F.normalize(mma.text_features(adapters).float(), dim=-1)
    feats = mma.eval_image_features(prefix, adapters)
    return accuracy(mma.backbone.logit_scale * feats @ text.T, labels)


@dataclass
class MMAEvaluation:
    """Per split (base / novel / val): normalised image features and text heads of each model."""

    metrics: Metrics
    baselines: Baselines
    curves: dict[str, dict[str, Curve]]


def _split_heads(
    mma: MMAModel, adapters: MMAAdapters | None, prefix: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    with torch.no_grad():
        return mma.text_features(adapters, prefix=prefix).float()


def _acc_loss(
    feats: torch.Tensor, heads: torch.Tensor, labels: torch.Tensor, tau: float
) -> tuple[float, float]:
    lg = tau * feats @ F.normalize(heads, dim=-1).T
    return accuracy(lg, labels), float(F.cross_entropy(lg, labels))


def _curve(points: list[dict[str, tuple[float, float]]], al: list[float]) -> Curve:
    bl = [p["base"][1] for p in points]
    nl = [p["novel"][1] for p in points]
    return Curve(
        alphas=al,
        base_acc=[p["base"][0] for p in points],
        novel_acc=[p["novel"][0] for p in points],
        base_loss=bl,
        novel_loss=nl,
        barrier_base=barrier(bl, al),
        barrier_novel=barrier(nl, al),
    )


def evaluate_mma(
    mma: MMAModel,
    task: TaskLike,
    ft: Mapping[str, torch.Tensor],
    rec: Mapping[str, torch.Tensor],
    *,
    curve_step: float = 0.1,
) -> MMAEvaluation:
    """Zero-shot (plain backbone, dataset template), fine-tuned and recovered adapters on base / novel
    test splits; interpolation curves in adapter-parameter space and in feature space; the naive
    baselines (feature interpolation chosen on validation, output ensemble)."""
    bb = mma.backbone
    tau = bb.logit_scale
    w = backbone_widths(bb)
    al = alphas(curve_step)

    def adapters_of(tensors: Mapping[str, torch.Tensor] | None) -> MMAAdapters:
        a = MMAAdapters(mma.layout, w["text_layers"], w["visual_layers"]).to(bb.device)
        if tensors is None:
            return a.zero_()
        a.load_tensors(tensors)
        return a.eval()

    ends = {"zs": None, "ft": ft, "rec": rec}
    splits = {
        "base": (list(task.test_base), list(task.base_classnames)),
        "novel": (list(task.test_novel), list(task.novel_classnames)),
        "val": (list(task.val), list(task.base_classnames)),
    }
    data: dict[str, dict[str, Any]] = {}
    for name, (recs, names) in splits.items():
        prefix = prefixes_of(mma, task.dataset, recs)
        tprefix = mma.text_prefix(names)
        labels = labels_of(recs).to(bb.device)
        feats: dict[str, torch.Tensor] = {}
        heads: dict[str, torch.Tensor] = {}
        for k, t in ends.items():
            a = adapters_of(t)
            feats[k] = mma.eval_image_features(prefix, a if t is not None else None)
            heads[k] = (
                _split_heads(mma, a, tprefix) if t is not None else encode_template(bb, names, task.template)
            )
        data[name] = {"prefix": prefix, "tprefix": tprefix, "labels": labels, "feats": feats, "heads": heads}

    def acc(split: str, k: str) -> float:
        d = data[split]
        return _acc_loss(d["feats"][k], d["heads"][k], d["labels"], tau)[0]

    metrics = Metrics(
        zero_shot=SplitMetrics.of(acc("base", "zs"), acc("novel", "zs")),
        fine_tuned=SplitMetrics.of(acc("base", "ft"), acc("novel", "ft")),
        recovered=SplitMetrics.of(acc("base", "rec"), acc("novel", "rec")),
    )

    def feature_point(split: str, a_: str, b_: str, alpha: float) -> tuple[float, float]:
        d = data[split]
        f = F.normalize((1 - alpha) * d["feats"][a_] + alpha * d["feats"][b_], dim=-1)
        g = (1 - alpha) * d["heads"][a_] + alpha * d["heads"][b_]
        return _acc_loss(f, g, d["labels"], tau)

    segs = [("zs", "ft"), ("zs", "rec"), ("ft", "rec")]
    curves: dict[str, dict[str, Curve]] = {"feature": {}, "adapter": {}}
    for a_, b_ in segs:
        curves["feature"][f"{a_}_{b_}"] = _curve(
            [{s: feature_point(s, a_, b_, x) for s in ("base", "novel")} for x in al], al
        )
    pa = {
        k: adapters_of(t).tensors() if t is None else {n: v.float().cpu() for n, v in t.items()}
        for k, t in ends.items()
    }
    for a_, b_ in segs:
        pts = []
        for x in al:
            mix = {n: (1 - x) * pa[a_][n] + x * pa[b_][n] for n in pa[a_]}
            ad = adapters_of(mix)
            row = {}
            for s in ("base", "novel"):
                d = data[s]
                f = mma.eval_image_features(d["prefix"], ad)
                row[s] = _acc_loss(f, _split_heads(mma, ad, d["tprefix"]), d["labels"], tau)
            pts.append(row)
        curves["adapter"][f"{a_}_{b_}"] = _curve(pts, al)

    # baselines: the zero-shot -> fine-tuned feature segment at the alpha best on validation
    best = (0.0, -1.0)
    if data["val"]["labels"].numel():
        for x in al:
            v = feature_point("val", "zs", "ft", x)[0]
            if v > best[1]:
                best = (x, v)
    else:
        best = (0.5, 0.0)
    b_acc, n_acc = (
        feature_point("base", "zs", "ft", best[0])[0],
        feature_point("novel", "zs", "ft", best[0])[0],
    )
    fi = FeatureInterpolation(alpha=best[0], base=b_acc, novel=n_acc, hm=SplitMetrics.of(b_acc, n_acc).hm)

    def ens(split: str) -> float:
        d = data[split]
        p = sum(
            F.softmax(tau * d["feats"][k] @ F.normalize(d["heads"][k], dim=-1).T, dim=-1)
            for k in ("zs", "ft")
        )
        return accuracy(torch.as_tensor(p), d["labels"])

    baselines = Baselines(feature_interpolation=fi, ensemble=SplitMetrics.of(ens("base"), ens("novel")))
    return MMAEvaluation(metrics=metrics, baselines=baselines, curves=curves)
