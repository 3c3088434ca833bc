"""Class-token positions: the service's text features equal CoOp's prompt assembly, stated from scratch.

CoOp (trainers/coop.py, PromptLearner.forward) tokenises ``"X X .. X <name>."``, keeps the SOS embedding as
the prefix and everything after the n_ctx placeholders as the suffix (class tokens, ".", EOT, padding), and
per position concatenates

- end:    prefix, ctx, suffix
- middle: prefix, ctx[:n_ctx // 2], class tokens, ctx[n_ctx // 2:], rest of the suffix
- front:  prefix, class tokens, ctx, rest of the suffix

where the class tokens are the first ``len(tokenizer.encode(name))`` rows of the suffix. Its TextEncoder adds
the positional embedding, runs the transformer and ln_final over all 77 positions and projects the row at
the EOT token (argmax of the token ids). Below that is written out again with the model's own modules only;
the service's features (``PromptLearner.text_features``, EOT-trimmed) must match to 1e-5.
"""

from __future__ import annotations

import pytest
import torch

from mergetune.core.config import BackboneSpec, ClassTokenPosition, PromptLearnerSpec
from mergetune.core.model.backbone import Backbone, load_backbone
from mergetune.core.model.prompts import PromptLearner

#: Class names of different token lengths (one, two and several BPE tokens; "_" becomes a space).
NAMES = ["forest", "sea_lake", "annual crop land", "herbaceous vegetation", "x"]
TOL = 1e-5


@pytest.fixture(scope="module")
def bb() -> Backbone:
    torch.set_num_threads(1)
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:11"))


def coop_prompts(
    bb: Backbone, names: list[str], ctx: torch.Tensor, position: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """(prompt embeddings [C, 77, D], token ids [C, 77]) exactly as CoOp assembles them."""
    model = bb.model
    clean = [n.replace("_", " ") for n in names]
    n_cls, n_ctx = len(clean), ctx.shape[-2]
    tokens = bb.tokenizer([" ".join(["X"] * n_ctx) + " " + name + "." for name in clean])
    with torch.no_grad():
        emb = model.token_embedding(tokens).float()
    prefix, suffix = emb[:, :1, :], emb[:, 1 + n_ctx :, :]
    name_lens = [len(bb.tokenizer.encode(name)) for name in clean]
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(n_cls, -1, -1)
    rows = []
    for i in range(n_cls):
        pre, cls_i, rest = (
            prefix[i : i + 1],
            suffix[i : i + 1, : name_lens[i]],
            suffix[i : i + 1, name_lens[i] :],
        )
        if position == "end":
            parts = [pre, ctx[i : i + 1], suffix[i : i + 1]]
        elif position == "middle":
            half = n_ctx // 2
            parts = [pre, ctx[i : i + 1, :half], cls_i, ctx[i : i + 1, half:], rest]
        else:
            parts = [pre, cls_i, ctx[i : i + 1], rest]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0), tokens


@torch.no_grad()
def coop_text_features(bb: Backbone, prompts: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CoOp's TextEncoder on open_clip's modules (batch-first transformer), all 77 positions."""
    model = bb.model
    x = prompts + model.positional_embedding
    x = model.transformer(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def feature_gap(bb: Backbone, ctx: torch.Tensor, position: str) -> float:
    spec = PromptLearnerSpec(
        n_ctx=ctx.shape[-2],
        csc=ctx.dim() == 3,
        class_token_position=ClassTokenPosition(position),
        ctx_init=None,
    )
    learner = PromptLearner(bb, NAMES, ctx, spec)
    with torch.no_grad():
        ours = learner.text_features().float()
    ref = coop_text_features(bb, *coop_prompts(bb, NAMES, ctx.float(), position))
    assert ours.shape == ref.shape == (len(NAMES), bb.embed_dim)
    return float((ours - ref).abs().max())


@pytest.mark.parametrize("position", ["end", "middle", "front"])
@pytest.mark.parametrize("csc", [False, True], ids=["generic", "csc"])
@pytest.mark.parametrize("n_ctx", [4, 3, 16])
def test_service_features_equal_coop_assembly(bb: Backbone, position: str, csc: bool, n_ctx: int) -> None:
    g = torch.Generator().manual_seed(n_ctx * 10 + csc)
    shape = (len(NAMES), n_ctx, bb.text_width) if csc else (n_ctx, bb.text_width)
    ctx = torch.randn(shape, generator=g) * 0.5
    assert feature_gap(bb, ctx, position) < TOL


def test_positions_give_different_features(bb: Backbone) -> None:
    """The position matters: a middle/front checkpoint read as end gives other features (the reported bug)."""
    ctx = torch.randn((4, bb.text_width), generator=torch.Generator().manual_seed(0))
    feats = {}
    for position in ("end", "middle", "front"):
        spec = PromptLearnerSpec(n_ctx=4, class_token_position=ClassTokenPosition(position), ctx_init=None)
        feats[position] = PromptLearner(bb, NAMES, ctx, spec).text_features().detach()
    for a, b in (("end", "middle"), ("end", "front"), ("middle", "front")):
        assert (feats[a] - feats[b]).abs().max() > 1e-3
    # and a middle-trained context assembled as CoOp does it in middle is what the service computes
    assert feature_gap(bb, ctx, "middle") < TOL
