"""MMA (Multi-Modal Adapter) parameter layout: key names, shapes, defaults (ALGORITHM.md section 6c).

No torch import: the API validates uploads and job bodies with this module.

MMA's ``AdapterLearner`` holds three ``nn.ModuleList``s indexed by the 1-based number of the transformer
block they act on (index 0 would act on the token embedding / the patch embedding; unused by the
shipped configs). For each block i in ``start..end``::

    text_adapter.<i>.down.0.{weight [dim, Wt], bias [dim]}   text_adapter.<i>.up.{weight [Wt, dim], bias [Wt]}
    visual_adapter.<i>.down.0.{weight [dim, Wv], bias [dim]} visual_adapter.<i>.up.{weight [Wv, dim], bias [Wv]}
    shared_adapter.<i>.0.{weight [dim, dim], bias [dim]}

plus the class-dependent buffers ``token_embedding`` [C, 77, Wt] and ``tokenized_prompts`` [C, 77]
that MMA's own loader drops. Block i of a tower then computes ``block_i(x) + scale * up_i(shared_i(
down_i(ln_1_i(x))))`` (``ln_1_i`` is the block's own first LayerNorm).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

#: MMA's shipped configuration (configs/trainers/MultiModalAdapter/vit_b16_ep5.yaml).
MMA_START = 5
MMA_END = 12
MMA_DIM = 32
MMA_SCALE = 0.001
MMA_TEXT_INIT = "a photo of a"
#: The shipped config spans blocks 5..12 of 12: the upper two thirds of the tower.
MMA_REFERENCE_LAYERS = 12

BUFFER_KEYS = ("token_embedding", "tokenized_prompts")

_SEQ = re.compile(r"^(text_adapter|visual_adapter)\.(\d+)\.(down\.0|up)\.(weight|bias)$")
_SHARED = re.compile(r"^shared_adapter\.(\d+)\.0\.(weight|bias)$")


def default_span(layers: int) -> tuple[int, int]:
    """(start, end), 1-based inclusive, of the adapted blocks of a tower with ``layers`` blocks.

    12 blocks: 5..12 (MMA's config). Other depths keep the proportion: the upper
    ``round(2 * layers / 3)`` blocks (at least one) carry adapters, so a 4-block tower (the built-in
    tiny CLIP) gets blocks 2..4 and a 24-block one 9..24."""
    if layers < 1:
        raise ValueError("a tower needs at least one block")
    n = max(1, round(2 * layers / 3))
    return layers - n + 1, layers


def is_mma_key(key: str) -> bool:
    return bool(_SEQ.match(key) or _SHARED.match(key))


def looks_like_mma(keys: Sequence[str]) -> bool:
    """True when any key is one of MMA's adapter keys."""
    return any(is_mma_key(k) for k in keys)


@dataclass(frozen=True)
class AdapterLayout:
    """Where and how wide MMA's adapters are. ``start``/``end`` are 1-based block numbers (inclusive)."""

    text_width: int
    visual_width: int
    start: int = MMA_START
    end: int = MMA_END
    dim: int = MMA_DIM

    @property
    def indices(self) -> range:
        return range(self.start, self.end + 1)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Every adapter key of MMA's state dict with its shape, in MMA's order."""
        out: dict[str, tuple[int, ...]] = {}
        for tower, width in (("text_adapter", self.text_width), ("visual_adapter", self.visual_width)):
            for i in self.indices:
                out[f"{tower}.{i}.down.0.weight"] = (self.dim, width)
                out[f"{tower}.{i}.down.0.bias"] = (self.dim,)
                out[f"{tower}.{i}.up.weight"] = (width, self.dim)
                out[f"{tower}.{i}.up.bias"] = (width,)
        for i in self.indices:
            out[f"shared_adapter.{i}.0.weight"] = (self.dim, self.dim)
            out[f"shared_adapter.{i}.0.bias"] = (self.dim,)
        return out

    def to_json(self) -> dict[str, int]:
        return {
            "text_width": self.text_width,
            "visual_width": self.visual_width,
            "start": self.start,
            "end": self.end,
            "dim": self.dim,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, object]) -> AdapterLayout:
        def num(k: str) -> int:
            v = data[k]
            if not isinstance(v, int) or isinstance(v, bool):
                raise ValueError(f"{k} is not an integer")
            return v

        return cls(num("text_width"), num("visual_width"), num("start"), num("end"), num("dim"))

    def backbone_problem(
        self, *, text_width: int, visual_width: int, text_layers: int, visual_layers: int
    ) -> str | None:
        """Why these adapters cannot sit on a backbone (None: they can)."""
        if self.text_width != text_width:
            return (
                f"the MMA text adapters are {self.text_width} wide; the backbone's text width is {text_width}"
            )
        if self.visual_width != visual_width:
            return (
                f"the MMA visual adapters are {self.visual_width} wide; the backbone's image width is "
                f"{visual_width}"
            )
        depth = min(text_layers, visual_layers)
        if self.end > depth:
            return (
                f"the MMA adapters reach block {self.end}; the backbone has {text_layers} text and "
                f"{visual_layers} image blocks"
            )
        return None


def layout_from_shapes(shapes: Mapping[str, Sequence[int]]) -> AdapterLayout:
    """The layout of an MMA state dict from its keys and shapes; ValueError says what is wrong.

    Every block index must carry all three adapters, the indices must be contiguous and >= 1, and
    every tensor must have the shape the layout implies."""
    seq: dict[str, set[int]] = {"text_adapter": set(), "visual_adapter": set()}
    shared: set[int] = set()
    for k in shapes:
        m = _SEQ.match(k)
        if m:
            seq[m.group(1)].add(int(m.group(2)))
            continue
        s = _SHARED.match(k)
        if s:
            shared.add(int(s.group(1)))
    if not shared and not seq["text_adapter"] and not seq["visual_adapter"]:
        raise ValueError(
            "no MMA adapter keys (text_adapter.<i>.*, visual_adapter.<i>.*, shared_adapter.<i>.*)"
        )
    if not (seq["text_adapter"] == seq["visual_adapter"] == shared):
        raise ValueError(
            f"MMA adapters must cover the same blocks: text {sorted(seq['text_adapter'])}, visual "
            f"{sorted(seq['visual_adapter'])}, shared {sorted(shared)}"
        )
    idx = sorted(shared)
    if idx[0] < 1:
        raise ValueError(
            "adapters on the embeddings (index 0) are not supported; MMA's configs start at block 5"
        )
    if idx != list(range(idx[0], idx[-1] + 1)):
        raise ValueError(f"MMA adapter blocks are not contiguous: {idx}")
    first = idx[0]

    def shape(k: str) -> tuple[int, ...]:
        if k not in shapes:
            raise ValueError(f"MMA key {k!r} is missing")
        return tuple(int(v) for v in shapes[k])

    sw = shape(f"shared_adapter.{first}.0.weight")
    if len(sw) != 2 or sw[0] != sw[1] or sw[0] < 1:
        raise ValueError(f"shared_adapter.{first}.0.weight has shape {list(sw)}; expected [dim, dim]")
    tw = shape(f"text_adapter.{first}.down.0.weight")
    vw = shape(f"visual_adapter.{first}.down.0.weight")
    if len(tw) != 2 or len(vw) != 2:
        raise ValueError("MMA down projections must be matrices")
    layout = AdapterLayout(text_width=tw[1], visual_width=vw[1], start=first, end=idx[-1], dim=sw[0])
    for k, want in layout.shapes().items():
        got = shape(k)
        if got != want:
            raise ValueError(f"MMA key {k!r} has shape {list(got)}; expected {list(want)}")
    return layout
