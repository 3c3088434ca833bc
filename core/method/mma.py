"""MergeTune for MMA (Multi-Modal Adapter) adapters (ALGORITHM.md section 6c): the objective and the training loop.

- :func:`mma_loss`: CE + W_LMC * mean_k CE with classifier n((1 - t_k) G_w + t_k G_zs).
- :func:`train_mma`: the training loop (stage 1 with ``w_lmc = 0``, MergeTune otherwise), resumable.
- :func:`train_mma_stage1` and :func:`recover_mma`: entry points for the demo, tests and the worker.
- :func:`reference_step_loss`: the reference's step, structure for structure (benchmark and equality tests).

The adapters and the adapted model are in :mod:`mergetune.core.model.adapters`, evaluation in
:mod:`mergetune.core.evaluation.mma`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mergetune.core.checkpoints.mma_layout import AdapterLayout
from mergetune.core.config import FeatureMode, MMAHyperparameters, path_points
from mergetune.core.errors import Cancelled, ConfigError
from mergetune.core.evaluation.mma import evaluate_mma, val_accuracy
from mergetune.core.evaluation.result import UNMOVED_FRACTION, EpochLog, RecoveryResult, with_warning
from mergetune.core.method.objectives import LossParts, classification_loss, path_loss
from mergetune.core.method.train import EpochEndFn, EpochMeter, ProgressFn, SgdRun, StopFn
from mergetune.core.model.adapters import (
    MMAAdapters,
    MMAModel,
    backbone_widths,
    layout_for,
    prefixes_of,
)
from mergetune.core.model.backbone import Backbone
from mergetune.core.model.features import (
    TaskLike,
    TrainFeatures,
    _augment_prepared,
    _mix,
    labels_of,
)
from mergetune.core.model.prompts import encode_template

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# objective


def mma_loss(
    image_feats: torch.Tensor,
    labels: torch.Tensor,
    text_feats: torch.Tensor,
    tau: float,
    *,
    anchor: torch.Tensor | None = None,
    w_lmc: float = 0.0,
    num_samples: int = 5,
    normalise_endpoints: bool = False,
) -> LossParts:
    """CE(tau n(F) n(G_w)^T, y) + W_LMC * mean_k CE(tau n(F) n((1 - t_k) G_w + t_k G_zs)^T, y).

    ``image_feats`` F come from the adapted image tower (unnormalised, normalised here), ``text_feats``
    G_w are the adapted text features, unnormalised, and ``anchor`` G_zs the normalised template
    features: the endpoints are mixed on their own scales, as the reference does (section 6c).
    ``normalise_endpoints`` mixes n(G_w) with G_zs instead (the nominal t_k; not the reference)."""
    f = F.normalize(image_feats.float(), dim=-1)
    g = text_feats.float()
    ce = classification_loss(f, labels, g, tau)
    zero = ce.new_zeros(())
    lmc = zero
    total = ce
    if w_lmc > 0:
        if anchor is None:
            raise ValueError("the path term needs the zero-shot anchor G_zs")
        # path_loss mixes (1 - t) * its ft_feats + t * its text_feats
        start = F.normalize(g, dim=-1) if normalise_endpoints else g
        lmc = path_loss(f, labels, anchor.float(), start, tau, path_points(num_samples))
        total = total + w_lmc * lmc
    return LossParts(total=total, ce=ce, zs=zero, lmc=lmc)


# ---------------------------------------------------------------------------------------------------
# training inputs: block-``start`` hidden states of the training images


class PrefixBatches(TrainFeatures):
    """Yields (hidden states entering block ``start`` [b, N, W], labels [b]) batches of one epoch.

    ``exact``: a fresh seeded augmentation of every image every epoch (the reference's pipeline); the
    frozen lower blocks run once per view. ``none``: test-transform images, lower blocks run once for
    the whole job (kept in fp16)."""

    def __init__(self, mma: MMAModel, task: TaskLike, hp: MMAHyperparameters) -> None:
        super().__init__(
            mma.backbone,
            task.dataset,
            task.train,
            mode=FeatureMode.exact,
            batch_size=hp.batch_size,
            seed=hp.seed,
        )
        self.mma = mma
        self.mode = FeatureMode(hp.feature_mode)
        self.prefix: torch.Tensor | None = None
        if self.mode == FeatureMode.none:
            self.prefix = prefixes_of(mma, task.dataset, self.records)

    def _features(self, idx: torch.Tensor, view: torch.Tensor | None, epoch: int) -> torch.Tensor:
        if self.prefix is not None:
            return self.prefix[idx.to(self.prefix.device)].float()
        pixels = [
            _augment_prepared(self._prepared(i), _mix(self.seed, 4, epoch, i), self.transform)
            for i in idx.tolist()
        ]
        return self.mma.image_prefix(torch.stack(pixels))


# ---------------------------------------------------------------------------------------------------
# training loop


def _scale_grads(params: Sequence[nn.Parameter], factor: float) -> None:
    """MMA's gradient-scale layers leave the forward pass alone and divide the adapter parameters'
    gradients by ``scale`` (the rest of the graph sees ordinary gradients): this is that, applied once."""
    for p in params:
        if p.grad is not None:
            p.grad.mul_(factor)


def train_mma(
    mma: MMAModel,
    adapters: MMAAdapters,
    batches: Any,
    hp: MMAHyperparameters,
    *,
    w_lmc: float,
    anchor: torch.Tensor | None = None,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    resume_state: dict[str, Any] | None = None,
    on_epoch_end: EpochEndFn | None = None,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Train ``adapters`` in place for ``hp.epochs`` epochs (Dassl SGD, cosine per epoch, optional
    constant warm-up). Per step: one text pass and one image pass over blocks ``start..`` with gradient.

    Epoch state: ``{"epoch", "adapters": {key: Tensor}, "optimizer", "scheduler": {"epoch"}, "scaler",
    "rng", "history"}`` (tensors and plain types: ``torch.load(weights_only=True)`` reads it)."""
    device = mma.backbone.device
    params = [p for p in adapters.parameters()]
    for p in params:
        p.requires_grad_(True)
    run = SgdRun(params, hp, device)
    history: list[dict[str, Any]] = []
    start = 0
    if resume_state is not None:
        adapters.load_tensors(resume_state["adapters"])
        start, history = run.resume(resume_state)
    steps = batches.steps_per_epoch
    if steps == 0:
        raise ConfigError("the training set is empty", param="dataset")
    tau = mma.backbone.logit_scale
    anchor = anchor.float().to(device) if anchor is not None else None
    scale_grads = (lambda: _scale_grads(params, 1.0 / mma.scale)) if hp.gradient_scale else None
    for epoch in range(start, hp.epochs):
        lr = run.schedule.set_epoch(epoch)
        meter = EpochMeter(epoch, lr, epochs=hp.epochs, steps=steps, on_progress=on_progress)
        adapters.train()
        for step, (h, labels) in enumerate(batches.epoch(epoch)):
            if should_stop is not None and should_stop():
                raise Cancelled(f"stopped at epoch {epoch} step {step}")
            with torch.autocast("cuda", dtype=torch.float16, enabled=run.amp):
                text = mma.text_features(adapters)
                img = mma.image_features(h, adapters)
            parts = mma_loss(
                img, labels, text, tau, anchor=anchor, w_lmc=w_lmc if hp.path_term else 0.0,
                num_samples=hp.num_samples, normalise_endpoints=hp.normalise_endpoints,
            )  # fmt: skip
            run.step(parts.total, before_update=scale_grads)
            meter.step(step, parts)
        adapters.eval()
        log = meter.log()
        if val is not None:
            log["val_acc"] = val_accuracy(mma, adapters, val)
        history.append(log)
        logger.info("MMA epoch %d/%d loss %.4f lr %.3g", epoch + 1, hp.epochs, log["loss"], lr)
        if on_epoch_end is not None:
            on_epoch_end(run.state(epoch + 1, history, adapters=adapters.tensors()))
    for p in params:
        p.requires_grad_(False)
    return history


# ---------------------------------------------------------------------------------------------------
# entry points


def _check_task(task: TaskLike) -> None:
    if not task.base_classnames:
        raise ConfigError("the task has no base classes", param="classnames")
    if not task.train:
        raise ConfigError("the few-shot training set is empty", param="dataset")


def _val(mma: MMAModel, task: TaskLike) -> tuple[torch.Tensor, torch.Tensor]:
    recs = list(task.val)
    return prefixes_of(mma, task.dataset, recs), labels_of(recs).to(mma.backbone.device)


def train_mma_stage1(
    backbone: Backbone,
    task: TaskLike,
    hp: MMAHyperparameters,
    *,
    layout: AdapterLayout | None = None,
    on_progress: ProgressFn | None = None,
) -> tuple[dict[str, torch.Tensor], AdapterLayout, list[dict[str, Any]]]:
    """MMA fine-tuning (CE only) from MMA's initialisation on the base classes, as MMA's own trainer runs
    it (with its gradient-scale layers, whatever ``hp.gradient_scale`` says); returns (adapter tensors
    with MMA's keys, layout, history)."""
    _check_task(task)
    hp = hp.model_copy(update={"gradient_scale": True})
    layout = layout or layout_for(backbone)
    mma = MMAModel(backbone, task.base_classnames, layout, scale=hp.adapter_scale)
    w = backbone_widths(backbone)
    adapters = MMAAdapters(layout, w["text_layers"], w["visual_layers"], seed=hp.seed).to(backbone.device)
    batches = PrefixBatches(mma, task, hp)
    hist = train_mma(mma, adapters, batches, hp, w_lmc=0.0, on_progress=on_progress)
    return adapters.tensors(), layout, hist


@dataclass
class MMARecovery:
    adapters: dict[str, torch.Tensor]  # recovered, MMA's keys, CPU fp32
    result: RecoveryResult


def recover_mma(
    backbone: Backbone,
    task: TaskLike,
    ft_tensors: Mapping[str, Any],
    layout: AdapterLayout,
    hp: MMAHyperparameters,
    *,
    on_progress: ProgressFn | None = None,
    should_stop: StopFn | None = None,
    resume_state: dict[str, Any] | None = None,
    on_epoch_end: EpochEndFn | None = None,
    config: dict[str, Any] | None = None,
) -> MMARecovery:
    """MergeTune on uploaded MMA adapters: initialise at the fine-tuned adapters, train with
    :func:`mma_loss` on the base classes, evaluate (metrics, baselines, curves)."""
    _check_task(task)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    mma = MMAModel(backbone, task.base_classnames, layout, scale=hp.adapter_scale)
    w = backbone_widths(backbone)
    adapters = MMAAdapters(layout, w["text_layers"], w["visual_layers"]).to(backbone.device)
    ft = {k: torch.as_tensor(v).float() for k, v in ft_tensors.items()}
    adapters.load_tensors(ft)
    anchor = encode_template(backbone, list(task.base_classnames), task.template)
    batches = PrefixBatches(mma, task, hp)
    val = _val(mma, task)
    timings["prepare"] = round(time.perf_counter() - t0, 6)
    hist = train_mma(
        mma, adapters, batches, hp, w_lmc=hp.w_lmc, anchor=anchor, on_progress=on_progress,
        should_stop=should_stop, resume_state=resume_state, on_epoch_end=on_epoch_end, val=val,
    )  # fmt: skip
    timings["train"] = round(time.perf_counter() - t0 - timings["prepare"], 6)
    rec = adapters.tensors()
    ev = evaluate_mma(mma, task, ft, rec, curve_step=hp.curve_step)
    timings["evaluate"] = round(time.perf_counter() - t0 - timings["prepare"] - timings["train"], 6)
    timings["total"] = round(time.perf_counter() - t0, 6)
    cfg = {
        "method": "mma",
        "layout": layout.to_json(),
        "adapter_scale": hp.adapter_scale,
        "hyperparameters": hp.model_dump(mode="json"),
        "objective": "CE + W_LMC * mean_k CE(n((1-t_k) G_w + t_k G_zs)); G_zs normalised, G_w "
        + ("normalised (not the reference)" if hp.normalise_endpoints else "unnormalised (the reference)"),
        "update": "MMA's gradient-scale layers (adapter gradients / adapter_scale)"
        if hp.gradient_scale
        else "ordinary gradients (the reference's MMA_LMC)",
        **(config or {}),
    }
    change = adapter_change(ft, rec)
    cfg["adapter_change"] = change
    result = RecoveryResult(
        metrics=ev.metrics,
        baselines=ev.baselines,
        curves=ev.curves,
        training=[EpochLog(**{k: v for k, v in h.items() if k in EpochLog.model_fields}) for h in hist],
        timings=timings,
        config=cfg,
    )
    if change < UNMOVED_FRACTION and result.verdict is not None:
        hint = (
            "gradient_scale is false (the reference's update, steps 1000x smaller than MMA's own at the "
            "same lr); gradient_scale true takes MMA's"
            if not hp.gradient_scale
            else "raise lr or epochs"
        )
        result.verdict = with_warning(
            result.verdict,
            "adapters_unmoved",
            f"the recovered adapters are {change:.2%} away from the uploaded ones (relative L2): "
            f"the job barely changed the model; {hint}",
        )
    return MMARecovery(adapters=rec, result=result)


def adapter_change(ft: Mapping[str, torch.Tensor], rec: Mapping[str, torch.Tensor]) -> float:
    """||rec - ft|| / ||ft|| over all adapter tensors (L2 of the concatenation); 0 for all-zero ``ft``."""
    num = sum(float((rec[k].float() - ft[k].float()).pow(2).sum()) for k in ft)
    den = sum(float(ft[k].float().pow(2).sum()) for k in ft)
    return (num / den) ** 0.5 if den > 0 else 0.0


def reference_step_loss(
    mma: MMAModel,
    adapters: MMAAdapters,
    pixels: torch.Tensor,
    labels: torch.Tensor,
    anchor: torch.Tensor,
    *,
    w_lmc: float,
    num_samples: int,
) -> torch.Tensor:
    """The reference's MMA_LMC step, structure for structure: the main logits with one whole image pass
    and one whole text pass, then the adapted text features once more, then one whole image pass per
    path point (1 + K image passes, 2 text passes, every block). For the benchmark and equality tests."""
    tau = mma.backbone.logit_scale
    text = _text_full(mma, adapters)
    img = mma.encode_pixels(pixels, adapters)
    loss = F.cross_entropy(tau * F.normalize(img, dim=-1) @ F.normalize(text, dim=-1).T, labels)
    start = _text_full(mma, adapters)
    lmc = loss.new_zeros(())
    ts = path_points(num_samples)
    for t in ts:
        mid = start + (anchor - start) * t
        img_k = mma.encode_pixels(pixels, adapters)
        lg = tau * F.normalize(img_k, dim=-1) @ F.normalize(mid, dim=-1).T
        lmc = lmc + F.cross_entropy(lg, labels) / len(ts)
    return loss + w_lmc * lmc


def _text_full(mma: MMAModel, adapters: MMAAdapters) -> torch.Tensor:
    """Adapted text features through every block (the lower ones recomputed, as the reference does)."""
    h, tokens = mma.text_prefix(mma.classnames)
    return mma.text_features(adapters, prefix=(h, tokens))
