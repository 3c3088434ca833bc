"""Datasets listed from an object store rather than read from the data root.

The caller lists the objects (relative keys, sizes, ETags) and reads them; this module lays the listing
out as a folder tree of empty image files and the small text files the layouts read (split files, class
lists), opens it with the same readers as a local folder, and gives the dataset a loader that fetches
each image through the caller. The split hash also covers every listed key and ETag, so a changed
bucket is noticed even where the splits read alike.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol

from PIL import Image

from mergetune.core.config import DatasetKind
from mergetune.core.data.base import IMAGE_EXTS, Dataset
from mergetune.core.errors import DatasetError

#: Files the layouts read whole (split files, class lists); others are laid out empty.
TEXT_EXTS = frozenset({".json", ".txt", ".csv"})
MAX_TEXT_BYTES = 64 << 20


class ObjectSource(Protocol):
    """What a store offers: ``objects()`` -> [(key relative to the dataset, size, ETag)], ``read`` of a
    small object whole, ``image_bytes`` of one image (through a local cache on workers; FileNotFoundError
    when the store does not hold it)."""

    def objects(self) -> list[tuple[str, int, str]]: ...

    def read(self, rel: str, max_bytes: int) -> bytes: ...

    def image_bytes(self, rel: str) -> bytes: ...


def listing_sha256(objects: list[tuple[str, int, str]]) -> str:
    h = hashlib.sha256()
    for rel, size, etag in sorted(objects):
        h.update(f"{rel}\t{size}\t{etag}\n".encode())
    return h.hexdigest()


def _check_key(rel: str, shown: str) -> str:
    parts = rel.rstrip("/").split("/")
    if not rel or "\x00" in rel or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise DatasetError(
            f"object {shown[:300]!r} has a key the dataset layouts cannot hold",
            code="bad_layout",
            param="path",
        )
    return rel


def open_listed_dataset(
    kind: DatasetKind | str,
    source: ObjectSource,
    *,
    name: str,
    shown: str,
    coop_name: str | None = None,
    options: dict[str, Any] | None = None,
) -> Dataset:
    """Open an ``imagefolder`` or ``coop`` dataset from ``source``'s listing. ``name`` is the dataset
    folder's name (the last part of the prefix; CoOp names are told from it), ``shown`` how errors name it."""
    from mergetune.core.data import open_dataset

    kind = DatasetKind(kind)
    if kind not in (DatasetKind.coop, DatasetKind.imagefolder):
        raise DatasetError(
            f"kind {kind.value} cannot be read from {shown!r}", code="bad_layout", param="path"
        )
    objects = source.objects()
    if not objects:
        raise DatasetError(f"nothing is stored under {shown!r}", code="not_found", param="path")
    folder = name.strip("/").split("/")[-1] or "dataset"
    with tempfile.TemporaryDirectory(prefix="mergetune-listing-") as tmp:
        base = Path(tmp) / folder
        base.mkdir()
        for rel, size, _etag in objects:
            _check_key(rel, f"{shown.rstrip('/')}/{rel}")
            target = base / rel.rstrip("/")
            if rel.endswith("/"):
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            ext = os.path.splitext(rel)[1].lower()
            if ext in TEXT_EXTS and ext not in IMAGE_EXTS and size <= MAX_TEXT_BYTES:
                target.write_bytes(source.read(rel, MAX_TEXT_BYTES))
            else:
                target.touch()
        ds = open_dataset(kind, tmp, folder, coop_name=coop_name, options=options)
    prefix = folder + "/"

    def load(key: str) -> Image.Image:
        if not key.startswith(prefix):
            raise DatasetError(f"image {key!r} is not in the dataset", code="not_found", param="path")
        rel = key[len(prefix) :]
        try:
            data = source.image_bytes(rel)
        except FileNotFoundError:
            raise DatasetError(f"image {rel!r} not found", code="not_found", param="path") from None
        try:
            with Image.open(io.BytesIO(data)) as im:
                return im.convert("RGB")
        except OSError as e:
            raise DatasetError(f"image {rel!r} is unreadable: {e}", code="bad_image", param="path") from None

    ds.root = None
    ds._loader = load
    ds.listing_sha256 = listing_sha256(objects)
    return ds
