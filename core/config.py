"""Typed, frozen configuration shared by the core, the worker and the REST API.

Importable without torch: the API validates requests with these same models.
Defaults are the reference configuration of MergeTune (ALGORITHM.md section 2).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field, field_validator


class LossType(StrEnum):
    cosine = "cosine"
    l2 = "l2"


class Method(StrEnum):
    coop = "coop"
    kgcoop = "kgcoop"
    linear_head = "linear_head"


class Precision(StrEnum):
    auto = "auto"  # AMP (fp16 autocast) on CUDA, fp32 on CPU
    fp32 = "fp32"
    amp = "amp"


class ClassTokenPosition(StrEnum):
    end = "end"
    middle = "middle"
    front = "front"


class FeatureMode(StrEnum):
    """How image features of the frozen encoder are produced during training."""

    bank = "bank"  # V augmented views per image, encoded once, one sampled per epoch
    exact = "exact"  # fresh augmentation every step, image encoder run once per batch
    none = "none"  # no augmentation: test transform, features encoded once for the whole job


class DatasetKind(StrEnum):
    coop = "coop"
    imagefolder = "imagefolder"
    builtin = "builtin"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", use_enum_values=False)


class BackboneSpec(_Frozen):
    """Which CLIP to load. ``pretrained`` is an open_clip tag (loaded only from the local cache),
    a local file path, ``builtin`` (the bundled tiny CLIP), or ``random`` / ``random:<seed>``."""

    model: str = Field(default="ViT-B-16", min_length=1, max_length=128)
    pretrained: str = Field(default="openai", min_length=1, max_length=1024)


class Hyperparameters(_Frozen):
    """MergeTune hyperparameters for prompt jobs (coop / kgcoop checkpoints)."""

    w_zs: float = Field(default=10.0, ge=0.0, le=1e4, description="W: weight of the zero-shot surrogate")
    loss_type: LossType = LossType.cosine
    w_lmc: float = Field(default=1.0, ge=0.0, le=1e4, description="W_LMC: weight of the path term")
    num_samples: int = Field(default=5, ge=1, le=64, description="K: path samples t_k=(k-1/2)/K")
    path_term: bool = True
    epochs: int = Field(default=100, ge=1, le=1000)
    lr: float = Field(default=0.002, gt=0.0, le=10.0)
    batch_size: int = Field(default=128, ge=1, le=4096)
    shots: int = Field(default=16, ge=1, le=10000)
    seed: int = Field(default=1, ge=0, le=2**31 - 1)
    precision: Precision = Precision.auto
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=5e-4, ge=0.0, le=1.0)
    warmup_epochs: int = Field(default=1, ge=0, le=1000)
    warmup_lr: float = Field(default=1e-5, ge=0.0, le=10.0)
    feature_mode: FeatureMode = FeatureMode.bank
    # V = 2 by measurement (bench/bank_views.py, bench/README.md "Bank size V"; tiny-clip builtin, 48 base
    # classes x 16 shots, 100 epochs): recovered HM over seeds 1-3 was V=2 23.9/17.1/20.3 vs V=8
    # 18.9/16.9/21.2 (exact mode 20.4, seed 1; V=1 17.6), i.e. V=2 within seed noise (~3 HM points) of
    # the best and of exact, while building the bank 3-4x faster than V=8 (2 s vs 6.5 s of a 40-45 s job).
    bank_views: int = Field(default=2, ge=1, le=256)
    curve_step: float = Field(default=0.1, gt=0.0, le=0.5)


class HeadHyperparameters(_Frozen):
    """MergeTune hyperparameters for linear-head jobs (ALGORITHM.md section 3)."""

    # |W - W_zs|_F^2 sums over all C x D entries of a tau-scaled head, so useful weights are small: on the
    # built-in data 1e-4..1e-3 trades in-distribution for shifted accuracy; 1.0 snaps back to zero-shot.
    lam: float = Field(default=1e-3, ge=0.0, le=1e4, description="lambda: weight of |W - W_zs|_F^2")
    w_lmc: float = Field(default=1.0, ge=0.0, le=1e4)
    num_samples: int = Field(default=5, ge=1, le=64)
    path_term: bool = True
    epochs: int = Field(default=20, ge=1, le=1000)
    lr: float = Field(default=0.01, gt=0.0, le=10.0)
    batch_size: int = Field(default=256, ge=1, le=65536)
    shots: int = Field(default=16, ge=1, le=10000)
    seed: int = Field(default=1, ge=0, le=2**31 - 1)
    precision: Precision = Precision.auto
    momentum: float = Field(default=0.9, ge=0.0, lt=1.0)
    weight_decay: float = Field(default=0.0, ge=0.0, le=1.0)
    curve_step: float = Field(default=0.1, gt=0.0, le=0.5)


class PromptLearnerSpec(_Frozen):
    n_ctx: int = Field(default=4, ge=1, le=64)
    csc: bool = False
    class_token_position: ClassTokenPosition = ClassTokenPosition.end
    ctx_init: str | None = "a photo of a"

    @field_validator("ctx_init")
    @classmethod
    def _strip(cls, v: str | None) -> str | None:
        return v.strip() if v else None


def path_points(num_samples: int) -> list[float]:
    """t_k = (k - 1/2) / K for k = 1..K (midpoints of K equal bins of [0, 1])."""
    return [(k - 0.5) / num_samples for k in range(1, num_samples + 1)]


def alphas(step: float = 0.1) -> list[float]:
    """0, step, ..., 1 (inclusive), rounded so that 0.1 * 3 prints as 0.3."""
    n = round(1.0 / step)
    return [round(i / n, 10) for i in range(n + 1)]
