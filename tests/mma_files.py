"""A from-scratch writer of MMA's Dassl checkpoint layout (``adapter_learner/model.pth.tar-<N>``).

What MMA's trainer saves (Dassl ``save_checkpoint``): ``{"state_dict", "epoch", "optimizer",
"scheduler", "val_result"}``. ``state_dict`` is its ``AdapterLearner``'s: the adapters under MMA's keys
plus the buffers ``token_embedding`` [C, 77, Wt] and ``tokenized_prompts`` [C, 77]. With no warm-up
the scheduler is a CosineAnnealingLR, whose state dict is plain numbers; SGD's holds a momentum buffer
per parameter. Under ``PREC amp`` the tensors are fp32."""

from __future__ import annotations

from pathlib import Path

import torch

from mergetune.core.checkpoints.mma_layout import AdapterLayout


def mma_state_dict(layout: AdapterLayout, n_cls: int = 5, seed: int = 0, context: int = 77) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    # AdapterLearner registers the buffers first, then text_adapter, visual_adapter, shared_adapter
    sd["token_embedding"] = torch.randn(n_cls, context, layout.text_width, generator=g)
    tok = torch.zeros(n_cls, context, dtype=torch.long)
    tok[:, 0], tok[:, 1:8] = 49406, 320
    tok[:, 8] = 49407
    sd["tokenized_prompts"] = tok
    for k, shape in layout.shapes().items():
        sd[k] = torch.randn(*shape, generator=g) * 0.05
    return sd


def write_mma_dassl(out_dir: Path, state_dict: dict, epoch: int = 5, lr: float = 0.0015) -> Path:
    """Write ``<out_dir>/adapter_learner/model.pth.tar-<epoch>`` as MMA's trainer does; returns the path."""
    params = [k for k in state_dict if k not in ("token_embedding", "tokenized_prompts")]
    optimizer = {
        "state": {i: {"momentum_buffer": torch.zeros_like(state_dict[k])} for i, k in enumerate(params)},
        "param_groups": [
            {
                "lr": 0.0,
                "momentum": 0.9,
                "dampening": 0,
                "weight_decay": 5e-4,
                "nesterov": False,
                "maximize": False,
                "foreach": None,
                "differentiable": False,
                "initial_lr": lr,
                "params": list(range(len(params))),
            }
        ],
    }
    scheduler = {
        "T_max": epoch, "eta_min": 0, "base_lrs": [lr], "last_epoch": epoch, "verbose": False,
        "_step_count": epoch + 1, "_get_lr_called_within_step": False, "_last_lr": [0.0],
    }  # fmt: skip
    path = out_dir / "adapter_learner" / f"model.pth.tar-{epoch}"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": state_dict,
            "epoch": epoch,
            "optimizer": optimizer,
            "scheduler": scheduler,
            "val_result": None,
        },
        path,
    )
    return path
