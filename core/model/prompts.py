"""CoOp-style prompt learner that reuses the loaded CLIP's own text path.

Prompt of class c: ``[SOS] ctx_1..ctx_M <class tokens> . [EOT]`` (position ``end``; ``middle`` and
``front`` as in CoOp). Only ``ctx`` is a parameter: [M, D] (generic) or [C, M, D] (class-specific).
The embeddings go through the model's own positional embedding, transformer (batch first, causal
mask), ln_final, ``text_global_pool`` and text projection, exactly like ``CLIP.encode_text``.

EOT trimming: the text transformer is causal and pooling reads the EOT token, so tokens after the
longest prompt's EOT never influence the output. ``text_features()`` runs only the first
``max(eot) + 1`` positions; ``text_features(trim=False)`` runs all 77 (tests prove them equal).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from open_clip.transformer import text_global_pool
from torch import nn

from mergetune.core.config import ClassTokenPosition, PromptLearnerSpec
from mergetune.core.errors import ConfigError
from mergetune.core.model.backbone import Backbone

ZS_CTX_TEXT = "a photo of a"


def _clean(name: str) -> str:
    return name.replace("_", " ").strip()


def _token_embedding(backbone: Backbone, tokens: torch.Tensor) -> torch.Tensor:
    model: Any = backbone.model  # open_clip CLIP; torch types Module attributes as Tensor | Module
    with torch.no_grad():
        return model.token_embedding(tokens.to(backbone.device)).float()


def _n_tokens(backbone: Backbone, text: str) -> int:
    """Number of BPE tokens of ``text`` (without SOT/EOT)."""
    tok = backbone.tokenizer
    inner = getattr(tok, "encode", None)
    if inner is not None:
        return len(inner(text))
    ids = tok([text])[0]
    return int(ids.argmax().item()) - 1  # argmax = EOT for the CLIP tokenizer


def init_ctx(
    backbone: Backbone, spec: PromptLearnerSpec, n_cls: int | None = None, *, seed: int = 0
) -> torch.Tensor:
    """Initial context: the embedding of ``spec.ctx_init`` (CoOp's "a photo of a") or N(0, 0.02).

    Returns [M, D], or [C, M, D] when ``spec.csc`` (``n_cls`` required; the text init is repeated).
    """
    if spec.ctx_init:
        n = _n_tokens(backbone, spec.ctx_init)
        if n != spec.n_ctx:
            raise ConfigError(
                f"ctx_init '{spec.ctx_init}' has {n} tokens but n_ctx is {spec.n_ctx}",
                param="prompt.n_ctx",
            )
        tokens = backbone.tokenizer([spec.ctx_init])
        ctx = _token_embedding(backbone, tokens)[0, 1 : 1 + n].clone()
        if spec.csc:
            if not n_cls:
                raise ConfigError("class-specific context needs the number of classes", param="classnames")
            ctx = ctx.unsqueeze(0).repeat(n_cls, 1, 1)
        return ctx.cpu()
    g = torch.Generator().manual_seed(seed)
    if not spec.csc:
        return torch.randn((spec.n_ctx, backbone.text_width), generator=g) * 0.02
    if not n_cls:
        raise ConfigError("class-specific context needs the number of classes", param="classnames")
    return torch.randn((n_cls, spec.n_ctx, backbone.text_width), generator=g) * 0.02


def zero_shot_ctx(backbone: Backbone, n_ctx: int) -> torch.Tensor | None:
    """The "a photo of a" context (prompt-space zero-shot end), or None when it has not ``n_ctx`` tokens."""
    spec = PromptLearnerSpec(n_ctx=max(1, _n_tokens(backbone, ZS_CTX_TEXT)), ctx_init=ZS_CTX_TEXT)
    if spec.n_ctx != n_ctx:
        return None
    return init_ctx(backbone, spec)


def _validate_ctx(backbone: Backbone, ctx: torch.Tensor, n_cls: int, csc: bool | None = None) -> None:
    if ctx.dim() not in (2, 3):
        raise ConfigError(f"ctx must be [M, D] or [C, M, D], got shape {tuple(ctx.shape)}", param="ctx")
    if ctx.shape[-1] != backbone.text_width:
        raise ConfigError(
            f"context width {ctx.shape[-1]} differs from the backbone's text width {backbone.text_width} "
            f"({backbone.name})",
            param="ctx",
        )
    if ctx.dim() == 3 and ctx.shape[0] != n_cls:
        raise ConfigError(
            f"class-specific context has {ctx.shape[0]} classes but {n_cls} class names were given",
            param="classnames",
        )
    if csc is not None and csc != (ctx.dim() == 3):
        raise ConfigError(f"spec.csc={csc} but ctx has rank {ctx.dim()}", param="prompt.csc")


class PromptLearner(nn.Module):
    """Learned context + frozen token buffers for a class list; ``text_features()`` -> [C, E]."""

    # buffers (register_buffer below), declared so that they type as tensors
    tokens: torch.Tensor
    token_prefix: torch.Tensor
    token_suffix: torch.Tensor

    def __init__(
        self,
        backbone: Backbone,
        classnames: list[str],
        ctx: torch.Tensor | None = None,
        spec: PromptLearnerSpec | None = None,
    ) -> None:
        super().__init__()
        if not classnames:
            raise ConfigError("the class list is empty", param="classnames")
        spec = spec or PromptLearnerSpec()
        names = [_clean(n) for n in classnames]
        n_cls = len(names)
        if ctx is None:
            ctx = init_ctx(backbone, spec, n_cls)
        ctx = ctx.detach().float().clone()  # never train the caller's tensor in place
        _validate_ctx(backbone, ctx, n_cls)
        n_ctx = ctx.shape[-2]
        model: Any = backbone.model  # open_clip CLIP; torch types Module attributes as Tensor | Module
        if n_ctx >= model.context_length - 2:
            raise ConfigError(f"n_ctx={n_ctx} leaves no room for class names", param="prompt.n_ctx")
        self.backbone = backbone  # plain attribute: the frozen model is not part of this module's state
        self.classnames = names
        self.n_ctx = n_ctx
        self.n_cls = n_cls
        self.csc = ctx.dim() == 3
        self.position = ClassTokenPosition(spec.class_token_position)
        self.ctx = nn.Parameter(ctx.to(backbone.device))

        placeholder = " ".join(["X"] * n_ctx)
        prompts = [f"{placeholder} {name}." for name in names]
        tokens = backbone.tokenizer(prompts).to(backbone.device)
        emb = _token_embedding(backbone, tokens)
        self.register_buffer("tokens", tokens, persistent=False)
        self.register_buffer("token_prefix", emb[:, :1].clone(), persistent=False)  # SOS
        self.register_buffer("token_suffix", emb[:, 1 + n_ctx :].clone(), persistent=False)  # class . EOT pad
        self.name_lens = [_n_tokens(backbone, name) for name in names]
        pool = getattr(model, "text_pool_type", "argmax")
        causal = getattr(model, "attn_mask", None) is not None
        # Trimming is exact only for a causal mask and EOT-based pooling.
        self.can_trim = causal and pool in ("argmax", "eos")
        if pool == "argmax":
            eot = tokens.argmax(dim=-1)
        elif pool == "eos":
            eot = (tokens == model.text_eos_id).int().argmax(dim=-1)
        else:
            eot = torch.full((n_cls,), tokens.shape[1] - 1, device=tokens.device)
        self.trim_len = int(eot.max().item()) + 1 if self.can_trim else tokens.shape[1]

    # -- assembly -------------------------------------------------------------------------------
    def prompt_embeddings(self, ctx: torch.Tensor | None = None) -> torch.Tensor:
        """[C, 77, D] prompt embeddings (CoOp's PromptLearner.forward)."""
        ctx = self.ctx if ctx is None else ctx
        prefix, suffix = self.token_prefix, self.token_suffix
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        ctx = ctx.to(prefix.dtype)
        if self.position == ClassTokenPosition.end:
            return torch.cat([prefix, ctx, suffix], dim=1)
        rows = []
        half = self.n_ctx // 2
        for i, n in enumerate(self.name_lens):
            cls_tok, rest = suffix[i : i + 1, :n], suffix[i : i + 1, n:]
            if self.position == ClassTokenPosition.middle:
                parts = [prefix[i : i + 1], ctx[i : i + 1, :half], cls_tok, ctx[i : i + 1, half:], rest]
            else:
                parts = [prefix[i : i + 1], cls_tok, ctx[i : i + 1], rest]
            rows.append(torch.cat(parts, dim=1))
        return torch.cat(rows, dim=0)

    def encode(self, embeddings: torch.Tensor, trim: bool = True) -> torch.Tensor:
        """The model's own text path on prompt embeddings -> [C, E] unnormalised."""
        model: Any = self.backbone.model  # as in __init__
        tokens = self.tokens
        length = self.trim_len if trim else embeddings.shape[1]
        cast_dtype = model.transformer.get_cast_dtype()
        x = embeddings[:, :length].to(cast_dtype) + model.positional_embedding[:length].to(cast_dtype)
        mask = model.attn_mask
        if mask is not None:
            mask = mask[:length, :length]
        x = model.transformer(x, attn_mask=mask)  # open_clip's Transformer takes batch-first input
        x = model.ln_final(x)
        x = text_global_pool(x, tokens[:, :length], model.text_pool_type, eos_token_id=model.text_eos_id)
        proj = model.text_projection
        if proj is not None:
            x = proj(x) if isinstance(proj, nn.Linear) else x @ proj
        return x

    def text_features(self, ctx: torch.Tensor | None = None, *, trim: bool = True) -> torch.Tensor:
        """G(ctx): [C, E] unnormalised text features (EOT-trimmed unless ``trim=False``)."""
        return self.encode(self.prompt_embeddings(ctx), trim=trim)

    def dassl_buffers(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(token_prefix [C,1,D], token_suffix [C,77-1-M,D]) as CoOp's checkpoints store them."""
        return self.token_prefix.detach().cpu().clone(), self.token_suffix.detach().cpu().clone()

    def forward(self) -> torch.Tensor:
        return self.text_features()


def novel_ctx(ctx: torch.Tensor) -> torch.Tensor:
    """Context for classes it was not trained on: generic as is; class-specific -> its class mean.

    Class-specific contexts have no entry for novel classes; the mean context is the documented
    stand-in used by evaluation (CoOp's base-to-novel protocol only defines generic contexts).
    """
    return ctx if ctx.dim() == 2 else ctx.mean(dim=0)


@torch.no_grad()
def encode_template(backbone: Backbone, classnames: list[str], template: str) -> torch.Tensor:
    """Zero-shot anchor G_zs: normalised features of ``template.format(name)`` -> [C, E] fp32."""
    if not classnames:
        raise ConfigError("the class list is empty", param="classnames")
    texts = [template.format(_clean(n)) for n in classnames]
    out = []
    for i in range(0, len(texts), 256):
        out.append(backbone.encode_text(texts[i : i + 256]))
    return F.normalize(torch.cat(out), dim=-1)
