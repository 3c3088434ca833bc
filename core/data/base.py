"""Dataset records, path confinement, the base-to-novel protocol (ALGORITHM.md section 4)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mergetune.core.config import DatasetKind, TrainTransformSpec, train_transform_for
from mergetune.core.errors import DatasetError

SPLITS = ("train", "val", "test")
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})


@dataclass(frozen=True, slots=True)
class Record:
    key: str  # path relative to the data root (posix), or "builtin:<label>:<index>:<split>"
    label: int


# ----------------------------------------------------------------------------------------------------
# path confinement


def real_root(data_root: str | os.PathLike) -> Path:
    root = Path(os.path.realpath(os.fspath(data_root)))
    if not root.is_dir():
        raise DatasetError(
            f"data root {os.fspath(data_root)!r} is not a directory", code="not_found", param="path"
        )
    return root


def check_relative(rel: str, param: str = "path") -> str:
    """Lexical check of a user- or file-supplied relative path: no absolute paths, no '..'."""
    if not isinstance(rel, str) or "\x00" in rel:
        raise DatasetError("invalid path", code="path_outside_root", param=param)
    norm = rel.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in norm.split("/"):
        raise DatasetError(f"path {rel!r} escapes the data root", code="path_outside_root", param=param)
    return norm


def is_under(root: Path, target: str | os.PathLike) -> bool:
    real = os.path.realpath(os.fspath(target))
    base = os.fspath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def resolve_under(root: Path, rel: str, param: str = "path") -> Path:
    """``root / rel`` after the lexical check, with symlinks resolved and confined to ``root``."""
    norm = check_relative(rel, param)
    joined = root / norm if norm not in ("", ".") else root
    if not is_under(root, joined):
        raise DatasetError(
            f"path {rel!r} resolves outside the data root", code="path_outside_root", param=param
        )
    return joined


def list_dir(root: Path, directory: Path, *, dirs: bool) -> list[str]:
    """Sorted names of sub-directories (dirs=True) or image files, hidden entries skipped; a symlink
    that points outside the data root is refused."""
    out = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        raise DatasetError(
            f"missing directory {directory.relative_to(root)}", code="not_found", param="path"
        ) from None
    except NotADirectoryError:
        raise DatasetError(
            f"{directory.relative_to(root)} is not a directory", code="bad_layout", param="path"
        ) from None
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_symlink() and not is_under(root, e.path):
            raise DatasetError(
                f"{Path(e.path).relative_to(root)} is a symlink out of the data root",
                code="path_outside_root",
                param="path",
            )
        if dirs and e.is_dir():
            out.append(e.name)
        elif not dirs and e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTS:
            out.append(e.name)
    return sorted(out)


# ----------------------------------------------------------------------------------------------------
# dataset


def _hash_records(h: Any, tag: str, records: Iterable[Record]) -> None:
    h.update(f"[{tag}]\n".encode())
    for r in records:
        h.update(f"{r.key}\t{r.label}\n".encode())


@dataclass
class Dataset:
    name: str
    kind: DatasetKind
    classnames: list[str]  # index = label
    template: str
    splits: dict[str, list[Record]]
    root: Path | None = None  # resolved data root (file datasets)
    wnids: list[str] | None = None  # ImageNet family: wnid per label
    options: dict[str, Any] = field(default_factory=dict)
    listing_sha256: str | None = None  # datasets read from an object store: their keys and ETags
    _loader: Callable[[str], Image.Image] | None = field(default=None, repr=False)

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def train_transform(self) -> TrainTransformSpec:
        """The training augmentation of this dataset's kind (mergetune.core.config.train_transform_for)."""
        return train_transform_for(self.kind)

    def load_image(self, key: str) -> Image.Image:
        """The image of a record, RGB. File keys are re-confined to the data root at every load."""
        if self._loader is not None:
            return self._loader(key)
        assert self.root is not None
        path = resolve_under(self.root, key, param="path")
        try:
            with Image.open(path) as im:
                return im.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"image {key!r} not found", code="not_found", param="path") from None
        except OSError as e:
            raise DatasetError(f"image {key!r} is unreadable: {e}", code="bad_image", param="path") from None

    def identity(self) -> str:
        """What the keys alone do not say: for the built-in set, the domain and seed of the renders."""
        if self.kind == DatasetKind.builtin:
            return "builtin " + json.dumps(self.options, sort_keys=True, default=str) + "\n"
        if self.listing_sha256:
            return f"listing {self.listing_sha256}\n"
        return ""

    def split_sha256(self) -> str:
        """sha256 over the class list and every split's (key, label) list, in order."""
        h = hashlib.sha256()
        h.update(self.identity().encode())
        h.update(("\n".join(self.classnames) + "\n").encode())
        for s in SPLITS:
            _hash_records(h, s, self.splits.get(s, []))
        return h.hexdigest()

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind.value,
            "num_classes": self.num_classes,
            "template": self.template,
            "sizes": {s: len(self.splits.get(s, [])) for s in SPLITS},
            "split_sha256": self.split_sha256(),
            "train_transform": self.train_transform.model_dump(mode="json"),
        }


@dataclass
class B2NTask:
    dataset: Dataset
    base_classnames: list[str]
    novel_classnames: list[str]
    base_labels: list[int]  # original label ids of the base classes (index = new label)
    novel_labels: list[int]
    train: list[Record]  # few-shot, base classes, relabelled
    val: list[Record]
    test_base: list[Record]
    test_novel: list[Record]  # relabelled within the novel classes
    template: str
    shots: int
    seed: int
    split_sha256: str

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset.name,
            "n_base": len(self.base_classnames),
            "n_novel": len(self.novel_classnames),
            "sizes": {
                "train": len(self.train),
                "val": len(self.val),
                "test_base": len(self.test_base),
                "test_novel": len(self.test_novel),
            },
            "shots": self.shots,
            "seed": self.seed,
            "split_sha256": self.split_sha256,
        }


def fewshot(records: list[Record], shots: int, rng: random.Random) -> list[Record]:
    """CoOp's generate_fewshot_dataset (repeat=False): per label, in order of first appearance,
    ``rng.sample(items, shots)`` when there are enough items, else all of them."""
    by_label: dict[int, list[Record]] = {}
    for r in records:
        by_label.setdefault(r.label, []).append(r)
    out: list[Record] = []
    for items in by_label.values():
        out.extend(rng.sample(items, shots) if len(items) >= shots else items)
    return out


def fewshot_train_val(ds: Dataset, shots: int, seed: int) -> tuple[list[Record], list[Record], list[int]]:
    """(train, val, labels) of a task: ``shots`` per class from train, then ``min(shots, 4)`` per class
    from val (from the train items the first sample did not take when there is no val split), with one
    ``random.Random(seed)``; labels: the sorted label ids present in train (every class id for a
    test-only dataset, whose train and val are then empty)."""
    if shots < 1:
        raise DatasetError("shots must be >= 1", code="bad_split", param="shots")
    train_all = ds.splits.get("train", [])
    rng = random.Random(seed)
    train = fewshot(train_all, shots, rng)
    val_src = ds.splits.get("val", [])
    if not val_src:
        taken = {r.key for r in train}
        val_src = [r for r in train_all if r.key not in taken]
    val = fewshot(val_src, min(shots, 4), rng)
    # a test-only dataset (ImageNet-V2/-Sketch/-A/-R) still gets its class split (empty train/val)
    labels = sorted({r.label for r in train_all}) if train_all else list(range(ds.num_classes))
    return train, val, labels


def base_to_novel(ds: Dataset, shots: int, seed: int) -> B2NTask:
    """The CoOp base-to-novel task: few-shot train / val of the base half, test of both halves.

    Sampling (one ``random.Random(seed)``): ``shots`` per class from train (all classes, before the
    base filter), then ``min(shots, 4)`` per class from val. A dataset without a val split (ImageNet)
    draws val from the train items that the few-shot sample did not take, so test is never used.
    Classes: sorted label ids present in train (all classes for a test-only dataset, whose task then
    has empty train/val: callers that train must check ``task.train``); base = first ceil(n / 2),
    novel = the rest.
    """
    train, val, labels = fewshot_train_val(ds, shots, seed)
    m = math.ceil(len(labels) / 2)
    base, novel = labels[:m], labels[m:]
    base_map = {lab: i for i, lab in enumerate(base)}
    novel_map = {lab: i for i, lab in enumerate(novel)}

    def relabel(records: list[Record], mapping: dict[int, int]) -> list[Record]:
        return [Record(r.key, mapping[r.label]) for r in records if r.label in mapping]

    test = ds.splits.get("test", [])
    task = B2NTask(
        dataset=ds,
        base_classnames=[ds.classnames[i] for i in base],
        novel_classnames=[ds.classnames[i] for i in novel],
        base_labels=base,
        novel_labels=novel,
        train=relabel(train, base_map),
        val=relabel(val, base_map),
        test_base=relabel(test, base_map),
        test_novel=relabel(test, novel_map),
        template=ds.template,
        shots=shots,
        seed=seed,
        split_sha256="",
    )
    h = hashlib.sha256()
    h.update(f"{ds.name}\n{ds.identity()}shots={shots}\nseed={seed}\n".encode())
    h.update(("\n".join(task.base_classnames) + "\n|\n" + "\n".join(task.novel_classnames) + "\n").encode())
    for tag in ("train", "val", "test_base", "test_novel"):
        _hash_records(h, tag, getattr(task, tag))
    task.split_sha256 = h.hexdigest()
    return task


def wnid_subset(ds: Dataset, reference: Dataset) -> list[int]:
    """For each label of ``ds`` (e.g. ImageNet-A's 200 classes), the label of the same wnid in
    ``reference`` (ImageNet). Used to pick the rows of a 1000-class head for a 200-class test set."""
    if ds.wnids is None or reference.wnids is None:
        raise DatasetError("both datasets need wnids to map classes", code="bad_layout", param="path")
    index = {w: i for i, w in enumerate(reference.wnids)}
    missing = [w for w in ds.wnids if w not in index]
    if missing:
        raise DatasetError(f"wnids not in {reference.name}: {missing[:5]}", code="bad_layout", param="path")
    return [index[w] for w in ds.wnids]
