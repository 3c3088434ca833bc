"""Readers for CoOp's dataset folder layouts (CoOp DATASETS.md; ALGORITHM.md section 8).

Every reader gets the resolved data root and the dataset folder (relative to it) and returns the
class names (index = label), the splits as :class:`Record` lists whose keys are paths relative to the
data root, and the wnids for the ImageNet family. Split files are JSON or text; pickled split caches
(``split_fewshot/*.pkl``) are never read.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from mergetune.core.data.base import Record, check_relative, list_dir, resolve_under
from mergetune.core.errors import DatasetError

MAX_SPLIT_FILE_BYTES = 256 << 20

Layout = tuple[list[str], dict[str, list[Record]], list[str] | None]

# canonical name -> (image dir inside the dataset folder, split_zhou file name)
ZHOU_LAYOUTS: dict[str, tuple[str, str]] = {
    "Caltech101": ("101_ObjectCategories", "split_zhou_Caltech101.json"),
    "OxfordPets": ("images", "split_zhou_OxfordPets.json"),
    "StanfordCars": ("", "split_zhou_StanfordCars.json"),
    "OxfordFlowers": ("jpg", "split_zhou_OxfordFlowers.json"),
    "Food101": ("images", "split_zhou_Food101.json"),
    "SUN397": ("SUN397", "split_zhou_SUN397.json"),
    "DescribableTextures": ("images", "split_zhou_DescribableTextures.json"),
    "EuroSAT": ("2750", "split_zhou_EuroSAT.json"),
    "UCF101": ("UCF-101-midframes", "split_zhou_UCF101.json"),
}
CALTECH_IGNORED = frozenset({"BACKGROUND_Google", "Faces_easy"})


def _bad(msg: str, code: str = "bad_layout") -> DatasetError:
    return DatasetError(msg, code=code, param="path")


def clean_classname(name: str) -> str:
    return name.replace("_", " ").strip()


def _read_text(root: Path, rel: str) -> str:
    path = resolve_under(root, rel)
    if not path.is_file():
        raise _bad(f"missing file {rel}", "not_found")
    if path.stat().st_size > MAX_SPLIT_FILE_BYTES:
        raise _bad(f"{rel} is too large")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise _bad(f"{rel} is not UTF-8 text: {e}") from None


def _join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def read_split_zhou(root: Path, ds_rel: str, name: str) -> Layout:
    """``split_zhou_<Name>.json`` = {"train"|"val"|"test": [[relative_path, label, classname], ...]}."""
    image_dir, split_file = ZHOU_LAYOUTS[name]
    text = _read_text(root, _join(ds_rel, split_file))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise _bad(f"{split_file} is not valid JSON: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(s), list) for s in ("train", "test")):
        raise _bad(f"{split_file} must hold 'train', 'val' and 'test' lists")
    names: dict[int, str] = {}
    splits: dict[str, list[Record]] = {}
    for split in ("train", "val", "test"):
        out: list[Record] = []
        for item in data.get(split) or []:
            if (
                not isinstance(item, list)
                or len(item) != 3
                or not isinstance(item[0], str)
                or not isinstance(item[1], int)
                or isinstance(item[1], bool)
                or not isinstance(item[2], str)
                or item[1] < 0
            ):
                raise _bad(f"{split_file}: bad entry {str(item)[:100]} in {split}")
            impath, label, cname = item
            if name == "Caltech101" and impath.split("/")[0] in CALTECH_IGNORED:
                continue
            rel = check_relative(impath)
            prev = names.setdefault(label, cname)
            if prev != cname:
                raise _bad(f"{split_file}: label {label} has two class names ({prev!r}, {cname!r})")
            out.append(Record(_join(ds_rel, image_dir, rel), label))
        splits[split] = out
    n = len(names)
    if sorted(names) != list(range(n)):
        raise _bad(f"{split_file}: labels must be 0..{n - 1}")
    return [clean_classname(names[i]) for i in range(n)], splits, None


def read_fgvc_aircraft(root: Path, ds_rel: str) -> Layout:
    """fgvc_aircraft/: variants.txt (one class per line, order = label), images_variant_<split>.txt
    ("<image id> <variant name with spaces>"), images/<image id>.jpg."""
    variants = [v.strip() for v in _read_text(root, _join(ds_rel, "variants.txt")).splitlines() if v.strip()]
    if not variants:
        raise _bad("fgvc_aircraft/variants.txt lists no classes")
    lab = {v: i for i, v in enumerate(variants)}
    splits: dict[str, list[Record]] = {}
    for split in ("train", "val", "test"):
        out = []
        for line in _read_text(root, _join(ds_rel, f"images_variant_{split}.txt")).splitlines():
            parts = line.strip().split(" ")
            if len(parts) < 2:
                continue
            imname, cname = parts[0] + ".jpg", " ".join(parts[1:])
            if cname not in lab:
                raise _bad(f"images_variant_{split}.txt: unknown variant {cname!r}")
            out.append(Record(_join(ds_rel, "images", check_relative(imname)), lab[cname]))
        splits[split] = out
    return variants, splits, None


def read_imagenet_classnames(root: Path, ds_rel: str) -> dict[str, str]:
    """classnames.txt: "<wnid> <class name>" per line, in label order."""
    out: dict[str, str] = {}
    for line in _read_text(root, _join(ds_rel, "classnames.txt")).splitlines():
        parts = line.strip().split(" ")
        if len(parts) >= 2:
            out[parts[0]] = " ".join(parts[1:]).strip()
    if not out:
        raise _bad(f"{ds_rel}/classnames.txt lists no classes")
    return out


def _folder_records(root: Path, rel_dir: str, folders: list[str], labels: list[int]) -> list[Record]:
    out = []
    for folder, label in zip(folders, labels, strict=True):
        sub = _join(rel_dir, folder)
        for f in list_dir(root, resolve_under(root, sub), dirs=False):
            out.append(Record(_join(sub, f), label))
    return out


def _wnid_folders(root: Path, rel_dir: str, classnames: dict[str, str]) -> Layout:
    """<rel_dir>/<wnid>/* with label = index in the sorted folder list (CoOp ImageNet/-Sketch/-A/-R)."""
    folders = list_dir(root, resolve_under(root, rel_dir), dirs=True)
    unknown = [f for f in folders if f not in classnames]
    if unknown:
        raise _bad(f"{rel_dir}: folders not in classnames.txt: {unknown[:5]}")
    if not folders:
        raise _bad(f"{rel_dir} has no class folders")
    records = _folder_records(root, rel_dir, folders, list(range(len(folders))))
    return [classnames[f] for f in folders], {"test": records}, folders


def read_imagenet(root: Path, ds_rel: str) -> Layout:
    """imagenet/: classnames.txt, images/train/<wnid>/, images/val/<wnid>/ (val is the test split;
    there is no separate val split: base_to_novel draws val from unused train items)."""
    cn = read_imagenet_classnames(root, ds_rel)
    classnames, tr, wnids = _wnid_folders(root, _join(ds_rel, "images", "train"), cn)
    assert wnids is not None
    val_dir = _join(ds_rel, "images", "val")
    val_folders = list_dir(root, resolve_under(root, val_dir), dirs=True)
    idx = {w: i for i, w in enumerate(wnids)}
    extra = [f for f in val_folders if f not in idx]
    if extra:
        raise _bad(f"{val_dir}: folders not in images/train: {extra[:5]}")
    test = _folder_records(root, val_dir, val_folders, [idx[f] for f in val_folders])
    return classnames, {"train": tr["test"], "val": [], "test": test}, wnids


def read_imagenetv2(root: Path, ds_rel: str) -> Layout:
    """imagenetv2/: classnames.txt + imagenetv2-matched-frequency-format-val/<label int>/."""
    cn = read_imagenet_classnames(root, ds_rel)
    wnids = list(cn)
    rel_dir = _join(ds_rel, "imagenetv2-matched-frequency-format-val")
    folders = list_dir(root, resolve_under(root, rel_dir), dirs=True)
    labels = []
    for f in folders:
        if not f.isdigit() or int(f) >= len(wnids):
            raise _bad(f"{rel_dir}: folder {f!r} is not a label in 0..{len(wnids) - 1}")
        labels.append(int(f))
    test = _folder_records(root, rel_dir, folders, labels)
    test.sort(key=lambda r: (r.label, r.key))
    return [cn[w] for w in wnids], {"test": test}, wnids


def _sub(image_dir: str) -> Callable[[Path, str], Layout]:
    def read(root: Path, ds_rel: str) -> Layout:
        cn = read_imagenet_classnames(root, ds_rel)
        return _wnid_folders(root, _join(ds_rel, image_dir), cn)

    return read


READERS: dict[str, Callable[[Path, str], Layout]] = {
    "FGVCAircraft": read_fgvc_aircraft,
    "ImageNet": read_imagenet,
    "ImageNetV2": read_imagenetv2,
    "ImageNetSketch": _sub("images"),
    "ImageNetA": _sub("imagenet-a"),
    "ImageNetR": _sub("imagenet-r"),
}


def _zhou(name: str) -> Callable[[Path, str], Layout]:
    def read(root: Path, ds_rel: str) -> Layout:
        return read_split_zhou(root, ds_rel, name)

    return read


for _name in ZHOU_LAYOUTS:
    READERS[_name] = _zhou(_name)


def detect_coop_name(root: Path, ds_rel: str) -> str | None:
    """Guess the CoOp dataset from the files present (a split_zhou file, variants.txt, ...)."""
    d = resolve_under(root, ds_rel)
    for name, (_, split_file) in ZHOU_LAYOUTS.items():
        if (d / split_file).is_file():
            return name
    if (d / "variants.txt").is_file():
        return "FGVCAircraft"
    for name, sub in (
        ("ImageNetV2", "imagenetv2-matched-frequency-format-val"),
        ("ImageNetA", "imagenet-a"),
        ("ImageNetR", "imagenet-r"),
    ):
        if (d / sub).is_dir():
            return name
    if (d / "classnames.txt").is_file():
        if (d / "images" / "train").is_dir():
            return "ImageNet"
        if (d / "images").is_dir():
            return "ImageNetSketch"
    return None
