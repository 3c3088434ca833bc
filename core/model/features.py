"""Image features of the frozen encoder, computed once per image view, and training batches.

The image encoder never changes during prompt learning, so a batch's features are a lookup:

- ``exact`` (default): a fresh augmentation of every image every epoch, as the reference does, with
  one image pass per batch.
- ``bank``: V augmented views per image encoded once up front and stored in fp16; image i uses view
  (o_i + epoch) mod V (o_i a seeded offset), so with V >= epochs every epoch has its own view of every
  image (the reference's distribution) and with fewer views each view comes back every V epochs.
- ``none``: no augmentation; test transform, one pass per image for the whole job.

The augmentation is the dataset's own (``Dataset.train_transform``, mergetune.core.config.train_transform_for):
the reference's random-resized crop for CoOp layouts, ImageNet and image folders, a small shift for the
32-pixel built-in set.

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
from torchvision import transforms as T

from mergetune.core.config import REFERENCE_TRANSFORM, CropKind, FeatureMode, TrainTransformSpec
from mergetune.core.model.backbone import Backbone

Transform = Callable[[Image.Image], torch.Tensor]


class RecordLike(Protocol):
    # read-only, so that frozen records (mergetune.core.data.Record) satisfy it
    @property
    def key(self) -> str: ...
    @property
    def label(self) -> int: ...


class ImageSource(Protocol):
    def load_image(self, key: str) -> Image.Image: ...


class TaskLike(Protocol):
    """What core needs of mergetune.core.data.B2NTask (read-only: core never assigns to a task)."""

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


_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def train_transform_of(source: object) -> TrainTransformSpec:
    """The training transform a data source carries (the reference's when it names none)."""
    spec = getattr(source, "train_transform", None)
    return spec if isinstance(spec, TrainTransformSpec) else REFERENCE_TRANSFORM


class TrainTransform:
    """A training transform in two parts: ``prepare`` (deterministic: what can be cached per image) and
    ``random`` (the seeded augmentation). ``transform(image)`` = ``random(prepare(image))``."""

    def __init__(
        self,
        spec: TrainTransformSpec,
        prepare: Callable[[Image.Image], Any],
        random: Callable[[Any], torch.Tensor],
    ) -> None:
        self.spec = spec
        self.prepare = prepare
        self.random = random

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.random(self.prepare(image))


def build_train_transform(spec: TrainTransformSpec, backbone: Backbone) -> TrainTransform:
    """``spec`` at the backbone's input size, normalised with the backbone's mean/std."""
    size = backbone.image_size
    interp = _INTERPOLATION.get(spec.interpolation, T.InterpolationMode.BICUBIC)
    steps: list[Any]
    if spec.crop == CropKind.random_resized_crop:
        steps = [T.RandomResizedCrop(size, scale=spec.scale or (0.08, 1.0), interpolation=interp)]
        if spec.flip:
            steps.append(T.RandomHorizontalFlip())
        tf = T.Compose([*steps, T.ToTensor(), T.Normalize(backbone.mean, backbone.std)])
        return TrainTransform(spec, lambda image: image.convert("RGB"), tf)
    # shift: the test transform, then the random ops on the small tensor (the same result as on the
    # PIL image, since normalisation is per channel, and several times cheaper for 32-pixel images)
    pad = round(spec.max_shift * size)
    post: list[Any] = [T.RandomCrop(size, padding=pad, padding_mode="reflect")] if pad > 0 else []
    if spec.flip:
        post.append(T.RandomHorizontalFlip())
    return TrainTransform(spec, backbone.test_transform, T.Compose(post))


def _nbytes(obj: Any) -> int:
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Image.Image):
        return obj.width * obj.height * len(obj.getbands())
    return 0


#: Exact mode keeps each training image's prepared form (decoded image, or the test-transformed tensor
#: of a 32-pixel image) in memory up to this many bytes, so later epochs skip reading and decoding.
IMAGE_CACHE_BYTES = 1 << 30


def augment(backbone: Backbone, image: Any, seed: int, transform: Transform | None = None) -> torch.Tensor:
    """The train transform (``transform``, default the backbone's reference one) with its randomness
    fixed by ``seed`` (global RNG state restored)."""
    with torch.random.fork_rng(devices=[]):
        # The CPU generator is the one torchvision's transforms draw from; torch.manual_seed would also
        # queue a reseed of every CUDA device, about half the cost of an augmentation.
        torch.default_generator.manual_seed(seed)
        return transform(image) if transform is not None else backbone.train_transform(image)


def _augment_prepared(prepared: Any, seed: int, transform: TrainTransform) -> torch.Tensor:
    """``transform.random`` of an already prepared image, seeded like :func:`augment`."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        return transform.random(prepared)


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
    transform: TrainTransform | None = None,
) -> torch.Tensor:
    """[V, N, E] fp16: V augmented views per image (view v of image i seeded with (seed, 1, v, i)),
    each image loaded and prepared once; the encoder sees at most ``batch_size`` images at a time."""
    tf = transform or build_train_transform(REFERENCE_TRANSFORM, backbone)
    bank = torch.zeros(views, len(records), backbone.embed_dim, device=backbone.device, dtype=torch.float16)
    per_chunk = max(1, batch_size // views)
    for start in range(0, len(records), per_chunk):
        chunk = records[start : start + per_chunk]
        prepared = [tf.prepare(source.load_image(r.key)) for r in chunk]
        pairs = [(v, j) for v in range(views) for j in range(len(chunk))]
        for p0 in range(0, len(pairs), batch_size):
            part = pairs[p0 : p0 + batch_size]
            pixels = [_augment_prepared(prepared[j], _mix(seed, 1, v, start + j), tf) for v, j in part]
            feats = backbone.encode_images(torch.stack(pixels)).half()
            for (v, j), f in zip(part, feats, strict=True):
                bank[v, start + j] = f
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
        transform: TrainTransformSpec | None = None,
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
        self.transform_spec = transform or train_transform_of(source)
        self.transform = build_train_transform(self.transform_spec, backbone)
        self._cache: dict[int, Any] = {}
        self._cache_bytes = 0
        self.feats: torch.Tensor | None = None
        if self.mode == FeatureMode.none:
            self.feats = encode_records(backbone, source, self.records)
        elif self.mode == FeatureMode.bank:
            self.feats = encode_bank(backbone, source, self.records, views, seed, transform=self.transform)

    def _prepared(self, i: int) -> Any:
        """Record i's image after the transform's deterministic part (cached within the byte budget)."""
        hit = self._cache.get(i)
        if hit is not None:
            return hit
        prepared = self.transform.prepare(self.source.load_image(self.records[i].key))
        size = _nbytes(prepared)
        if self._cache_bytes + size <= IMAGE_CACHE_BYTES:
            self._cache[i] = prepared
            self._cache_bytes += size
        return prepared

    def _order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(_mix(self.seed, 2, epoch))
        return torch.randperm(len(self.records), generator=g)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._order(epoch)
        view = None
        if self.mode == FeatureMode.bank:
            g = torch.Generator().manual_seed(_mix(self.seed, 3))
            offset = torch.randint(self.views, (len(self.records),), generator=g)
            view = (offset + epoch) % self.views
        for step in range(self.steps_per_epoch):
            idx = order[step * self.batch_size : (step + 1) * self.batch_size]
            yield self._features(idx, view, epoch), self.labels[idx.to(self.labels.device)]

    def _features(self, idx: torch.Tensor, view: torch.Tensor | None, epoch: int) -> torch.Tensor:
        if self.mode == FeatureMode.none:
            assert self.feats is not None
            return self.feats[idx.to(self.feats.device)]
        if self.mode == FeatureMode.bank:
            assert self.feats is not None and view is not None
            return self.feats[view[idx].to(self.feats.device), idx.to(self.feats.device)].float()
        pixels = [
            _augment_prepared(self._prepared(i), _mix(self.seed, 4, epoch, i), self.transform)
            for i in idx.tolist()
        ]
        return self.backbone.encode_images(torch.stack(pixels))


class EvalFeatures:
    """Test-transform features of the evaluation splits, computed once and reused everywhere."""

    def __init__(
        self,
        backbone: Backbone,
        task: TaskLike,
        known: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        src = task.dataset
        self.splits: dict[str, tuple[torch.Tensor, torch.Tensor]] = dict(known or {})
        for name in ("test_base", "test_novel", "val"):
            if name in self.splits:
                continue
            records = list(getattr(task, name))
            self.splits[name] = (
                encode_records(backbone, src, records),
                labels_of(records).to(backbone.device),
            )

    def __getitem__(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits[name]
