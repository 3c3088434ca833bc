"""MMA (Multi-Modal Adapter) on open_clip's CLIP towers: the adapters and the adapted model (ALGORITHM.md section 6c).

- :class:`MMAAdapters`: MMA's ``AdapterLearner`` parameters with MMA's exact state-dict keys.
- :class:`MMAModel`: the frozen backbone with adapters on blocks ``start..end`` of both towers. Blocks
  below ``start`` are frozen and untouched by the adapters, so their outputs are computed once per
  image view (:meth:`MMAModel.image_prefix`) and once per class prompt (cached at construction); every
  training step runs only blocks ``start..`` (:meth:`MMAModel.image_features`, :meth:`text_features`).
- :func:`prefixes_of`: block-``start`` hidden states of records under the test transform (the cached
  input of evaluation and of training without augmentation).
- :func:`layout_for`, :func:`backbone_widths`, :func:`mma_buffers`: what a backbone and a class list
  give an MMA run (its adapter layout, tower sizes, MMA's class-dependent buffers).

Training and MergeTune for MMA are in :mod:`mergetune.core.method.mma`, evaluation in
:mod:`mergetune.core.evaluation.mma`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mergetune.core.checkpoints.mma_layout import MMA_TEXT_INIT, AdapterLayout, default_span
from mergetune.core.errors import ConfigError
from mergetune.core.model.backbone import Backbone
from mergetune.core.model.prompts import _clean

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
# cached inputs: block-``start`` hidden states under the test transform


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
