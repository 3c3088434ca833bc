"""Evaluation of linear heads: each head model's accuracy and CE on a split, output ensembles, the WiSE-FT sweep."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

from mergetune.core.config import alphas
from mergetune.core.evaluation.result import HeadSplit, WiseFTSweep
from mergetune.core.model.heads import Head, interpolate

Split = tuple[torch.Tensor, torch.Tensor]  # (normalised features [N, D], labels [N])


def _acc(probs_or_logits: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0:
        return 0.0
    return 100.0 * int((probs_or_logits.argmax(-1) == labels).sum()) / labels.numel()


def _nll(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    if labels.numel() == 0:
        return 0.0
    return float(F.nll_loss(log_probs, labels))


def model_log_probs(feats: torch.Tensor, heads: Mapping[str, Head]) -> dict[str, torch.Tensor]:
    """Log-probabilities of every head model: the heads themselves and the two output ensembles
    (``merged_zs_ensemble`` when "merged" and "zero_shot" are present, ``endpoint_ensemble`` when
    "zero_shot" and "fine_tuned" are): log of the mean of the members' softmax probabilities."""
    out = {name: F.log_softmax(h.logits(feats), dim=-1) for name, h in heads.items()}
    pairs = {"merged_zs_ensemble": ("merged", "zero_shot"), "endpoint_ensemble": ("zero_shot", "fine_tuned")}
    for name, (a, b) in pairs.items():
        if a in out and b in out:
            out[name] = torch.logsumexp(torch.stack([out[a], out[b]]), dim=0) - math.log(2.0)
    return out


@torch.no_grad()
def evaluate_split(name: str, kind: str, split: Split, heads: Mapping[str, Head]) -> HeadSplit:
    feats, labels = split
    n_cls = next(iter(heads.values())).weight.shape[0]
    lp = model_log_probs(feats, heads)
    return HeadSplit(
        name=name,
        kind=kind,
        images=int(labels.numel()),
        classes=int(n_cls),
        accuracy={k: _acc(v, labels) for k, v in lp.items()},
        loss={k: _nll(v, labels) for k, v in lp.items()},
    )


@torch.no_grad()
def wise_ft_sweep(
    splits: Mapping[str, Split],
    zs: Head,
    ft: Head,
    *,
    step: float = 0.1,
    select_on: str = "val",
    rows: Mapping[str, list[int]] | None = None,
) -> WiseFTSweep:
    """Accuracy and CE of ``interpolate(zs, ft, a)`` for a in ``alphas(step)`` on every split; the
    best alpha maximises accuracy on ``select_on`` (ties: smaller loss, then smaller alpha).
    ``rows[split]`` restricts the heads to those rows on that split (a class subset)."""
    if select_on not in splits:
        raise ValueError(f"no split {select_on!r} to choose the WiSE-FT alpha on")
    values = alphas(step)
    acc: dict[str, list[float]] = {}
    loss: dict[str, list[float]] = {}
    for name, (feats, labels) in splits.items():
        acc[name], loss[name] = [], []
        sub = (rows or {}).get(name)
        z, f = (zs, ft) if sub is None else (zs.rows(sub), ft.rows(sub))
        for a in values:
            lg = interpolate(z, f, a).logits(feats)
            acc[name].append(_acc(lg, labels))
            loss[name].append(float(F.cross_entropy(lg, labels)) if labels.numel() else 0.0)
    keys = [(-acc[select_on][i], loss[select_on][i], values[i]) for i in range(len(values))]
    best = min(range(len(values)), key=lambda i: keys[i])
    return WiseFTSweep(alphas=values, accuracy=acc, loss=loss, best_alpha=values[best], selected_on=select_on)
