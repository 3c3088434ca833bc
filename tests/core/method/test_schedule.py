"""mergetune.core.method.schedule: the reference's constant warm-up + cosine, stepped per epoch."""

from __future__ import annotations

import pytest
import torch

from mergetune.core.config import Hyperparameters
from mergetune.core.method.schedule import EpochSchedule, build_optimizer, lr_at, lr_for


def test_reference_values():
    hp = Hyperparameters()
    assert lr_for(hp, 0) == pytest.approx(1e-5, abs=1e-15)
    assert lr_for(hp, 1) == pytest.approx(2e-3, abs=1e-15)
    assert lr_for(hp, 50) == pytest.approx(1.0314107590781283e-3, abs=1e-12)  # 1e-3 (1 + cos(49 pi / 100))
    assert lr_for(hp, 99) == pytest.approx(1.9732715717284e-6, abs=1e-12)  # 1e-3 (1 + cos(98 pi / 100))


def _dassl_sequence(epochs: int, lr: float, warmup: int, warmup_lr: float) -> list[float]:
    """Emulates Dassl's ConstantWarmupScheduler(successor=CosineAnnealingLR(T_max=epochs))."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr)
    successor = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
    out = []
    last_epoch = 0
    for g in opt.param_groups:
        g["lr"] = warmup_lr if warmup > 0 else lr
    for _ in range(epochs):
        out.append(opt.param_groups[0]["lr"])
        opt.step()  # no gradient: a no-op that keeps torch's call-order check quiet
        if last_epoch >= warmup:
            successor.step()
        else:
            last_epoch += 1
            if last_epoch >= warmup:
                for g in opt.param_groups:
                    g["lr"] = successor.get_last_lr()[0]
    return out


@pytest.mark.parametrize("warmup", [0, 1, 3])
def test_matches_dassl_scheduler(warmup):
    ref = _dassl_sequence(100, 0.002, warmup, 1e-5)
    ours = [lr_at(e, lr=0.002, epochs=100, warmup_epochs=warmup, warmup_lr=1e-5) for e in range(100)]
    assert ours == pytest.approx(ref, rel=1e-9, abs=1e-15)


def test_optimizer_and_epoch_schedule():
    hp = Hyperparameters(epochs=10)
    p = torch.nn.Parameter(torch.zeros(3))
    opt = build_optimizer([p], hp)
    g = opt.param_groups[0]
    assert (g["lr"], g["momentum"], g["weight_decay"], g["nesterov"]) == (1e-5, 0.9, 5e-4, False)
    sched = EpochSchedule(opt, hp)
    assert sched.set_epoch(1) == pytest.approx(0.002)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.002)
    sched.set_epoch(4)
    other = EpochSchedule(opt, hp)
    other.load_state_dict(sched.state_dict())
    assert other.state_dict() == {"epoch": 4}
    assert opt.param_groups[0]["lr"] == pytest.approx(lr_for(hp, 4))
