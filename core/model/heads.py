"""The linear head on frozen image features: ``logits = F W^T + b`` (ALGORITHM.md section 3).

Endpoints: the zero-shot head ``W_zs = tau * normalise(G_zs)`` (template text features, no bias) and the
uploaded fine-tuned head ``W_ft`` (+ ``b_ft``); ``interpolate`` is the straight line between two heads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from mergetune.core.errors import ConfigError

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


def head_models(zs: Head, ft: Head, merged: Head, wise_alpha: float | None = None) -> dict[str, Head]:
    out = {"zero_shot": zs, "fine_tuned": ft, "merged": merged}
    if wise_alpha is not None:
        out["wise_ft"] = interpolate(zs, ft, wise_alpha)
    return out
