"""SGD + constant warm-up + cosine annealing stepped once per epoch (Dassl's ConstantWarmupScheduler
wrapping CosineAnnealingLR(T_max=epochs), as the reference runs it).

Closed form of the reference sequence: during the ``warmup_epochs`` first epochs the lr is
``warmup_lr``; at epoch e >= warmup_epochs it is ``lr * (1 + cos(pi * (e - warmup_epochs) / epochs)) / 2``
(the cosine successor only starts stepping once warm-up is over, and T_max stays ``epochs``).
With the defaults: epoch 0 -> 1e-5, 1 -> 2e-3, 50 -> 1.0314e-3, 99 -> 1.973e-6.

The state is just the epoch number, so resuming needs no pickled scheduler object.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Protocol

import torch


class SgdSettings(Protocol):
    """The optimiser and schedule fields every trainer's hyperparameters carry (prompt, head and MMA)."""

    lr: float
    epochs: int
    warmup_epochs: int
    warmup_lr: float
    momentum: float
    weight_decay: float


def lr_at(epoch: int, *, lr: float, epochs: int, warmup_epochs: int = 1, warmup_lr: float = 1e-5) -> float:
    if epoch < warmup_epochs:
        return warmup_lr
    return lr * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / epochs)) / 2.0


def lr_for(hp: SgdSettings, epoch: int) -> float:
    return lr_at(epoch, lr=hp.lr, epochs=hp.epochs, warmup_epochs=hp.warmup_epochs, warmup_lr=hp.warmup_lr)


def build_optimizer(params: Iterable[torch.nn.Parameter], hp: SgdSettings) -> torch.optim.SGD:
    """Dassl's SGD for prompt learning (no dampening, no Nesterov)."""
    return torch.optim.SGD(list(params), lr=lr_for(hp, 0), momentum=hp.momentum, weight_decay=hp.weight_decay)


class EpochSchedule:
    """Sets the optimizer's lr at the start of each epoch; ``state_dict`` is plain ints."""

    def __init__(self, optimizer: torch.optim.Optimizer, hp: SgdSettings) -> None:
        self.optimizer = optimizer
        self.hp = hp
        self.epoch = 0

    def set_epoch(self, epoch: int) -> float:
        self.epoch = epoch
        lr = lr_for(self.hp, epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.set_epoch(int(state["epoch"]))
