"""The typed result of a recovery job (no torch: the API and the report read it too).

``RecoveryResult.model_dump(mode="json")`` is the content of report.json, key for key.
Accuracies are percentages (0..100); losses are mean cross-entropies (nats).
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    model_serializer,
    model_validator,
)


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


#: A recovered model whose base accuracy is more than this many points below the fine-tuned input's gets
#: the ``base_drop`` warning (MergeTune trades a little base accuracy for novel; more than 2 points is
#: more than the method's published trade on average).
BASE_DROP_MARGIN = 2.0

#: Warning codes of a verdict (also the label values of /metrics' mergetune_job_warnings_total).
WARNING_CODES = ("below_fine_tuned", "below_zero_shot", "base_drop", "baseline_better", "adapters_unmoved")

#: MMA jobs: recovered adapters closer than this (relative L2 distance) to the uploaded ones get the
#: ``adapters_unmoved`` warning. The reference's update moves MMA-trained adapters about 0.1-0.3% on the
#: built-in data; MMA's own update 27-44%.
UNMOVED_FRACTION = 0.01


class VerdictWarning(_Model):
    code: str  # one of WARNING_CODES
    message: str


class Verdict(_Model):
    """What a person reads first: the recovered harmonic mean against the two endpoints, and what to
    look at. Deltas are percentage points; ``base`` / ``novel`` are against the fine-tuned input."""

    text: str
    ok: bool  # no warnings
    warnings: list[VerdictWarning] = Field(default_factory=list)
    hm: float
    hm_vs_fine_tuned: float
    hm_vs_zero_shot: float
    base_vs_fine_tuned: float
    novel_vs_fine_tuned: float


def with_warning(verdict: Verdict, code: str, message: str) -> Verdict:
    """``verdict`` with one more warning (its text ends with every warning's message, as computed ones do)."""
    text = verdict.text + ("; " if verdict.warnings else ". Warning: ") + message
    warnings = [*verdict.warnings, VerdictWarning(code=code, message=message)]
    return verdict.model_copy(update={"text": text, "ok": False, "warnings": warnings})


def _pts(x: float) -> str:
    return f"{x:+.1f}"


def compute_verdict(
    metrics: Metrics, baselines: Baselines | None, *, base_drop_margin: float = BASE_DROP_MARGIN
) -> Verdict:
    """The verdict of a job from its metrics and naive baselines (comparisons at the printed 0.1
    precision, so a warning never contradicts the numbers shown next to it)."""
    rec, ft, zs = metrics.recovered, metrics.fine_tuned, metrics.zero_shot

    def r(x: float) -> float:
        return round(x, 1)

    d_ft, d_zs = rec.hm - ft.hm, rec.hm - zs.hm
    d_base, d_novel = rec.base - ft.base, rec.novel - ft.novel
    text = (
        f"Recovered HM {rec.hm:.1f} ({_pts(d_ft)} vs fine-tuned, {_pts(d_zs)} vs zero-shot); "
        f"base {_pts(d_base)}, novel {_pts(d_novel)}"
    )
    warnings: list[VerdictWarning] = []
    if r(rec.hm) < r(ft.hm):
        warnings.append(
            VerdictWarning(
                code="below_fine_tuned",
                message=f"recovered HM {rec.hm:.1f} is below the fine-tuned input's {ft.hm:.1f}",
            )
        )
    if r(rec.hm) < r(zs.hm):
        warnings.append(
            VerdictWarning(
                code="below_zero_shot", message=f"recovered HM {rec.hm:.1f} is below zero-shot's {zs.hm:.1f}"
            )
        )
    if r(ft.base) - r(rec.base) > base_drop_margin:
        warnings.append(
            VerdictWarning(
                code="base_drop",
                message=f"base accuracy fell {ft.base - rec.base:.1f} points ({ft.base:.1f} -> {rec.base:.1f}), "
                f"more than the {base_drop_margin:g}-point margin",
            )
        )
    if baselines is not None:
        fi = baselines.feature_interpolation
        naive = [
            (f"feature interpolation (alpha {fi.alpha:g})", fi.hm),
            ("zero-shot + fine-tuned ensemble", baselines.ensemble.hm),
        ]
        for name, hm in naive:
            if r(hm) > r(rec.hm):
                warnings.append(
                    VerdictWarning(
                        code="baseline_better",
                        message=f"{name} beats the recovered model: HM {hm:.1f} vs {rec.hm:.1f}",
                    )
                )
    if warnings:
        text += ". Warning: " + "; ".join(w.message for w in warnings)
    return Verdict(
        text=text,
        ok=not warnings,
        warnings=warnings,
        hm=rec.hm,
        hm_vs_fine_tuned=d_ft,
        hm_vs_zero_shot=d_zs,
        base_vs_fine_tuned=d_base,
        novel_vs_fine_tuned=d_novel,
    )


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
    """One epoch of training: mean loss and its parts (ce: cross-entropy, zs: zero-shot surrogate
    (unweighted), lmc: path term (unweighted); loss = ce + W * zs + W_LMC * lmc), the learning rate, and
    top-1 accuracy (%) on the validation split after the epoch when the task has one."""

    epoch: int
    loss: float
    ce: float
    zs: float
    lmc: float
    lr: float
    val_acc: float | None = None


class HeadSplit(_Model):
    """Accuracy (%) and mean CE of every head model on one split (linear-head jobs)."""

    name: str  # "val", "test", or the registered name of a shifted split
    kind: str  # "validation" | "in_distribution" | "shift"
    images: int
    classes: int
    accuracy: dict[str, float]  # model -> %
    loss: dict[str, float]  # model -> mean CE (ensembles: NLL of the averaged probabilities)


class WiseFTSweep(_Model):
    """Weight interpolation W(a) = (1 - a) W_zs + a W_ft, b(a) = a b_ft (a = 0: zero-shot, 1: fine-tuned)."""

    alphas: list[float]
    accuracy: dict[str, list[float]]  # split name -> accuracy per alpha
    loss: dict[str, list[float]]
    best_alpha: float  # best accuracy on ``selected_on`` (ties: smaller loss, then smaller alpha)
    selected_on: str


class HeadReport(_Model):
    """Linear-head MergeTune (ALGORITHM.md section 3): per-split accuracies, ensembles, WiSE-FT sweep."""

    classes: int
    dim: int
    bias: bool
    #: model name -> what it is (zero_shot, fine_tuned, merged, merged_zs_ensemble, endpoint_ensemble, wise_ft)
    models: dict[str, str]
    splits: list[HeadSplit]
    wise_ft: WiseFTSweep


class ExtraEvaluation(_Model):
    """One row of ``RecoveryResult.extra_evaluations`` (stored as its flat dict, for the report table).

    Accuracies (%) on the dataset's test split over its full class list (``mapping`` says how the
    classes relate to the job's: "same" classes, a "subset" mapped by wnid or name (ImageNet-A/-R
    style), or "other" classes (cross-dataset; a linear head has no rows for them: None)."""

    dataset: str
    kind: str  # "shift" | "cross_dataset"
    mapping: str  # "same" | "subset" | "other"
    classes: int
    images: int
    zero_shot: float
    fine_tuned: float | None = None
    recovered: float | None = None
    recovered_zs_ensemble: float | None = None
    endpoint_ensemble: float | None = None
    wise_ft: float | None = None


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
    #: linear-head jobs only; absent from the dump of prompt jobs (their report.json keys are unchanged)
    head: HeadReport | None = None
    #: computed from metrics and baselines when not given (compute_verdict)
    verdict: Verdict | None = None

    @model_validator(mode="after")
    def _fill_verdict(self) -> RecoveryResult:
        if self.verdict is None:
            self.verdict = compute_verdict(self.metrics, self.baselines)
        return self

    @model_serializer(mode="wrap")
    def _drop_empty_head(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        if data.get("head", 0) is None:
            del data["head"]
        return data
