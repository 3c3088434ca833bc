"""Losses of CoOp, KgCoOp and MergeTune as pure functions of feature tensors (ALGORITHM.md section 2).

Inputs are always: ``image_feats`` F [B, E] already L2-normalised (computed once per batch), labels
y [B], the learned text features Gw = G(ctx) [C, E] unnormalised (one text pass with gradient), and
the constant tensors G_zs [C, E] (normalised anchor) and G_ft [C, E] (unnormalised fine-tuned
features), both computed once per job.

    L = CE(tau F n(Gw)^T, y)
      + W     * surrogate(Gw, G_zs)                                # cosine: 1 - mean_c cos; l2: mean_c |n - n|
      + W_LMC * mean_k CE(tau F n((1 - t_k) G_ft + t_k Gw)^T, y)   # t_k = (k - 1/2) / K

CoOp is ``W = 0, path_term = False``; KgCoOp is ``path_term = False``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mergetune.core.config import Hyperparameters, LossType, path_points


@dataclass(frozen=True)
class LossWeights:
    """Static description of one objective (what the training loop needs to know)."""

    w_zs: float = 0.0
    loss_type: LossType = LossType.cosine
    w_lmc: float = 0.0
    num_samples: int = 5
    path_term: bool = False

    @classmethod
    def coop(cls) -> LossWeights:
        return cls()

    @classmethod
    def kgcoop(cls, w: float, loss_type: LossType = LossType.cosine) -> LossWeights:
        return cls(w_zs=w, loss_type=loss_type)

    @classmethod
    def mergetune(cls, hp: Hyperparameters) -> LossWeights:
        return cls(
            w_zs=hp.w_zs,
            loss_type=LossType(hp.loss_type),
            w_lmc=hp.w_lmc,
            num_samples=hp.num_samples,
            path_term=hp.path_term,
        )

    @property
    def uses_path(self) -> bool:
        return self.path_term and self.w_lmc > 0

    @property
    def uses_anchor(self) -> bool:
        return self.w_zs > 0


@dataclass
class LossParts:
    total: torch.Tensor
    ce: torch.Tensor
    zs: torch.Tensor
    lmc: torch.Tensor


def logits(image_feats: torch.Tensor, text_feats: torch.Tensor, tau: float) -> torch.Tensor:
    """tau * F @ normalise(G)^T; ``image_feats`` must already be normalised."""
    return tau * image_feats @ F.normalize(text_feats, dim=-1).t()


def classification_loss(
    image_feats: torch.Tensor, labels: torch.Tensor, text_feats: torch.Tensor, tau: float
):
    return F.cross_entropy(logits(image_feats, text_feats, tau), labels)


def zero_shot_surrogate(text_feats: torch.Tensor, anchor: torch.Tensor, loss_type: LossType) -> torch.Tensor:
    """cosine: 1 - mean_c cos(G[c], G_zs[c]); l2: mean_c |n(G[c]) - n(G_zs[c])| (not squared)."""
    a = F.normalize(text_feats, dim=-1)
    b = F.normalize(anchor, dim=-1)
    if LossType(loss_type) == LossType.cosine:
        return 1.0 - (a * b).sum(dim=-1).mean()
    return (a - b).norm(dim=-1).mean()


def path_loss(
    image_feats: torch.Tensor,
    labels: torch.Tensor,
    text_feats: torch.Tensor,
    ft_feats: torch.Tensor,
    tau: float,
    ts: list[float],
) -> torch.Tensor:
    """mean_k CE(tau F n((1 - t_k) G_ft + t_k Gw)^T, y), interpolating unnormalised features.

    All K classifiers are stacked into one [K, C, E] tensor: one matmul, no image re-encoding.
    """
    t = torch.tensor(ts, dtype=text_feats.dtype, device=text_feats.device).view(-1, 1, 1)
    heads = (1.0 - t) * ft_feats.unsqueeze(0) + t * text_feats.unsqueeze(0)  # [K, C, E]
    heads = F.normalize(heads, dim=-1)
    lg = tau * torch.einsum("be,kce->kbc", image_feats, heads)  # [K, B, C]
    k, b, c = lg.shape
    ce = F.cross_entropy(lg.reshape(k * b, c), labels.repeat(k), reduction="none").view(k, b)
    return ce.mean(dim=1).mean()


def total_loss(
    weights: LossWeights,
    image_feats: torch.Tensor,
    labels: torch.Tensor,
    text_feats: torch.Tensor,
    tau: float,
    *,
    anchor: torch.Tensor | None = None,
    ft_feats: torch.Tensor | None = None,
) -> LossParts:
    """The full objective and its parts (unweighted ``zs`` and ``lmc``, for logging)."""
    text_feats = text_feats.float()
    ce = classification_loss(image_feats, labels, text_feats, tau)
    zero = ce.new_zeros(())
    total = ce
    zs = zero
    lmc = zero
    if weights.uses_anchor:
        if anchor is None:
            raise ValueError("the zero-shot surrogate needs the anchor G_zs")
        zs = zero_shot_surrogate(text_feats, anchor, weights.loss_type)
        total = total + weights.w_zs * zs
    if weights.uses_path:
        if ft_feats is None:
            raise ValueError("the path term needs the fine-tuned features G_ft")
        lmc = path_loss(image_feats, labels, text_feats, ft_feats, tau, path_points(weights.num_samples))
        total = total + weights.w_lmc * lmc
    return LossParts(total=total, ce=ce, zs=zs, lmc=lmc)
