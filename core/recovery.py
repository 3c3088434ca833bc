"""Entry points the worker and the CLI call: ``train_coop`` (make a fine-tuned prompt) and ``recover``
(MergeTune continued fine-tuning of an uploaded prompt, evaluated with curves and baselines)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import torch

from core.backbone import Backbone
from core.config import Hyperparameters, Method, PromptLearnerSpec
from core.errors import ConfigError
from core.evaluate import evaluate
from core.features import EvalFeatures, TaskLike, TrainFeatures
from core.objectives import LossWeights
from core.prompts import PromptLearner, encode_template, init_ctx
from core.result import EpochLog, RecoveryResult
from core.train import EpochEndFn, ProgressFn, StopFn, train_prompts, use_amp

logger = logging.getLogger(__name__)


@dataclass
class RecoveryOutput:
    ctx: torch.Tensor  # recovered context, CPU fp32, same shape as ctx_ft
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
    hp: Hyperparameters,
    *,
    method: Method = Method.coop,
    spec: PromptLearnerSpec | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    resume_state: dict[str, Any] | None = None,
    on_epoch_end: EpochEndFn | None = None,
) -> RecoveryOutput:
    """MergeTune (ALGORITHM.md section 2) from ``ctx_ft`` on ``task``'s base classes, then evaluation.

    ``method`` names where ``ctx_ft`` came from (coop or kgcoop; both are continued with the same
    objective). ``spec`` only matters for the class-token position (defaults: end, from ctx's shape).
    """
    timer = _Timer()
    _check_task(task)
    method = Method(method)
    if method == Method.linear_head:
        raise ConfigError(
            "recover() continues prompt checkpoints; linear heads are not supported here", param="method"
        )
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
    )
    timer("training")
    ctx_rec = learner.ctx.detach().cpu().clone()

    eval_feats = EvalFeatures(backbone, task)
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
        "device": str(backbone.device),
        "amp": use_amp(hp.precision, backbone.device),
        "logit_scale": backbone.logit_scale,
        "ensemble": "mean of softmax probabilities",
    }
    result = RecoveryResult(
        metrics=ev.metrics,
        baselines=ev.baselines,
        curves=ev.curves,
        training=[EpochLog(**h) for h in history],
        timings=timer.total(),
        config=config,
    )
    logger.info(
        "recovered: base %.2f novel %.2f hm %.2f",
        result.metrics.recovered.base,
        result.metrics.recovered.novel,
        result.metrics.recovered.hm,
    )
    return RecoveryOutput(ctx=ctx_rec, result=result)
