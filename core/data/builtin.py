"""The built-in procedural dataset ("<colour> <shape>", core/builtin/render.py) as a Dataset.

Keys are ``builtin:<label>:<index>:<split>``; images are rendered on demand, deterministically from
(seed, label, index + split offset) and the domain (hue rotation, blur). Splits use disjoint index
ranges. render.py is imported lazily (it is written by another module owner and pulls in PIL only).
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from mergetune.core.config import DatasetKind
from mergetune.core.data.base import Dataset, Record
from mergetune.core.errors import DatasetError

SPLIT_OFFSETS = {"train": 0, "val": 1_000_000, "test": 2_000_000}
DEFAULT_SIZES = {"train": 32, "val": 8, "test": 20}
MAX_PER_CLASS = 100_000


def _render_module() -> Any:
    from mergetune.core.builtin import render

    return render


def _domain(options: dict[str, Any], render: Any) -> tuple[float, float]:
    dom = options.get("domain", "downstream")
    if isinstance(dom, str):
        table = {
            "downstream": getattr(render, "DOWNSTREAM_DOMAIN", {"hue": 0.6, "blur": 0.0}),
            "source": {"hue": 0.0, "blur": 0.0},
            "shift": getattr(render, "SHIFT_DOMAIN", {"hue": 1.2, "blur": 0.0}),
        }
        if dom not in table:
            raise DatasetError(f"unknown builtin domain {dom!r}", code="bad_options", param="options")
        dom = table[dom]
    if not isinstance(dom, dict):
        raise DatasetError(
            "builtin domain must be a name or {'hue', 'blur'}", code="bad_options", param="options"
        )
    try:
        hue = float(options.get("hue", dom.get("hue", 0.0)))  # type: ignore[arg-type]
        blur = float(options.get("blur", dom.get("blur", 0.0)))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DatasetError("hue and blur must be numbers", code="bad_options", param="options") from None
    if not (-10.0 <= hue <= 10.0 and 0.0 <= blur <= 16.0):
        raise DatasetError(
            "hue must be in [-10, 10] and blur in [0, 16]", code="bad_options", param="options"
        )
    return hue, blur


def _int_opt(options: dict[str, Any], key: str, default: int, lo: int, hi: int) -> int:
    v = options.get(key, default)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise DatasetError(
            f"option {key} must be an integer in [{lo}, {hi}]", code="bad_options", param="options"
        )
    return v


def open_builtin(options: dict[str, Any]) -> Dataset:
    render = _render_module()
    hue, blur = _domain(options, render)
    n_all = len(render.CLASSNAMES)
    n_cls = _int_opt(options, "num_classes", n_all, 1, n_all)
    seed = _int_opt(options, "seed", 0, 0, 2**31 - 1)
    sizes = {s: _int_opt(options, f"{s}_per_class", d, 0, MAX_PER_CLASS) for s, d in DEFAULT_SIZES.items()}
    splits = {
        s: [Record(f"builtin:{label}:{i}:{s}", label) for label in range(n_cls) for i in range(sizes[s])]
        for s in ("train", "val", "test")
    }

    def load(key: str) -> Image.Image:
        parts = key.split(":")
        if len(parts) != 4 or parts[0] != "builtin" or parts[3] not in SPLIT_OFFSETS:
            raise DatasetError(f"bad builtin key {key!r}", code="not_found", param="path")
        try:
            label, index = int(parts[1]), int(parts[2])
        except ValueError:
            raise DatasetError(f"bad builtin key {key!r}", code="not_found", param="path") from None
        if not (0 <= label < n_cls and 0 <= index < MAX_PER_CLASS):
            raise DatasetError(f"bad builtin key {key!r}", code="not_found", param="path")
        return render.render(label, seed, index + SPLIT_OFFSETS[parts[3]], hue=hue, blur=blur).convert("RGB")

    return Dataset(
        name="builtin",
        kind=DatasetKind.builtin,
        classnames=list(render.CLASSNAMES[:n_cls]),
        template=str(options.get("template") or getattr(render, "TEMPLATE", "a photo of a {}.")),
        splits=splits,
        options={
            "hue": hue,
            "blur": blur,
            "seed": seed,
            "num_classes": n_cls,
            **{f"{s}_per_class": n for s, n in sizes.items()},
        },
        _loader=load,
    )
