"""Entry points the worker and the CLI call: ``train_coop`` (make a fine-tuned prompt), ``train_head``
(make a fine-tuned linear head) and ``recover`` (MergeTune continued fine-tuning of an uploaded prompt
or linear head, evaluated with curves, baselines and optional cross-dataset / shift evaluations)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mergetune.core.config import (
    FeatureMode,
    HeadHyperparameters,
    Hyperparameters,
    Method,
    PromptLearnerSpec,
    alphas,
)
from mergetune.core.data import Dataset, fewshot
from mergetune.core.errors import ConfigError
from mergetune.core.evaluation.crossdata import (
    ExtraDatasets,
    builtin_shift_datasets,
    evaluate_heads_on,
    evaluate_prompts_on,
    prepare_head_split,
)
from mergetune.core.evaluation.evaluate import accuracy, curve_from_logits, evaluate
from mergetune.core.evaluation.heads import evaluate_split, wise_ft_sweep
from mergetune.core.evaluation.result import (
    Baselines,
    Curve,
    EpochLog,
    FeatureInterpolation,
    HeadReport,
    Metrics,
    RecoveryResult,
    SplitMetrics,
)
from mergetune.core.method.heads import fit_head
from mergetune.core.method.objectives import LossWeights
from mergetune.core.method.train import EpochEndFn, ProgressFn, StopFn, train_prompts, use_amp
from mergetune.core.model.backbone import Backbone
from mergetune.core.model.features import (
    EvalFeatures,
    RecordLike,
    TaskLike,
    TrainFeatures,
    encode_records,
    labels_of,
)
from mergetune.core.model.heads import HEAD_MODELS, Head, head_from, head_models, interpolate, zero_shot_head
from mergetune.core.model.prompts import PromptLearner, encode_template, init_ctx

logger = logging.getLogger(__name__)


@dataclass
class RecoveryOutput:
    #: recovered context, CPU fp32, same shape as ctx_ft; for linear heads {"weight", "bias"?}
    ctx: Any
    result: RecoveryResult


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()
        self._start = self._t

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self._t, 6)
        self._t = now

    def total(self) -> dict[str, float]:
        return {**self.timings, "total": round(time.perf_counter() - self._start, 6)}


def _check_task(task: TaskLike) -> None:
    if not task.base_classnames:
        raise ConfigError("the task has no base classes", param="classnames")
    if not task.train:
        raise ConfigError("the few-shot training set is empty", param="dataset")


def _train_features(backbone: Backbone, task: TaskLike, hp: Hyperparameters) -> TrainFeatures:
    return TrainFeatures(
        backbone,
        task.dataset,
        task.train,
        mode=hp.feature_mode,
        batch_size=hp.batch_size,
        seed=hp.seed,
        views=hp.bank_views,
    )


def train_coop(
    backbone: Backbone,
    task: TaskLike,
    hp: Hyperparameters,
    spec: PromptLearnerSpec = PromptLearnerSpec(),
    *,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    method: Method = Method.coop,
) -> torch.Tensor:
    """Fine-tune a context from ``spec``'s init on the base classes: CoOp (CE only) or, with
    ``method=Method.kgcoop``, KgCoOp (CE + ``hp.w_zs`` * (1 - cos to the template anchor)).
    Returns ctx [M, D] or [C, M, D] on the CPU."""
    _check_task(task)
    method = Method(method)
    if method == Method.linear_head:
        raise ConfigError("train_coop trains prompts; linear heads are not prompts", param="method")
    ctx0 = init_ctx(backbone, spec, len(task.base_classnames), seed=hp.seed)
    learner = PromptLearner(backbone, task.base_classnames, ctx0, spec)
    batches = _train_features(backbone, task, hp)
    anchor = None
    weights = LossWeights.coop()
    if method == Method.kgcoop:
        weights = LossWeights.kgcoop(hp.w_zs, hp.loss_type)
        anchor = encode_template(backbone, task.base_classnames, task.template)
    train_prompts(
        learner,
        batches,
        hp,
        weights,
        tau=backbone.logit_scale,
        anchor=anchor,
        on_progress=on_progress,
        should_stop=should_stop,
    )
    return learner.ctx.detach().cpu().clone()


def _split_sha(task: TaskLike) -> str:
    value = task.split_sha256
    return str(value() if callable(value) else value)


def _resolve_spec(ctx_ft: torch.Tensor, spec: PromptLearnerSpec | None) -> PromptLearnerSpec:
    csc = ctx_ft.dim() == 3
    if spec is None:
        return PromptLearnerSpec(n_ctx=int(ctx_ft.shape[-2]), csc=csc, ctx_init=None)
    if spec.csc != csc:
        raise ConfigError(
            f"prompt spec says csc={spec.csc} but the checkpoint context has rank {ctx_ft.dim()}",
            param="prompt.csc",
        )
    return spec.model_copy(update={"n_ctx": int(ctx_ft.shape[-2])})


def recover(
    backbone: Backbone,
    task: TaskLike,
    ctx_ft: torch.Tensor,
    hp: Hyperparameters | HeadHyperparameters,
    *,
    method: Method = Method.coop,
    spec: PromptLearnerSpec | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    resume_state: dict[str, Any] | None = None,
    on_epoch_end: EpochEndFn | None = None,
    extra_datasets: ExtraDatasets | None = None,
) -> RecoveryOutput:
    """MergeTune (ALGORITHM.md section 2) from ``ctx_ft`` on ``task``'s base classes, then evaluation.

    ``method`` names where ``ctx_ft`` came from (coop or kgcoop; both are continued with the same
    objective). ``spec`` only matters for the class-token position (defaults: end, from ctx's shape).

    ``method=Method.linear_head``: ``ctx_ft`` is the fine-tuned head ({"weight", "bias"?}, a
    (weight, bias) pair or a weight tensor) and ``hp`` a HeadHyperparameters; see ``mergetune.core.method.heads`` and
    :func:`recover_head`. ``extra_datasets`` [(name, Dataset)]: evaluated on their full class lists
    into ``result.extra_evaluations`` (``mergetune.core.evaluation.crossdata``); None means none for prompts, and the
    registered shifted splits of a built-in dataset for heads.
    """
    method = Method(method)
    if method == Method.linear_head:
        if not isinstance(hp, HeadHyperparameters):
            raise ConfigError("method linear_head takes HeadHyperparameters", param="method")
        return recover_head(
            backbone,
            task,
            ctx_ft,
            hp,
            on_progress=on_progress,
            should_stop=should_stop,
            resume_state=resume_state,
            on_epoch_end=on_epoch_end,
            extra_datasets=extra_datasets,
        )
    if not isinstance(hp, Hyperparameters):
        raise ConfigError(f"method {method.value} takes Hyperparameters", param="method")
    timer = _Timer()
    _check_task(task)
    if not torch.is_tensor(ctx_ft):
        raise ConfigError("ctx_ft must be a tensor", param="file")
    ctx_ft = ctx_ft.detach().float().cpu().clone()
    if not torch.isfinite(ctx_ft).all():
        raise ConfigError("the fine-tuned context has non-finite values", param="file")
    spec = _resolve_spec(ctx_ft, spec)
    learner = PromptLearner(backbone, task.base_classnames, ctx_ft, spec)  # validates width / class count
    timer("setup")

    batches = _train_features(backbone, task, hp)
    timer("train_features")
    anchor = encode_template(backbone, task.base_classnames, task.template)
    with torch.no_grad():
        ft_feats = learner.text_features().float()  # constant G_ft, computed once
    timer("constant_text_features")
    val_records = list(task.val)
    val = (encode_records(backbone, task.dataset, val_records), labels_of(val_records).to(backbone.device))
    timer("val_features")

    history = train_prompts(
        learner,
        batches,
        hp,
        LossWeights.mergetune(hp),
        tau=backbone.logit_scale,
        anchor=anchor,
        ft_feats=ft_feats,
        on_progress=on_progress,
        should_stop=should_stop,
        resume_state=resume_state,
        on_epoch_end=on_epoch_end,
        val=val if val_records else None,
    )
    timer("training")
    ctx_rec = learner.ctx.detach().cpu().clone()

    eval_feats = EvalFeatures(backbone, task, known={"val": val})
    ev = evaluate(
        backbone,
        task,
        ctx_ft,
        ctx_rec,
        spec=spec,
        eval_feats=eval_feats,
        curve_step=hp.curve_step,
        timer=timer,
    )
    config = {
        "method": method.value,
        "backbone": {
            "model": backbone.name,
            "pretrained": backbone.pretrained,
            "identity": backbone.identity,
        },
        "hyperparameters": hp.model_dump(mode="json"),
        "prompt": spec.model_dump(mode="json"),
        "classes": {"base": list(task.base_classnames), "novel": list(task.novel_classnames)},
        "template": task.template,
        "split_sha256": _split_sha(task),
        "n_train": len(task.train),
        "steps_per_epoch": batches.steps_per_epoch,
        "feature_mode": batches.mode.value,
        "train_transform": batches.transform_spec.model_dump(mode="json"),
        "device": str(backbone.device),
        "amp": use_amp(hp.precision, backbone.device),
        "logit_scale": backbone.logit_scale,
        "ensemble": "mean of softmax probabilities",
    }
    extra = []
    if extra_datasets:
        ds = task.dataset
        source = list(getattr(ds, "classnames", None) or [*task.base_classnames, *task.novel_classnames])
        for name, extra_ds in extra_datasets:
            extra.append(
                evaluate_prompts_on(
                    backbone, name, extra_ds, ctx_ft, ctx_rec, spec,
                    source_classnames=source, source_wnids=getattr(ds, "wnids", None),
                ).model_dump(mode="json")
            )  # fmt: skip
        timer("extra_evaluations")
    result = RecoveryResult(
        metrics=ev.metrics,
        baselines=ev.baselines,
        curves=ev.curves,
        training=[EpochLog.model_validate(h) for h in history],
        timings=timer.total(),
        config=config,
        extra_evaluations=extra,
    )
    logger.info(
        "recovered: base %.2f novel %.2f hm %.2f",
        result.metrics.recovered.base,
        result.metrics.recovered.novel,
        result.metrics.recovered.hm,
    )
    return RecoveryOutput(ctx=ctx_rec, result=result)


# ----------------------------------------------------------------------------------------------------
# linear heads (ALGORITHM.md section 3)


@dataclass
class HeadData:
    """What a linear head is trained and evaluated on. ``rows[i]`` is the dataset label of head row i;
    record labels in ``train`` / ``val`` are row indices."""

    dataset: Dataset
    rows: list[int]
    train: Sequence[RecordLike]
    val: Sequence[RecordLike]
    setting: str  # "all_classes" (robust fine-tuning) | "base_classes"

    @property
    def classnames(self) -> list[str]:
        return [self.dataset.classnames[i] for i in self.rows]

    def wnids(self) -> list[str] | None:
        w = self.dataset.wnids
        return None if w is None else [w[i] for i in self.rows]


def head_data(task: TaskLike, n_rows: int, hp: HeadHyperparameters) -> HeadData:
    """A head over all of the dataset's classes (robust fine-tuning): ``hp.shots`` per class from the
    train split (seeded by ``hp.seed``, as mergetune.core.data.fewshot), the whole val split (or, without
    one, min(shots, 4) per class of the unused train items) for model selection. A head over the base
    classes only: the task's few-shot train and val. Any other row count: ConfigError."""
    ds = getattr(task, "dataset", None)
    if not isinstance(ds, Dataset):
        raise ConfigError("linear-head jobs need a dataset with its full class list", param="dataset")
    base_labels = list(getattr(task, "base_labels", []))
    if n_rows == ds.num_classes:
        rng = random.Random(hp.seed)
        train_all = list(ds.splits.get("train", []))
        train = fewshot(train_all, hp.shots, rng)
        val = list(ds.splits.get("val") or [])
        if not val:
            taken = {r.key for r in train}
            val = fewshot([r for r in train_all if r.key not in taken], min(hp.shots, 4), rng)
        data = HeadData(ds, list(range(ds.num_classes)), train, val, "all_classes")
    elif base_labels and n_rows == len(base_labels):
        data = HeadData(ds, base_labels, list(task.train), list(task.val), "base_classes")
    else:
        raise ConfigError(
            f"the head has {n_rows} classes; the dataset has {ds.num_classes} "
            f"({len(base_labels)} base classes)",
            code="class_mismatch",
            param="checkpoint_id",
        )
    if not data.train:
        raise ConfigError("the head's training set is empty", param="dataset")
    return data


def _head_batches(backbone: Backbone, data: HeadData, hp: HeadHyperparameters) -> TrainFeatures:
    # frozen encoder, no augmentation: features encoded once for the whole job (exact)
    return TrainFeatures(
        backbone, data.dataset, data.train, mode=FeatureMode.none, batch_size=hp.batch_size, seed=hp.seed
    )


def train_head(
    backbone: Backbone,
    task: TaskLike,
    hp: HeadHyperparameters,
    *,
    init: str = "zero_shot",
    bias: bool = True,
    all_classes: bool = True,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
) -> dict[str, torch.Tensor]:
    """Fine-tune a linear head (plain CE, SGD on cached features; demos and tests): over all of the
    dataset's classes (``all_classes``) or the base classes. ``init``: "zero_shot" (W_zs, as in
    WiSE-FT) or "zeros" (logistic regression from scratch). Returns {"weight" [C, D], "bias" [C]?}."""
    ds = getattr(task, "dataset", None)
    if not isinstance(ds, Dataset):
        raise ConfigError("train_head needs a dataset with its full class list", param="dataset")
    n_rows = ds.num_classes if all_classes else len(task.base_classnames)
    data = head_data(task, n_rows, hp)
    tau = backbone.logit_scale
    zs = zero_shot_head(encode_template(backbone, data.classnames, task.template), tau).detached()
    if init == "zero_shot":
        w0 = zs.weight
    elif init == "zeros":
        w0 = torch.zeros_like(zs.weight)
    else:
        raise ConfigError(f"unknown head init {init!r}", param="init")
    start = Head(w0, torch.zeros(w0.shape[0]) if bias else None)
    head, _ = fit_head(
        _head_batches(backbone, data, hp),
        start,
        hp,
        on_progress=on_progress,
        should_stop=should_stop,
        device=backbone.device,
    )
    return head.as_dict()


def _extend(head: Head, full_zs: Head, rows: list[int]) -> Head:
    """The head over every dataset class: its own rows where it has them, zero-shot rows elsewhere."""
    w = full_zs.weight.clone()
    w[rows] = head.weight
    b = None
    if head.bias is not None:
        b = torch.zeros(w.shape[0])
        b[rows] = head.bias
    return Head(w, b)


def _subset(split: tuple[torch.Tensor, torch.Tensor], labels: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of ``labels`` (dataset labels), relabelled to their index in ``labels``."""
    feats, y = split
    lut = torch.full((int(y.max()) + 1 if y.numel() else 1,), -1, dtype=torch.long)
    for i, lab in enumerate(labels):
        if lab < lut.numel():
            lut[lab] = i
    mapped = lut[y.cpu()].to(y.device)
    keep = mapped >= 0
    return feats[keep], mapped[keep]


def _head_curve(
    ends: dict[str, tuple[Head, Head]],
    b2n: dict[str, tuple[torch.Tensor, torch.Tensor]],
    values: list[float],
) -> Curve:
    """A segment between two heads (each as (base rows, novel rows)): weights and biases linear."""

    def split(i: int, name: str) -> tuple[str, list[torch.Tensor], torch.Tensor]:
        feats, y = b2n[name]
        return name, [interpolate(ends["a"][i], ends["b"][i], t).logits(feats) for t in values], y

    return curve_from_logits(values, (split(i, name) for i, name in enumerate(("base", "novel"))))


def recover_head(
    backbone: Backbone,
    task: TaskLike,
    head_ft: Any,
    hp: HeadHyperparameters,
    *,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    resume_state: dict[str, Any] | None = None,
    on_epoch_end: EpochEndFn | None = None,
    extra_datasets: ExtraDatasets | None = None,
) -> RecoveryOutput:
    """Linear-head MergeTune from ``head_ft`` (init W = W_ft), then evaluation of the zero-shot,
    fine-tuned and merged heads, the two output ensembles and the WiSE-FT sweep (alpha chosen on val)
    on val, the in-distribution test split and every shifted split (``result.head``).

    ``result.metrics`` / ``baselines`` / ``curves`` keep the prompt-job shape: base and novel test
    images classified among base / novel classes by the head's rows (rows the head lacks, for a
    base-class head, are zero-shot rows); feature_interpolation is WiSE-FT at the chosen alpha; the
    "classifier" curves interpolate head weights and biases linearly (no normalisation)."""
    timer = _Timer()
    ft = head_from(head_ft)
    if ft.weight.shape[1] != backbone.embed_dim:
        raise ConfigError(
            f"head input width {ft.weight.shape[1]} does not match the backbone's embed width "
            f"{backbone.embed_dim}",
            code="width_mismatch",
            param="checkpoint_id",
        )
    data = head_data(task, ft.weight.shape[0], hp)
    ds = data.dataset
    tau = backbone.logit_scale
    full_zs = zero_shot_head(encode_template(backbone, ds.classnames, task.template), tau).detached()
    zs = full_zs.rows(data.rows)
    timer("setup")
    batches = _head_batches(backbone, data, hp)
    timer("train_features")
    dev = backbone.device
    val = (encode_records(backbone, ds, data.val), labels_of(data.val).to(dev))
    merged, history = fit_head(
        batches, ft, hp, zs=zs, lam=hp.lam, ft=ft, w_lmc=hp.w_lmc, on_progress=on_progress,
        should_stop=should_stop, resume_state=resume_state, on_epoch_end=on_epoch_end, device=backbone.device,
        val=val,
    )  # fmt: skip
    timer("training")

    test_records = list(ds.splits.get("test", []))
    test_all = (encode_records(backbone, ds, test_records), labels_of(test_records).to(dev))
    splits = {"val": val, "test": _subset(test_all, data.rows)}
    shifts = builtin_shift_datasets(ds) if extra_datasets is None else list(extra_datasets)
    names = [name for name, _ in shifts]
    if len(set(names)) != len(names) or set(names) & set(splits):
        raise ConfigError(f"extra dataset names must be unique and not val/test: {names}", param="dataset")
    prepared = [
        prepare_head_split(backbone, name, d, source_classnames=data.classnames, source_wnids=data.wnids())
        for name, d in shifts
    ]
    timer("eval_features")
    shifted = {p.name: (p.feats, p.labels) for p in prepared if p.rows is not None}
    sweep = wise_ft_sweep(
        {**splits, **shifted},
        zs,
        ft,
        step=hp.curve_step,
        select_on="val",
        rows={p.name: p.rows for p in prepared if p.rows is not None},
    )
    models = head_models(zs, ft, merged, sweep.best_alpha)
    head_splits = [
        evaluate_split("val", "validation", val, models),
        evaluate_split("test", "in_distribution", splits["test"], models),
    ]

    # base-to-novel view, in the prompt jobs' shape
    base_labels = list(getattr(task, "base_labels", data.rows))
    novel_labels = list(getattr(task, "novel_labels", []))
    b2n = {"base": _subset(test_all, base_labels), "novel": _subset(test_all, novel_labels)}
    ext = {k: _extend(h, full_zs, data.rows) for k, h in models.items()}

    def split_metrics(h: Head) -> SplitMetrics:
        return SplitMetrics.of(
            accuracy(h.rows(base_labels).logits(b2n["base"][0]), b2n["base"][1]),
            accuracy(h.rows(novel_labels).logits(b2n["novel"][0]), b2n["novel"][1]) if novel_labels else 0.0,
        )

    def ens_metrics(a: Head, b: Head) -> SplitMetrics:
        acc = {}
        for name, labs in (("base", base_labels), ("novel", novel_labels)):
            feats, y = b2n[name]
            if not labs:
                acc[name] = 0.0
                continue
            p = a.rows(labs).logits(feats).softmax(-1) + b.rows(labs).logits(feats).softmax(-1)
            acc[name] = accuracy(p, y)
        return SplitMetrics.of(acc["base"], acc["novel"])

    metrics = Metrics(
        zero_shot=split_metrics(ext["zero_shot"]),
        fine_tuned=split_metrics(ext["fine_tuned"]),
        recovered=split_metrics(ext["merged"]),
    )
    wise = split_metrics(ext["wise_ft"])
    baselines = Baselines(
        feature_interpolation=FeatureInterpolation(
            alpha=sweep.best_alpha, base=wise.base, novel=wise.novel, hm=wise.hm
        ),
        ensemble=ens_metrics(ext["zero_shot"], ext["fine_tuned"]),
    )
    curves: dict[str, dict[str, Curve]] = {}
    if novel_labels:
        ends = {"zs": ext["zero_shot"], "ft": ext["fine_tuned"], "rec": ext["merged"]}
        rows = {k: (h.rows(base_labels), h.rows(novel_labels)) for k, h in ends.items()}
        values = alphas(hp.curve_step)
        seg_curves = {}
        for seg in ("zs_ft", "zs_rec", "ft_rec"):
            a, b = seg.split("_")
            seg_curves[seg] = _head_curve({"a": rows[a], "b": rows[b]}, b2n, values)
        curves["classifier"] = seg_curves
    timer("evaluation")

    extra: list[dict[str, Any]] = []
    for p in prepared:
        ev, split = evaluate_heads_on(
            backbone, p.name, p.dataset, models, source_classnames=data.classnames, prepared=p
        )
        extra.append(ev.model_dump(mode="json"))
        if split is not None:
            head_splits.append(split)
    if prepared:
        timer("extra_evaluations")

    report = HeadReport(
        classes=int(ft.weight.shape[0]),
        dim=int(ft.weight.shape[1]),
        bias=ft.bias is not None,
        models=dict(HEAD_MODELS),
        splits=head_splits,
        wise_ft=sweep,
    )
    config = {
        "method": Method.linear_head.value,
        "backbone": {
            "model": backbone.name,
            "pretrained": backbone.pretrained,
            "identity": backbone.identity,
        },
        "hyperparameters": hp.model_dump(mode="json"),
        "setting": data.setting,
        "classes": {
            "head": data.classnames,
            "base": list(task.base_classnames),
            "novel": list(task.novel_classnames),
        },
        "template": task.template,
        "split_sha256": _split_sha(task),
        "n_train": len(data.train),
        "n_val": len(data.val),
        "steps_per_epoch": batches.steps_per_epoch,
        "device": str(dev),
        "logit_scale": tau,
        "ensemble": "mean of softmax probabilities",
        "wise_ft_selected_on": "val",
    }
    result = RecoveryResult(
        metrics=metrics,
        baselines=baselines,
        curves=curves,
        training=[EpochLog.model_validate(h) for h in history],
        timings=timer.total(),
        config=config,
        extra_evaluations=extra,
        head=report,
    )
    test_acc = head_splits[1].accuracy
    logger.info(
        "merged head: test %.2f (zero-shot %.2f, fine-tuned %.2f)",
        test_acc["merged"],
        test_acc["zero_shot"],
        test_acc["fine_tuned"],
    )
    return RecoveryOutput(ctx=merged.as_dict(), result=result)
