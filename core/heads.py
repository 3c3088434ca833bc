"""Linear-head MergeTune (robust fine-tuning; ALGORITHM.md section 3) on frozen, cached image features.

A head is ``logits = F W^T + b`` with F the L2-normalised image features [N, D], W [C, D], b [C] or
None. Endpoints: the zero-shot head ``W_zs = tau * normalise(G_zs)`` (template text features, no bias)
and the uploaded fine-tuned head ``W_ft`` (+ ``b_ft``). From ``W = W_ft`` (and ``b = b_ft``)::

    L = CE(F W^T + b, y)
      + lam   * |W - W_zs|_F^2                                                  # second-order surrogate
      + W_LMC * mean_k CE(F ((1 - t_k) W_ft + t_k W)^T + (1 - t_k) b_ft + t_k b, y)   # t_k = (k - 1/2)/K

When ``W = W_ft`` (step 0) every path point is the fine-tuned head itself, so the path term equals CE.
The image encoder is frozen and heads see no augmentation: features are encoded once per split.

Evaluation: the merged head alone, its output ensemble with the zero-shot head, the endpoints' output
ensemble (mean of softmax probabilities) and the WiSE-FT weight interpolation sweep
``W(a) = (1 - a) W_zs + a W_ft, b(a) = a b_ft``, on validation, in-distribution test and shifted splits.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from core.config import HeadHyperparameters, Precision, alphas, path_points
from core.errors import Cancelled, ConfigError
from core.result import HeadSplit, WiseFTSweep
from core.train import BatchSource, EpochEndFn, EpochMeter, ProgressFn, StopFn

logger = logging.getLogger(__name__)

#: the models every head split reports, and what they are
HEAD_MODELS: dict[str, str] = {
    "zero_shot": "tau * normalised template text features, no bias",
    "fine_tuned": "the uploaded fine-tuned head",
    "merged": "MergeTune continued head",
    "merged_zs_ensemble": "mean softmax of merged and zero-shot",
    "endpoint_ensemble": "mean softmax of zero-shot and fine-tuned",
    "wise_ft": "WiSE-FT weight interpolation at the alpha chosen on validation",
}


@dataclass
class Head:
    """A linear classifier on normalised image features: ``F W^T + b``."""

    weight: torch.Tensor  # [C, D]
    bias: torch.Tensor | None = None  # [C]

    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        out = feats.float() @ self.weight.to(feats.device).float().t()
        return out if self.bias is None else out + self.bias.to(feats.device).float()

    def rows(self, index: list[int] | torch.Tensor) -> Head:
        idx = torch.as_tensor(index, dtype=torch.long, device=self.weight.device)
        return Head(self.weight[idx], None if self.bias is None else self.bias[idx])

    def to(self, device: torch.device | str) -> Head:
        return Head(self.weight.to(device), None if self.bias is None else self.bias.to(device))

    def detached(self) -> Head:
        return Head(
            self.weight.detach().float().cpu().clone(),
            None if self.bias is None else self.bias.detach().float().cpu().clone(),
        )

    def as_dict(self) -> dict[str, torch.Tensor]:
        out = {"weight": self.weight}
        if self.bias is not None:
            out["bias"] = self.bias
        return out


def head_from(obj: Any) -> Head:
    """A Head from what callers pass as ``ctx_ft``: a Head, {"weight", "bias"?}, (weight, bias) or W."""
    if isinstance(obj, Head):
        w, b = obj.weight, obj.bias
    elif isinstance(obj, Mapping):
        if "weight" not in obj:
            raise ConfigError("a linear head needs a 'weight' tensor", param="file")
        w, b = obj["weight"], obj.get("bias")
    elif isinstance(obj, tuple | list):
        w, b = obj[0], (obj[1] if len(obj) > 1 else None)
    else:
        w, b = obj, None
    w = torch.as_tensor(w).detach().float().cpu().clone()
    if w.dim() != 2 or min(w.shape) == 0:
        raise ConfigError(f"head weight must be [C, D], got {list(w.shape)}", param="file")
    if b is not None:
        b = torch.as_tensor(b).detach().float().cpu().clone()
        if tuple(b.shape) != (w.shape[0],):
            raise ConfigError(f"head bias must be [{w.shape[0]}], got {list(b.shape)}", param="file")
    if not torch.isfinite(w).all() or (b is not None and not torch.isfinite(b).all()):
        raise ConfigError("the fine-tuned head has non-finite values", param="file")
    return Head(w, b)


def zero_shot_head(text_feats: torch.Tensor, tau: float) -> Head:
    """W_zs = tau * normalise(G_zs): logits equal CLIP's zero-shot logits; no bias."""
    return Head(tau * F.normalize(text_feats.float(), dim=-1), None)


def interpolate(a: Head, b: Head, t: float) -> Head:
    """(1 - t) a + t b, weights and biases (a missing bias counts as zeros)."""
    w = (1.0 - t) * a.weight.float() + t * b.weight.float()
    if a.bias is None and b.bias is None:
        return Head(w, None)
    ba = a.bias if a.bias is not None else torch.zeros_like(w[:, 0])
    bb = b.bias if b.bias is not None else torch.zeros_like(w[:, 0])
    return Head(w, (1.0 - t) * ba.float() + t * bb.float())


# ----------------------------------------------------------------------------------------------------
# objective


@dataclass
class HeadLossParts:
    total: torch.Tensor
    ce: torch.Tensor
    zs: torch.Tensor  # |W - W_zs|_F^2, unweighted
    lmc: torch.Tensor  # mean_k CE on the path, unweighted


def head_path_loss(
    feats: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    ft: Head,
    ts: list[float],
) -> torch.Tensor:
    """mean_k CE(F ((1 - t_k) W_ft + t_k W)^T + (1 - t_k) b_ft + t_k b, y), all K heads in one einsum."""
    t = torch.tensor(ts, dtype=weight.dtype, device=weight.device)
    heads = (1.0 - t).view(-1, 1, 1) * ft.weight.unsqueeze(0) + t.view(-1, 1, 1) * weight.unsqueeze(0)
    lg = torch.einsum("nd,kcd->knc", feats, heads)  # [K, N, C]
    if bias is not None or ft.bias is not None:
        b = bias if bias is not None else torch.zeros_like(weight[:, 0])
        bft = ft.bias if ft.bias is not None else torch.zeros_like(weight[:, 0])
        lg = lg + ((1.0 - t).view(-1, 1) * bft.unsqueeze(0) + t.view(-1, 1) * b.unsqueeze(0)).unsqueeze(1)
    k, n, c = lg.shape
    return F.cross_entropy(lg.reshape(k * n, c), labels.repeat(k))


def head_loss(
    feats: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    zs: Head | None = None,
    lam: float = 0.0,
    ft: Head | None = None,
    w_lmc: float = 0.0,
    num_samples: int = 5,
    path_term: bool = True,
) -> HeadLossParts:
    """CE + lam * |W - W_zs|_F^2 + w_lmc * path term (each extra term only when its weight is > 0)."""
    lg = feats @ weight.t()
    if bias is not None:
        lg = lg + bias
    ce = F.cross_entropy(lg, labels)
    zero = ce.new_zeros(())
    total, zs_term, lmc = ce, zero, zero
    if lam > 0:
        if zs is None:
            raise ValueError("the zero-shot surrogate needs W_zs")
        zs_term = (weight - zs.weight).pow(2).sum()
        total = total + lam * zs_term
    if path_term and w_lmc > 0:
        if ft is None:
            raise ValueError("the path term needs the fine-tuned head")
        lmc = head_path_loss(feats, labels, weight, bias, ft, path_points(num_samples))
        total = total + w_lmc * lmc
    return HeadLossParts(total=total, ce=ce, zs=zs_term, lmc=lmc)


# ----------------------------------------------------------------------------------------------------
# training (one loop: plain fine-tuning of a head, or MergeTune)


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """Cosine annealing stepped once per epoch (no warm-up for heads): lr at 0-based ``epoch``."""
    return 0.5 * lr * (1.0 + math.cos(math.pi * epoch / max(epochs, 1)))


def fit_head(
    batches: BatchSource,
    init: Head,
    hp: HeadHyperparameters,
    *,
    zs: Head | None = None,
    lam: float = 0.0,
    ft: Head | None = None,
    w_lmc: float = 0.0,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    resume_state: dict[str, Any] | None = None,
    on_epoch_end: EpochEndFn | None = None,
    device: torch.device | str = "cpu",
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[Head, list[dict[str, float]]]:
    """SGD (momentum ``hp.momentum``, weight decay ``hp.weight_decay``, cosine lr from ``hp.lr``) on the
    head objective for ``hp.epochs`` epochs, on ``device`` (where the batches are); the bias is trained
    only when ``init`` has one. Returns the head on the CPU and the per-epoch history (with ``val_acc``,
    top-1 % on ``val`` = (features, labels) after each epoch, when given and not empty).

    Epoch state for ``on_epoch_end`` / ``resume_state`` (tensors and plain types)::

        {"epoch", "weight", "bias" (Tensor or None), "optimizer", "rng": {"torch"}, "history"}
    """
    if Precision(hp.precision) == Precision.amp:
        logger.info("heads train in fp32 (a linear layer gains nothing from AMP)")
    init = init.to(device)
    zs = zs.to(device) if zs is not None else None
    ft = ft.to(device) if ft is not None else None
    weight = init.weight.detach().float().clone().requires_grad_(True)
    bias = None if init.bias is None else init.bias.detach().float().clone().requires_grad_(True)
    params = [weight] + ([bias] if bias is not None else [])
    optimizer = torch.optim.SGD(params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay)
    history: list[dict[str, float]] = []
    start = 0
    if resume_state is not None:
        if tuple(resume_state["weight"].shape) != tuple(weight.shape):
            raise ConfigError("resume state head does not match the checkpoint", param="resume_state")
        with torch.no_grad():
            weight.copy_(resume_state["weight"].to(weight.device))
            if bias is not None and resume_state.get("bias") is not None:
                bias.copy_(resume_state["bias"].to(bias.device))
        optimizer.load_state_dict(resume_state["optimizer"])
        torch.set_rng_state(resume_state["rng"]["torch"].cpu())
        history = [dict(h) for h in resume_state.get("history", [])]
        start = int(resume_state["epoch"])
    steps = batches.steps_per_epoch
    if steps == 0:
        raise ConfigError("the training set is empty", param="dataset")
    for epoch in range(start, hp.epochs):
        lr = cosine_lr(hp.lr, epoch, hp.epochs)
        for group in optimizer.param_groups:
            group["lr"] = lr
        meter = EpochMeter(epoch, lr, epochs=hp.epochs, steps=steps, on_progress=on_progress)
        for step, (feats, labels) in enumerate(batches.epoch(epoch)):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped at epoch {epoch} step {step}")
            parts = head_loss(
                feats.float(), labels, weight, bias, zs=zs, lam=lam, ft=ft, w_lmc=w_lmc,
                num_samples=hp.num_samples, path_term=hp.path_term,
            )  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            meter.step(step, parts)
        log = meter.log()
        if val is not None and val[1].numel():
            with torch.no_grad():
                pred = Head(weight, bias).logits(val[0].float()).argmax(-1)
                log["val_acc"] = float((pred == val[1].to(pred.device)).float().mean() * 100.0)
        history.append(log)
        logger.info("head epoch %d/%d loss %.4f lr %.3g", epoch + 1, hp.epochs, log["loss"], lr)
        if on_epoch_end is not None:
            on_epoch_end(
                {
                    "epoch": epoch + 1,
                    "weight": weight.detach().cpu().clone(),
                    "bias": None if bias is None else bias.detach().cpu().clone(),
                    "optimizer": copy.deepcopy(optimizer.state_dict()),
                    "rng": {"torch": torch.get_rng_state()},
                    "history": [dict(h) for h in history],
                }
            )
    return Head(weight, bias).detached(), history


# ----------------------------------------------------------------------------------------------------
# evaluation

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


def head_models(zs: Head, ft: Head, merged: Head, wise_alpha: float | None = None) -> dict[str, Head]:
    out = {"zero_shot": zs, "fine_tuned": ft, "merged": merged}
    if wise_alpha is not None:
        out["wise_ft"] = interpolate(zs, ft, wise_alpha)
    return out
