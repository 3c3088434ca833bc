"""Datasets: CoOp layouts, ImageFolder, the built-in procedural set, and the base-to-novel task.

``open_dataset(kind, data_root, path, coop_name=None, options=None) -> Dataset``;
``base_to_novel(ds, shots, seed) -> B2NTask``; ``TEMPLATES`` per CoOp dataset name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mergetune.core.config import DatasetKind
from mergetune.core.data.base import (
    SPLITS,
    B2NTask,
    Dataset,
    Record,
    base_to_novel,
    fewshot,
    is_under,
    list_dir,
    real_root,
    resolve_under,
    wnid_subset,
)
from mergetune.core.data.builtin import open_builtin
from mergetune.core.data.coop import READERS, clean_classname, detect_coop_name
from mergetune.core.data.templates import (
    DEFAULT_DIRS,
    DEFAULT_TEMPLATE,
    TEMPLATES,
    canonical_name,
    template_for,
)
from mergetune.core.errors import DatasetError

__all__ = [
    "B2NTask",
    "DEFAULT_DIRS",
    "DEFAULT_TEMPLATE",
    "Dataset",
    "Record",
    "TEMPLATES",
    "base_to_novel",
    "canonical_name",
    "fewshot",
    "open_dataset",
    "template_for",
    "wnid_subset",
]


def _template(options: dict[str, Any], default: str) -> str:
    t = options.get("template")
    if t is None:
        return default
    if not isinstance(t, str) or t.count("{}") != 1 or len(t) > 300:
        raise DatasetError(
            "template must be a string with exactly one '{}'", code="bad_options", param="options"
        )
    return t


def _open_coop(root: Path, path: str, coop_name: str | None, options: dict[str, Any]) -> Dataset:
    resolve_under(root, path)  # confinement of the folder itself (raises path_outside_root)
    ds_rel = path.replace("\\", "/").strip("/")
    if not (root / ds_rel).is_dir():
        raise DatasetError(
            f"dataset folder {path!r} not found under the data root", code="not_found", param="path"
        )
    if coop_name:
        name = canonical_name(coop_name)
        if name is None:
            raise DatasetError(
                f"unknown CoOp dataset {coop_name!r}; one of {sorted(TEMPLATES)}",
                code="unknown_dataset",
                param="coop_name",
            )
    else:
        name = canonical_name(os.path.basename(ds_rel)) or detect_coop_name(root, ds_rel)
        if name is None:
            raise DatasetError(
                f"cannot tell which CoOp dataset {path!r} holds; pass coop_name",
                code="unknown_dataset",
                param="coop_name",
            )
    classnames, splits, wnids = READERS[name](root, ds_rel)
    for s in SPLITS:
        splits.setdefault(s, [])
    _confine_records(root, splits)
    if not any(splits.values()):
        raise DatasetError(f"{name} at {path!r} has no images", code="bad_layout", param="path")
    return Dataset(
        name=name,
        kind=DatasetKind.coop,
        classnames=classnames,
        template=_template(options, TEMPLATES[name]),
        splits=splits,
        root=root,
        wnids=wnids,
        options=dict(options),
    )


def _confine_records(root: Path, splits: dict[str, list[Record]]) -> None:
    """Every image the split files name resolves under the data root: its folder (an image folder that
    is a symlink out of the root is refused when the dataset is registered, not when a job reads it)
    and the file itself when it is a link. One realpath per folder, one lstat per file."""
    folders: dict[str, bool] = {}
    for records in splits.values():
        for r in records:
            folder = os.path.dirname(r.key)
            inside = folders.get(folder)
            if inside is None:
                inside = folders[folder] = is_under(root, root / folder)
            if not inside or (os.path.islink(root / r.key) and not is_under(root, root / r.key)):
                raise DatasetError(  # the folder itself is inside: its content links out
                    f"{folder if not inside else r.key!r} resolves outside the data root (a symlink out of it)",
                    code="link_outside_root",
                    param="path",
                )


def _open_imagefolder(root: Path, path: str, options: dict[str, Any]) -> Dataset:
    """<path>/<split>/<class>/<image>; splits train/val/test (any present); classes = sorted union of
    the class folder names over the splits, label = index; "_" in folder names becomes a space."""
    base = resolve_under(root, path)
    if not base.is_dir():
        raise DatasetError(
            f"dataset folder {path!r} not found under the data root", code="not_found", param="path"
        )
    ds_rel = path.replace("\\", "/").strip("/")
    present = [s for s in SPLITS if (base / s).is_dir()]
    if not present:
        raise DatasetError(
            f"{path!r} has none of the split folders train/val/test", code="bad_layout", param="path"
        )
    per_split = {s: list_dir(root, resolve_under(root, f"{ds_rel}/{s}"), dirs=True) for s in present}
    folders = sorted({c for cs in per_split.values() for c in cs})
    index = {c: i for i, c in enumerate(folders)}
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for s, classes in per_split.items():
        for c in classes:
            sub = f"{ds_rel}/{s}/{c}".lstrip("/")
            for f in list_dir(root, resolve_under(root, sub), dirs=False):
                splits[s].append(Record(f"{sub}/{f}", index[c]))
    if not any(splits.values()):
        raise DatasetError(f"{path!r} holds no images", code="bad_layout", param="path")
    name = options.get("name") or os.path.basename(ds_rel) or "imagefolder"
    return Dataset(
        name=str(name),
        kind=DatasetKind.imagefolder,
        classnames=[clean_classname(c) for c in folders],
        template=_template(options, DEFAULT_TEMPLATE),
        splits=splits,
        root=root,
        options=dict(options),
    )


def open_dataset(
    kind: DatasetKind | str,
    data_root: str | os.PathLike | None,
    path: str,
    *,
    coop_name: str | None = None,
    options: dict[str, Any] | None = None,
) -> Dataset:
    """Open a dataset. ``path`` is relative to ``data_root`` and must resolve under it (no '..', no
    absolute path, no symlink out: DatasetError(code="path_outside_root", param="path")).

    - ``coop``: a CoOp layout folder; ``coop_name`` (e.g. "OxfordPets" or "oxford_pets") or guessed
      from the folder name / files.
    - ``imagefolder``: ``<path>/<split>/<class>/*``; options: template, name.
    - ``builtin``: the procedural dataset (``path`` and ``data_root`` unused); options: domain
      ("downstream" (default), "source", "shift" or {"hue", "blur"}), hue, blur, seed,
      train_per_class (32), val_per_class (8), test_per_class (20), num_classes (96).
    """
    kind = DatasetKind(kind)
    options = dict(options or {})
    if kind == DatasetKind.builtin:
        return open_builtin(options)
    if data_root is None:
        raise DatasetError("no data root configured", code="not_found", param="path")
    root = real_root(data_root)
    if not isinstance(path, str):
        raise DatasetError("path must be a string", code="path_outside_root", param="path")
    if kind == DatasetKind.coop:
        return _open_coop(root, path, coop_name, options)
    return _open_imagefolder(root, path, options)
