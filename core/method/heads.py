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

import copy
import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mergetune.core.config import HeadHyperparameters, Precision, path_points
from mergetune.core.errors import Cancelled, ConfigError
from mergetune.core.method.train import BatchSource, EpochEndFn, EpochMeter, ProgressFn, StopFn
from mergetune.core.model.heads import Head

logger = logging.getLogger(__name__)


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
