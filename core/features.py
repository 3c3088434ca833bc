"""Image features of the frozen encoder, computed once per image view, and training batches.

The image encoder never changes during prompt learning, so a batch's features are a lookup:

- ``none``: no augmentation; test transform, one pass per image for the whole job (exact).
- ``bank``: V augmented views per image encoded once; each epoch draws one view per image (seeded).
- ``exact``: a fresh augmentation every step, as the reference does, with one image pass per batch.

Batching follows Dassl's train loader: a seeded shuffle per epoch, ``drop_last`` when the set holds at
least one full batch, and a single smaller batch when the whole set is smaller than the batch size.
All randomness is derived from (seed, epoch, index), so an epoch is reproducible on its own (resume).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
from PIL import Image

from core.backbone import Backbone
from core.config import FeatureMode


class RecordLike(Protocol):
    # read-only, so that frozen records (core.datasets.Record) satisfy it
    @property
    def key(self) -> str: ...
    @property
    def label(self) -> int: ...


class ImageSource(Protocol):
    def load_image(self, key: str) -> Image.Image: ...


class TaskLike(Protocol):
    """What core needs of core.datasets.B2NTask (read-only: core never assigns to a task)."""

    @property
    def base_classnames(self) -> list[str]: ...
    @property
    def novel_classnames(self) -> list[str]: ...
    @property
    def train(self) -> Sequence[RecordLike]: ...
    @property
    def val(self) -> Sequence[RecordLike]: ...
    @property
    def test_base(self) -> Sequence[RecordLike]: ...
    @property
    def test_novel(self) -> Sequence[RecordLike]: ...
    @property
    def template(self) -> str: ...
    @property
    def split_sha256(self) -> Any: ...
    @property
    def dataset(self) -> ImageSource: ...


def _mix(*parts: int) -> int:
    """A stable 63-bit seed from integers (no Python hash randomisation)."""
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFF)) * 1099511628211) & 0x7FFFFFFFFFFFFFFF
    return h


def augment(backbone: Backbone, image: Image.Image, seed: int) -> torch.Tensor:
    """The train transform with its randomness fixed by ``seed`` (global RNG state restored)."""
    with torch.random.fork_rng(devices=[]):
        # The CPU generator is the one torchvision's transforms draw from; torch.manual_seed would also
        # queue a reseed of every CUDA device, about half the cost of an augmentation.
        torch.default_generator.manual_seed(seed)
        return backbone.train_transform(image)


def labels_of(records: Sequence[RecordLike]) -> torch.Tensor:
    return torch.tensor([int(r.label) for r in records], dtype=torch.long)


@torch.no_grad()
def encode_records(
    backbone: Backbone,
    source: ImageSource,
    records: Sequence[RecordLike],
    *,
    transform: Callable[[int, Image.Image], torch.Tensor] | None = None,
    batch_size: int = 256,
) -> torch.Tensor:
    """Normalised fp32 features [N, E] of ``records`` (``transform(i, image)``; default test transform)."""
    out: list[torch.Tensor] = []
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        pixels = []
        for j, r in enumerate(chunk):
            img = source.load_image(r.key)
            pixels.append(transform(start + j, img) if transform else backbone.test_transform(img))
        out.append(backbone.encode_images(torch.stack(pixels)))
    if not out:
        return torch.zeros(0, backbone.embed_dim, device=backbone.device)
    return torch.cat(out)


@torch.no_grad()
def encode_bank(
    backbone: Backbone,
    source: ImageSource,
    records: Sequence[RecordLike],
    views: int,
    seed: int,
    *,
    batch_size: int = 256,
) -> torch.Tensor:
    """[V, N, E]: V augmented views per image, each image loaded once."""
    bank = torch.zeros(views, len(records), backbone.embed_dim, device=backbone.device)
    per_chunk = max(1, batch_size // views)
    for start in range(0, len(records), per_chunk):
        chunk = records[start : start + per_chunk]
        images = [source.load_image(r.key) for r in chunk]
        pixels = [
            augment(backbone, img, _mix(seed, 1, v, start + j))
            for v in range(views)
            for j, img in enumerate(images)
        ]
        feats = backbone.encode_images(torch.stack(pixels)).view(views, len(chunk), -1)
        bank[:, start : start + len(chunk)] = feats
    return bank


def batch_plan(n: int, batch_size: int) -> tuple[int, bool]:
    """(batches per epoch, drop_last) of Dassl's train loader."""
    if n == 0:
        return 0, False
    drop_last = n >= batch_size
    return (n // batch_size if drop_last else math.ceil(n / batch_size)), drop_last


class TrainFeatures:
    """Yields (features [b, E] normalised, labels [b]) batches of one epoch."""

    def __init__(
        self,
        backbone: Backbone,
        source: ImageSource,
        records: Sequence[RecordLike],
        *,
        mode: FeatureMode,
        batch_size: int,
        seed: int,
        views: int = 8,
    ) -> None:
        self.backbone = backbone
        self.source = source
        self.records = list(records)
        self.mode = FeatureMode(mode)
        self.batch_size = batch_size
        self.seed = seed
        self.labels = labels_of(self.records).to(backbone.device)
        self.steps_per_epoch, self.drop_last = batch_plan(len(self.records), batch_size)
        self.views = views
        self.feats: torch.Tensor | None = None
        if self.mode == FeatureMode.none:
            self.feats = encode_records(backbone, source, self.records)
        elif self.mode == FeatureMode.bank:
            self.feats = encode_bank(backbone, source, self.records, views, seed)

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_mix(self.seed, 2, epoch))
        return torch.randperm(len(self.records), generator=g)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order(epoch)
        view = None
        if self.mode == FeatureMode.bank:
            g = torch.Generator().manual_seed(_mix(self.seed, 3, epoch))
            view = torch.randint(self.views, (len(self.records),), generator=g)
        for step in range(self.steps_per_epoch):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield self._features(idx, view, epoch), self.labels[idx.to(self.labels.device)]

    def _features(self, idx: torch.Tensor, view: torch.Tensor | None, epoch: int) -> torch.Tensor:
        if self.mode == FeatureMode.none:
            assert self.feats is not None
            return self.feats[idx.to(self.feats.device)]
        if self.mode == FeatureMode.bank:
            assert self.feats is not None and view is not None
            return self.feats[view[idx].to(self.feats.device), idx.to(self.feats.device)]
        pixels = [
            augment(self.backbone, self.source.load_image(self.records[i].key), _mix(self.seed, 4, epoch, i))
            for i in idx.tolist()
        ]
        return self.backbone.encode_images(torch.stack(pixels))


class EvalFeatures:
    """Test-transform features of the evaluation splits, computed once and reused everywhere."""

    def __init__(self, backbone: Backbone, task: TaskLike) -> None:
        src = task.dataset
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for name in ("test_base", "test_novel", "val"):
            records = list(getattr(task, name))
            self.splits[name] = (
                encode_records(backbone, src, records),
                labels_of(records).to(backbone.device),
            )

    def __getitem__(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits[name]
