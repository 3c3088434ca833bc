"""MMA (Multi-Modal Adapter) on open_clip's CLIP towers, and MergeTune for it (ALGORITHM.md section 6c).

- :class:`MMAAdapters`: MMA's ``AdapterLearner`` parameters with MMA's exact state-dict keys.
- :class:`MMAModel`: the frozen backbone with adapters on blocks ``start..end`` of both towers. Blocks
  below ``start`` are frozen and untouched by the adapters, so their outputs are computed once per
  image view (:meth:`MMAModel.image_prefix`) and once per class prompt (cached at construction); every
  training step runs only blocks ``start..`` (:meth:`MMAModel.image_features`, :meth:`text_features`).
- :func:`mma_loss`: CE + W_LMC * mean_k CE with classifier n((1 - t_k) G_w + t_k G_zs).
- :func:`train_mma`: the training loop (stage 1 with ``w_lmc = 0``, MergeTune otherwise), resumable.
- :func:`train_mma_stage1` and :func:`recover_mma`: entry points for the demo, tests and the worker.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mergetune.core.checkpoints.mma_layout import MMA_TEXT_INIT, AdapterLayout, default_span
from mergetune.core.config import FeatureMode, MMAHyperparameters, alphas, path_points
from mergetune.core.errors import Cancelled, ConfigError
from mergetune.core.evaluation.evaluate import accuracy, barrier
from mergetune.core.evaluation.result import (
    UNMOVED_FRACTION,
    Baselines,
    Curve,
    EpochLog,
    FeatureInterpolation,
    Metrics,
    RecoveryResult,
    SplitMetrics,
    with_warning,
)
from mergetune.core.method.objectives import LossParts, classification_loss, path_loss
from mergetune.core.method.train import EpochEndFn, EpochMeter, ProgressFn, SgdRun, StopFn
from mergetune.core.model.backbone import Backbone
from mergetune.core.model.features import (
    TaskLike,
    TrainFeatures,
    _augment_prepared,
    _mix,
    labels_of,
)
from mergetune.core.model.prompts import _clean, encode_template

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------
# parameters


def _adapter_list(width: int, n_layers: int, layout: AdapterLayout) -> nn.ModuleList:
    """MMA's ``_build_adapter``: a list of ``n_layers + 1`` entries, None outside ``start..end``."""
    items: list[nn.Module | None] = [None] * (n_layers + 1)
    for i in layout.indices:
        if width == layout.dim:  # the shared middle layer (and MMA's rule for a tower as narrow as dim)
            items[i] = nn.Sequential(nn.Linear(width, layout.dim), nn.ReLU())
        else:
            items[i] = nn.Sequential(
                OrderedDict(
                    [
                        ("down", nn.Sequential(nn.Linear(width, layout.dim), nn.ReLU())),
                        ("up", nn.Linear(layout.dim, width)),
                    ]
                )
            )
    return nn.ModuleList(items)  # type: ignore[arg-type]  # None entries keep MMA's indices


class MMAAdapters(nn.Module):
    """The trainable part of MMA; ``state_dict()`` keys are MMA's (``text_adapter.5.down.0.weight``...)."""

    def __init__(self, layout: AdapterLayout, text_layers: int, visual_layers: int, *, seed: int = 0) -> None:
        super().__init__()
        if layout.end > min(text_layers, visual_layers):
            raise ConfigError(
                f"adapters reach block {layout.end} of towers with {text_layers} / {visual_layers} blocks",
                param="checkpoint_id",
            )
        self.layout = layout
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.text_adapter = _adapter_list(layout.text_width, text_layers, layout)
            self.visual_adapter = _adapter_list(layout.visual_width, visual_layers, layout)
            # MMA sizes the shared list by the image tower's depth
            self.shared_adapter = _adapter_list(layout.dim, visual_layers, layout)
            for m in self.modules():  # MMA's init
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.constant_(m.bias, 0)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Detached CPU fp32 copies, MMA's keys."""
        return {k: v.detach().float().cpu().clone() for k, v in self.state_dict().items()}

    def load_tensors(self, tensors: Mapping[str, Any]) -> None:
        own = self.state_dict()
        missing = [k for k in own if k not in tensors]
        if missing:
            raise ConfigError(f"MMA adapter tensors missing: {missing[:4]}", param="checkpoint_id")
        with torch.no_grad():
            for k, v in own.items():
                src = torch.as_tensor(tensors[k])
                if tuple(src.shape) != tuple(v.shape):
                    raise ConfigError(
                        f"MMA tensor {k} has shape {list(src.shape)}; expected {list(v.shape)}",
                        param="checkpoint_id",
                    )
                v.copy_(src.to(v.device, v.dtype))

    def zero_(self) -> MMAAdapters:
        """All adapters output zero: the plain backbone (the zero-shot end of adapter space)."""
        with torch.no_grad():
            for p in self.parameters():
                p.zero_()
        return self


def _layers(model: Any) -> tuple[int, int]:
    return len(model.transformer.resblocks), len(model.visual.transformer.resblocks)


@torch.no_grad()
def mma_buffers(
    backbone: Backbone, classnames: Sequence[str], text_init: str = MMA_TEXT_INIT
) -> tuple[torch.Tensor, torch.Tensor]:
    """MMA's class-dependent buffers (``token_embedding`` [C, 77, Wt], ``tokenized_prompts`` [C, 77]) of
    "<text_init> <name>." as its AdapterLearner builds them (CPU fp32 / int64)."""
    tokens = backbone.tokenizer([f"{text_init} {_clean(n)}." for n in classnames]).to(backbone.device)
    model: Any = backbone.model
    emb = model.token_embedding(tokens).float()
    return emb.cpu(), tokens.cpu()


def layout_for(backbone: Backbone, *, dim: int = 32, start: int | None = None) -> AdapterLayout:
    """The adapter layout a fresh MMA run uses on ``backbone``: MMA's 5..12 on 12-block towers, the
    documented proportional rule (:func:`mergetune.core.checkpoints.mma_layout.default_span`) elsewhere."""
    model: Any = backbone.model
    t, v = _layers(model)
    s, e = default_span(min(t, v))
    return AdapterLayout(
        text_width=int(model.ln_final.weight.shape[0]),
        visual_width=int(model.visual.ln_post.weight.shape[0]),
        start=start or s,
        end=e,
        dim=dim,
    )


def backbone_widths(backbone: Backbone) -> dict[str, int]:
    model: Any = backbone.model
    t, v = _layers(model)
    return {
        "text_width": int(model.ln_final.weight.shape[0]),
        "visual_width": int(model.visual.ln_post.weight.shape[0]),
        "text_layers": t,
        "visual_layers": v,
    }


# ---------------------------------------------------------------------------------------------------
# the adapted towers


def _run_blocks(
    transformer: Any,
    x: torch.Tensor,
    lo: int,
    hi: int,
    *,
    seq: nn.ModuleList | None,
    shared: nn.ModuleList | None,
    scale: float,
    attn_mask: torch.Tensor | None,
) -> torch.Tensor:
    """Blocks ``lo..hi`` (1-based, inclusive) on batch-first ``x``; block i adds
    ``scale * up_i(shared_i(down_i(ln_1_i(x))))`` where ``seq[i]`` exists."""
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    for i in range(lo, hi + 1):
        block = transformer.resblocks[i - 1]
        out = block(x, attn_mask=attn_mask)
        a: Any = seq[i] if seq is not None and i < len(seq) else None
        if a is not None:
            assert shared is not None
            y = a.down(block.ln_1(x))
            y = shared[i](y)
            out = out + a.up(y) * scale
        x = out
    if not transformer.batch_first:
        x = x.transpose(0, 1)
    return x


class MMAModel:
    """The frozen backbone plus MMA adapters for a class list (MMA's prompts: "a photo of a <name>.")."""

    def __init__(
        self,
        backbone: Backbone,
        classnames: Sequence[str],
        layout: AdapterLayout,
        *,
        scale: float = 0.001,
        text_init: str = MMA_TEXT_INIT,
    ) -> None:
        if not classnames:
            raise ConfigError("the class list is empty", param="classnames")
        model: Any = backbone.model
        t_layers, v_layers = _layers(model)
        problem = layout.backbone_problem(**backbone_widths(backbone))
        if problem:
            raise ConfigError(problem, param="backbone.model")
        self.backbone = backbone
        self.model = model
        self.layout = layout
        self.scale = float(scale)
        self.text_layers, self.visual_layers = t_layers, v_layers
        self.start = layout.start
        self.classnames = [_clean(n) for n in classnames]
        self.set_classnames(self.classnames, text_init)

    # -- text -----------------------------------------------------------------------------------
    @torch.no_grad()
    def text_prefix(
        self, classnames: Sequence[str], text_init: str = MMA_TEXT_INIT
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states entering block ``start`` [C, L, W], tokens [C, L]) of MMA's class prompts,
        trimmed after the last EOT (exact: causal mask, EOT pooling)."""
        m = self.model
        prompts = [f"{text_init} {_clean(n)}." for n in classnames]
        tokens = self.backbone.tokenizer(prompts).to(self.backbone.device)
        pool = getattr(m, "text_pool_type", "argmax")
        if m.attn_mask is not None and pool == "argmax":
            length = int(tokens.argmax(dim=-1).max().item()) + 1
        else:
            length = tokens.shape[1]
        tokens = tokens[:, :length]
        cast = m.transformer.get_cast_dtype()
        x = m.token_embedding(tokens).to(cast) + m.positional_embedding[:length].to(cast)
        x = _run_blocks(
            m.transformer,
            x,
            1,
            self.start - 1,
            seq=None,
            shared=None,
            scale=0.0,
            attn_mask=self._mask(length),
        )
        return x, tokens

    def _mask(self, length: int) -> torch.Tensor | None:
        mask = self.model.attn_mask
        return mask[:length, :length] if mask is not None else None

    def set_classnames(self, classnames: Sequence[str], text_init: str = MMA_TEXT_INIT) -> None:
        self.classnames = [_clean(n) for n in classnames]
        self._text_h, self._tokens = self.text_prefix(self.classnames, text_init)

    def text_features(
        self, adapters: MMAAdapters | None, prefix: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """G: [C, E] unnormalised text features of the class prompts (from the cached block-``start`` input)."""
        m = self.model
        h, tokens = prefix if prefix is not None else (self._text_h, self._tokens)
        x = _run_blocks(
            m.transformer,
            h,
            self.start,
            self.text_layers,
            seq=adapters.text_adapter if adapters is not None else None,
            shared=adapters.shared_adapter if adapters is not None else None,
            scale=self.scale,
            attn_mask=self._mask(h.shape[1]),
        )
        x = m.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), tokens.argmax(dim=-1)]
        proj = m.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    # -- image ----------------------------------------------------------------------------------
    def image_prefix(self, pixels: torch.Tensor) -> torch.Tensor:
        """Hidden states entering block ``start`` [B, N, W] (frozen blocks; no gradient)."""
        v = self.model.visual
        with torch.no_grad():
            x = v._embeds(pixels.to(self.backbone.device))
            return _run_blocks(
                v.transformer, x, 1, self.start - 1, seq=None, shared=None, scale=0.0, attn_mask=None
            )

    def image_features(self, h: torch.Tensor, adapters: MMAAdapters | None) -> torch.Tensor:
        """F: [B, E] unnormalised image features from block-``start`` hidden states."""
        v = self.model.visual
        x = _run_blocks(
            v.transformer,
            h.to(self.backbone.device),
            self.start,
            self.visual_layers,
            seq=adapters.visual_adapter if adapters is not None else None,
            shared=adapters.shared_adapter if adapters is not None else None,
            scale=self.scale,
            attn_mask=None,
        )
        pooled, _ = v._pool(x)
        if v.proj is not None:
            pooled = pooled @ v.proj
        return pooled

    def encode_pixels(self, pixels: torch.Tensor, adapters: MMAAdapters | None) -> torch.Tensor:
        """A whole image-tower pass (all blocks), as MMA's own code runs it."""
        v = self.model.visual
        x = v._embeds(pixels.to(self.backbone.device))
        x = _run_blocks(v.transformer, x, 1, self.start - 1, seq=None, shared=None, scale=0.0, attn_mask=None)
        return self.image_features(x, adapters)

    @torch.no_grad()
    def eval_image_features(
        self, prefix: torch.Tensor, adapters: MMAAdapters | None, chunk: int = 256
    ) -> torch.Tensor:
        """Normalised fp32 features of cached prefixes, in chunks (no gradient)."""
        out = []
        for i in range(0, prefix.shape[0], chunk):
            out.append(
                F.normalize(self.image_features(prefix[i : i + chunk].float(), adapters).float(), dim=-1)
            )
        if not out:
            return torch.zeros(0, self.backbone.embed_dim, device=self.backbone.device)
        return torch.cat(out)


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


@torch.no_grad()
def prefixes_of(mma: MMAModel, source: Any, records: Sequence[Any], batch_size: int = 128) -> torch.Tensor:
    """fp16 block-``start`` hidden states of ``records`` under the test transform."""
    out = []
    bb = mma.backbone
    for i in range(0, len(records), batch_size):
        pix = torch.stack([bb.test_transform(source.load_image(r.key)) for r in records[i : i + batch_size]])
        out.append(mma.image_prefix(pix).half())
    if not out:
        return torch.zeros(0, 1, mma.layout.visual_width, dtype=torch.float16, device=bb.device)
    return torch.cat(out)


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


@torch.no_grad()
def val_accuracy(
    mma: MMAModel, adapters: MMAAdapters, val: tuple[torch.Tensor, torch.Tensor]
) -> float | None:
    """Top-1 (%) on validation prefixes with text features computed now (never a cache from an earlier
    evaluation: the reference's stale cache is not copied)."""
    prefix, labels = val
    if labels.numel() == 0:
        return None
    text = F.normalize(mma.text_features(adapters).float(), dim=-1)
    feats = mma.eval_image_features(prefix, adapters)
    return accuracy(mma.backbone.logit_scale * feats @ text.T, labels)


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
class MMAEvaluation:
    """Per split (base / novel / val): normalised image features and text heads of each model."""

    metrics: Metrics
    baselines: Baselines
    curves: dict[str, dict[str, Curve]]


def _split_heads(
    mma: MMAModel, adapters: MMAAdapters | None, prefix: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    with torch.no_grad():
        return mma.text_features(adapters, prefix=prefix).float()


def _acc_loss(
    feats: torch.Tensor, heads: torch.Tensor, labels: torch.Tensor, tau: float
) -> tuple[float, float]:
    lg = tau * feats @ F.normalize(heads, dim=-1).T
    return accuracy(lg, labels), float(F.cross_entropy(lg, labels))


def _curve(points: list[dict[str, tuple[float, float]]], al: list[float]) -> Curve:
    bl = [p["base"][1] for p in points]
    nl = [p["novel"][1] for p in points]
    return Curve(
        alphas=al,
        base_acc=[p["base"][0] for p in points],
        novel_acc=[p["novel"][0] for p in points],
        base_loss=bl,
        novel_loss=nl,
        barrier_base=barrier(bl, al),
        barrier_novel=barrier(nl, al),
    )


def evaluate_mma(
    mma: MMAModel,
    task: TaskLike,
    ft: Mapping[str, torch.Tensor],
    rec: Mapping[str, torch.Tensor],
    *,
    curve_step: float = 0.1,
) -> MMAEvaluation:
    """Zero-shot (plain backbone, dataset template), fine-tuned and recovered adapters on base / novel
    test splits; interpolation curves in adapter-parameter space and in feature space; the naive
    baselines (feature interpolation chosen on validation, output ensemble)."""
    bb = mma.backbone
    tau = bb.logit_scale
    w = backbone_widths(bb)
    al = alphas(curve_step)

    def adapters_of(tensors: Mapping[str, torch.Tensor] | None) -> MMAAdapters:
        a = MMAAdapters(mma.layout, w["text_layers"], w["visual_layers"]).to(bb.device)
        if tensors is None:
            return a.zero_()
        a.load_tensors(tensors)
        return a.eval()

    ends = {"zs": None, "ft": ft, "rec": rec}
    splits = {
        "base": (list(task.test_base), list(task.base_classnames)),
        "novel": (list(task.test_novel), list(task.novel_classnames)),
        "val": (list(task.val), list(task.base_classnames)),
    }
    data: dict[str, dict[str, Any]] = {}
    for name, (recs, names) in splits.items():
        prefix = prefixes_of(mma, task.dataset, recs)
        tprefix = mma.text_prefix(names)
        labels = labels_of(recs).to(bb.device)
        feats: dict[str, torch.Tensor] = {}
        heads: dict[str, torch.Tensor] = {}
        for k, t in ends.items():
            a = adapters_of(t)
            feats[k] = mma.eval_image_features(prefix, a if t is not None else None)
            heads[k] = (
                _split_heads(mma, a, tprefix) if t is not None else encode_template(bb, names, task.template)
            )
        data[name] = {"prefix": prefix, "tprefix": tprefix, "labels": labels, "feats": feats, "heads": heads}

    def acc(split: str, k: str) -> float:
        d = data[split]
        return _acc_loss(d["feats"][k], d["heads"][k], d["labels"], tau)[0]

    metrics = Metrics(
        zero_shot=SplitMetrics.of(acc("base", "zs"), acc("novel", "zs")),
        fine_tuned=SplitMetrics.of(acc("base", "ft"), acc("novel", "ft")),
        recovered=SplitMetrics.of(acc("base", "rec"), acc("novel", "rec")),
    )

    def feature_point(split: str, a_: str, b_: str, alpha: float) -> tuple[float, float]:
        d = data[split]
        f = F.normalize((1 - alpha) * d["feats"][a_] + alpha * d["feats"][b_], dim=-1)
        g = (1 - alpha) * d["heads"][a_] + alpha * d["heads"][b_]
        return _acc_loss(f, g, d["labels"], tau)

    segs = [("zs", "ft"), ("zs", "rec"), ("ft", "rec")]
    curves: dict[str, dict[str, Curve]] = {"feature": {}, "adapter": {}}
    for a_, b_ in segs:
        curves["feature"][f"{a_}_{b_}"] = _curve(
            [{s: feature_point(s, a_, b_, x) for s in ("base", "novel")} for x in al], al
        )
    pa = {
        k: adapters_of(t).tensors() if t is None else {n: v.float().cpu() for n, v in t.items()}
        for k, t in ends.items()
    }
    for a_, b_ in segs:
        pts = []
        for x in al:
            mix = {n: (1 - x) * pa[a_][n] + x * pa[b_][n] for n in pa[a_]}
            ad = adapters_of(mix)
            row = {}
            for s in ("base", "novel"):
                d = data[s]
                f = mma.eval_image_features(d["prefix"], ad)
                row[s] = _acc_loss(f, _split_heads(mma, ad, d["tprefix"]), d["labels"], tau)
            pts.append(row)
        curves["adapter"][f"{a_}_{b_}"] = _curve(pts, al)

    # baselines: the zero-shot -> fine-tuned feature segment at the alpha best on validation
    best = (0.0, -1.0)
    if data["val"]["labels"].numel():
        for x in al:
            v = feature_point("val", "zs", "ft", x)[0]
            if v > best[1]:
                best = (x, v)
    else:
        best = (0.5, 0.0)
    b_acc, n_acc = (
        feature_point("base", "zs", "ft", best[0])[0],
        feature_point("novel", "zs", "ft", best[0])[0],
    )
    fi = FeatureInterpolation(alpha=best[0], base=b_acc, novel=n_acc, hm=SplitMetrics.of(b_acc, n_acc).hm)

    def ens(split: str) -> float:
        d = data[split]
        p = sum(
            F.softmax(tau * d["feats"][k] @ F.normalize(d["heads"][k], dim=-1).T, dim=-1)
            for k in ("zs", "ft")
        )
        return accuracy(torch.as_tensor(p), d["labels"])

    baselines = Baselines(feature_interpolation=fi, ensemble=SplitMetrics.of(ens("base"), ens("novel")))
    return MMAEvaluation(metrics=metrics, baselines=baselines, curves=curves)


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
