"""The typed result of a recovery job (no torch: the API and the report read it too).

``RecoveryResult.model_dump(mode="json")`` is the content of report.json, key for key.
Accuracies are percentages (0..100); losses are mean cross-entropies (nats).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2BN / (B + N), 0 when both are 0."""
    return 0.0 if base + novel <= 0 else 2.0 * base * novel / (base + novel)


class SplitMetrics(_Model):
    base: float = Field(ge=0, le=100)
    novel: float = Field(ge=0, le=100)
    hm: float = Field(ge=0, le=100)

    @classmethod
    def of(cls, base: float, novel: float) -> SplitMetrics:
        return cls(base=base, novel=novel, hm=harmonic_mean(base, novel))


class Metrics(_Model):
    zero_shot: SplitMetrics
    fine_tuned: SplitMetrics
    recovered: SplitMetrics


class FeatureInterpolation(_Model):
    """Best point of the zero-shot -> fine-tuned classifier segment, chosen on base validation data."""

    alpha: float
    base: float
    novel: float
    hm: float


class Baselines(_Model):
    feature_interpolation: FeatureInterpolation
    #: Output ensemble of the zero-shot and fine-tuned classifiers: mean of their softmax probabilities.
    ensemble: SplitMetrics


class Curve(_Model):
    alphas: list[float]
    base_acc: list[float]
    novel_acc: list[float]
    base_loss: list[float]
    novel_loss: list[float]
    #: max over alpha of loss(alpha) minus the linear interpolation of the endpoint losses (>= 0 at ends).
    barrier_base: float
    barrier_novel: float


class EpochLog(_Model):
    epoch: int
    loss: float
    ce: float
    zs: float
    lmc: float
    lr: float


class RecoveryResult(_Model):
    metrics: Metrics
    baselines: Baselines
    #: {"classifier" | "prompt": {"zs_ft" | "zs_rec" | "ft_rec": Curve}}. Prompt-space segments with a
    #: zero-shot end are absent when the context length differs from "a photo of a" (4 tokens).
    curves: dict[str, dict[str, Curve]]
    training: list[EpochLog] = Field(default_factory=list)
    timings: dict[str, float] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    extra_evaluations: list[dict[str, Any]] = Field(default_factory=list)
