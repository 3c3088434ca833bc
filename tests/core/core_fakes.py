"""Fakes shared by the core tests: records, a deterministic image source and a base-to-novel task."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Rec:
    key: str
    label: int


@dataclass
class FakeImages:
    """Random 32x32 images whose colour depends on the class (so that a few steps can learn)."""

    loads: int = 0
    cache: dict = field(default_factory=dict)

    def load_image(self, key: str) -> Image.Image:
        self.loads += 1
        if key not in self.cache:
            label, idx = (int(x) for x in key.split("/"))
            rng = np.random.default_rng(1000 * label + idx)
            base = np.array([(53 * label) % 256, (97 * label) % 256, (151 * label) % 256])
            self.cache[key] = Image.fromarray(
                (rng.random((32, 32, 3)) * 80 + base).clip(0, 255).astype(np.uint8)
            )
        return self.cache[key]


def recs(labels, per_class, offset=0, start=0):
    return [Rec(f"{c + offset}/{start + i}", c) for c in labels for i in range(per_class)]


@dataclass
class FakeTask:
    base_classnames: list = field(default_factory=lambda: ["red square", "blue circle", "green star"])
    novel_classnames: list = field(default_factory=lambda: ["yellow heart", "purple moon"])
    train: list = field(default_factory=lambda: recs(range(3), 4))
    val: list = field(default_factory=lambda: recs(range(3), 2, start=10))
    test_base: list = field(default_factory=lambda: recs(range(3), 3, start=20))
    test_novel: list = field(default_factory=lambda: recs(range(2), 3, offset=3, start=20))
    template: str = "a photo of a {}."
    split_sha256: str = "ab" * 32
    dataset: FakeImages = field(default_factory=FakeImages)
