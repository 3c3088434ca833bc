"""The one training loop for prompt learning (CoOp, KgCoOp, MergeTune).

It receives everything it needs (learner, batch source, hyperparameters, objective, constant
features, callbacks) and returns the per-epoch history. AMP (fp16 autocast + GradScaler) on CUDA,
fp32 on CPU. Deterministic on CPU for a given seed: batch order and augmentations are derived from
(seed, epoch, index) by the batch source, and the epoch state below restores everything else.

Epoch state (``on_epoch_end(state)`` / ``resume_state=state``): tensors and plain types only, so it can
be written with ``torch.save`` and read back with ``torch.load(weights_only=True)``::

    {"epoch": next epoch to run, "ctx": Tensor, "optimizer": SGD state_dict,
     "scheduler": {"epoch": int}, "scaler": GradScaler state_dict or {}, "rng": {"torch": ByteTensor,
     "cuda": [ByteTensor, ...]}, "history": [EpochLog dicts]}
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import torch

from mergetune.core.config import Hyperparameters, Precision
from mergetune.core.errors import Cancelled, ConfigError, NonFiniteLoss
from mergetune.core.method.objectives import LossWeights, total_loss
from mergetune.core.method.schedule import EpochSchedule, SgdSettings, build_optimizer
from mergetune.core.model.prompts import PromptLearner

logger = logging.getLogger(__name__)

ProgressFn = Callable[..., None]
StopFn = Callable[[], bool]
EpochEndFn = Callable[[dict[str, Any]], None]


class BatchSource(Protocol):
    steps_per_epoch: int

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class LossTerms(Protocol):
    """What a training step reports (mergetune.core.method.objectives.LossParts, mergetune.core.method.heads.HeadLossParts)."""

    @property
    def total(self) -> torch.Tensor: ...
    @property
    def ce(self) -> torch.Tensor: ...
    @property
    def zs(self) -> torch.Tensor: ...
    @property
    def lmc(self) -> torch.Tensor: ...


class EpochMeter:
    """One epoch's loss bookkeeping, shared by the prompt and head training loops: ``step()`` after every
    optimiser step (reports to ``on_progress``), ``log()`` -> the epoch's history entry (mean losses)."""

    def __init__(
        self, epoch: int, lr: float, *, epochs: int, steps: int, on_progress: ProgressFn | None
    ) -> None:
        self.epoch = epoch
        self.lr = lr
        self.epochs = epochs
        self.steps = steps
        self.on_progress = on_progress
        self.sums = {"loss": 0.0, "ce": 0.0, "zs": 0.0, "lmc": 0.0}
        self.n = 0

    def step(self, step: int, parts: LossTerms) -> None:
        """Record one step; :class:`mergetune.core.errors.NonFiniteLoss` when the loss is NaN or infinite."""
        vals = {
            "loss": float(parts.total.detach()),
            "ce": float(parts.ce.detach()),
            "zs": float(parts.zs.detach()),
            "lmc": float(parts.lmc.detach()),
        }
        if not math.isfinite(vals["loss"]):
            shown = ", ".join(f"{k} {v:.4g}" for k, v in vals.items())
            raise NonFiniteLoss(
                f"the training loss is not finite at epoch {self.epoch + 1} step {step + 1} ({shown}); "
                f"lower lr (now {self.lr:.3g}) or the loss weights, or check the checkpoint",
                param="hyperparameters",
            )
        for k, v in vals.items():
            self.sums[k] += v
        self.n += 1
        if self.on_progress is not None:
            self.on_progress(
                self.epoch, step, vals["loss"], epochs=self.epochs, steps=self.steps, ce=vals["ce"],
                zs=vals["zs"], lmc=vals["lmc"], lr=self.lr,
            )  # fmt: skip

    def log(self) -> dict[str, Any]:
        return {"epoch": self.epoch, **{k: v / max(self.n, 1) for k, v in self.sums.items()}, "lr": self.lr}


@torch.no_grad()
def val_accuracy(learner: PromptLearner, val: tuple[torch.Tensor, torch.Tensor], tau: float) -> float | None:
    """Top-1 (%) of the current prompts on precomputed validation features; None without any."""
    feats, labels = val
    if labels.numel() == 0:
        return None
    text = torch.nn.functional.normalize(learner.text_features().float(), dim=-1)
    pred = (tau * feats.float() @ text.T).argmax(-1)
    return float((pred == labels.to(pred.device)).float().mean() * 100.0)


def use_amp(precision: Precision, device: torch.device) -> bool:
    """AMP only on CUDA: ``auto`` and ``amp`` mean fp16 autocast there and fp32 on CPU."""
    return device.type == "cuda" and Precision(precision) in (Precision.auto, Precision.amp)


def _rng_state(device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class RunSettings(SgdSettings, Protocol):
    """What :class:`SgdRun` reads: the SGD and schedule fields plus the precision."""

    precision: Precision


class SgdRun:
    """The optimiser side of one training run, shared by the prompt and MMA trainers: Dassl's SGD over
    ``params``, the per-epoch schedule, the AMP scaler (CUDA only), one update step, and the resume /
    epoch-state parts of the state documented above (the trainer adds its own parameters' entry)."""

    def __init__(self, params: list[torch.nn.Parameter], hp: RunSettings, device: torch.device) -> None:
        self.device = device
        self.amp = use_amp(hp.precision, device)
        self.optimizer = build_optimizer(params, hp)
        self.schedule = EpochSchedule(self.optimizer, hp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)

    def resume(self, state: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        """Restore optimiser, schedule, scaler and RNG from ``state``; returns (next epoch, history)."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        return int(state["epoch"]), [dict(h) for h in state.get("history", [])]

    def step(self, loss: torch.Tensor, *, before_update: Callable[[], None] | None = None) -> None:
        """Backward (scaled under AMP), ``before_update()`` on the gradients, then one SGD update."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if before_update is not None:
            before_update()
        self.scaler.step(self.optimizer)
        self.scaler.update()

    def state(self, epoch: int, history: list[dict[str, Any]], **params: Any) -> dict[str, Any]:
        """The epoch state after ``epoch`` epochs (``params``: the trainer's own entry, e.g. ``ctx``)."""
        return {
            "epoch": epoch,
            **params,
            "optimizer": copy.deepcopy(self.optimizer.state_dict()),
            "scheduler": {"epoch": epoch},
            "scaler": self.scaler.state_dict() if self.amp else {},
            "rng": _rng_state(self.device),
            "history": [dict(h) for h in history],
        }


def train_prompts(
    learner: PromptLearner,
    batches: BatchSource,
    hp: Hyperparameters,
    weights: LossWeights,
    *,
    tau: float,
    anchor: torch.Tensor | None = None,
    ft_feats: torch.Tensor | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    resume_state: dict[str, Any] | None = None,
    on_epoch_end: EpochEndFn | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Optimise ``learner.ctx`` for ``hp.epochs`` epochs; returns one log dict per epoch (with
    ``val_acc`` after the epoch when ``val`` = (normalised image features, labels) is given).

    ``on_progress(epoch, step, loss, *, epochs, steps, ce, zs, lmc, lr)`` after every step, with
    0-based ``epoch`` and ``step`` (``steps`` = steps per epoch). ``should_stop()`` is checked before
    every step; when it returns True, :class:`mergetune.core.errors.Cancelled` is raised.
    """
    device = learner.ctx.device
    run = SgdRun([learner.ctx], hp, device)
    history: list[dict[str, Any]] = []
    start = 0
    if resume_state is not None:
        ctx = resume_state["ctx"]
        if tuple(ctx.shape) != tuple(learner.ctx.shape):
            raise ConfigError(
                f"resume state ctx {tuple(ctx.shape)} does not match {tuple(learner.ctx.shape)}",
                param="resume_state",
            )
        with torch.no_grad():
            learner.ctx.copy_(ctx.to(device))
        start, history = run.resume(resume_state)
    anchor = anchor.float() if anchor is not None else None
    ft_feats = ft_feats.float() if ft_feats is not None else None
    steps = batches.steps_per_epoch
    if steps == 0:
        raise ConfigError("the training set is empty", param="dataset")

    for epoch in range(start, hp.epochs):
        lr = run.schedule.set_epoch(epoch)
        meter = EpochMeter(epoch, lr, epochs=hp.epochs, steps=steps, on_progress=on_progress)
        for step, (feats, labels) in enumerate(batches.epoch(epoch)):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped at epoch {epoch} step {step}")
            with torch.autocast("cuda", dtype=torch.float16, enabled=run.amp):
                text_feats = learner.text_features()  # the one text pass with gradient
            parts = total_loss(
                weights, feats.float(), labels, text_feats.float(), tau, anchor=anchor, ft_feats=ft_feats
            )
            run.step(parts.total)
            meter.step(step, parts)
        log = meter.log()
        if val is not None:
            log["val_acc"] = val_accuracy(learner, val, tau)
        history.append(log)
        logger.info("epoch %d/%d loss %.4f lr %.3g", epoch + 1, hp.epochs, log["loss"], lr)
        if on_epoch_end is not None:
            on_epoch_end(run.state(epoch + 1, history, ctx=learner.ctx.detach().cpu().clone()))
    return history
