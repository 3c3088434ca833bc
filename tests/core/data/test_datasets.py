"""mergetune.core.data: fake trees of each CoOp layout, ImageFolder, builtin, base-to-novel, confinement."""

from __future__ import annotations

import io
import json
import os
import pickle
import random
from pathlib import Path

import pytest
from PIL import Image

from mergetune.core.config import DatasetKind
from mergetune.core.data import TEMPLATES, Record, base_to_novel, open_dataset, wnid_subset
from mergetune.core.data.coop import ZHOU_LAYOUTS
from mergetune.core.data.templates import DEFAULT_DIRS
from mergetune.core.errors import DatasetError


def _jpeg_bytes(colour: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg_bytes()


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(JPEG)


def make_zhou(root: Path, name: str, n_cls: int, per: dict[str, int] | None = None) -> tuple[str, list[str]]:
    """A CoOp split_zhou layout with ``n_cls`` classes and per-split images per class."""
    per = per or {"train": 3, "val": 1, "test": 2}
    ds_dir = root / DEFAULT_DIRS[name]
    image_dir, split_file = ZHOU_LAYOUTS[name]
    classes = [f"class_{c:02d}" for c in range(n_cls)]
    split = {}
    for s, k in per.items():
        items = []
        for label, cname in enumerate(classes):
            for j in range(k):
                rel = f"{cname}/{s}_{j}.jpg"
                _img(ds_dir / image_dir / rel)
                items.append([rel, label, cname])
        split[s] = items
    (ds_dir / split_file).write_text(json.dumps(split))
    return DEFAULT_DIRS[name], classes


@pytest.mark.parametrize("name", sorted(ZHOU_LAYOUTS))
def test_zhou_layouts(tmp_path: Path, name: str) -> None:
    rel, classes = make_zhou(tmp_path, name, 4)
    ds = open_dataset(DatasetKind.coop, tmp_path, rel)  # name guessed from the folder
    assert ds.name == name and ds.kind == DatasetKind.coop
    assert ds.classnames == [c.replace("_", " ") for c in classes]
    assert ds.template == TEMPLATES[name]
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 12, "val": 4, "test": 8}
    rec = ds.splits["test"][0]
    assert rec.key.startswith(rel + "/") and rec.label == 0
    assert ds.load_image(rec.key).mode == "RGB"
    # explicit coop_name and a renamed folder (detected from the split file)
    os.rename(tmp_path / rel, tmp_path / "renamed")
    assert open_dataset("coop", tmp_path, "renamed").name == name
    assert open_dataset("coop", tmp_path, "renamed", coop_name=name).split_sha256() != ds.split_sha256()


def test_oxford_pets_37_classes_base_novel(tmp_path: Path) -> None:
    rel, _ = make_zhou(tmp_path, "OxfordPets", 37, {"train": 5, "val": 5, "test": 2})
    ds = open_dataset("coop", tmp_path, rel)
    task = base_to_novel(ds, shots=4, seed=1)
    assert (len(task.base_classnames), len(task.novel_classnames)) == (19, 18)
    assert task.base_classnames[0] == "class 00" and task.novel_classnames[0] == "class 19"
    assert len(task.train) == 19 * 4 and len(task.val) == 19 * 4
    assert len(task.test_base) == 19 * 2 and len(task.test_novel) == 18 * 2
    assert sorted({r.label for r in task.train}) == list(range(19))
    assert sorted({r.label for r in task.test_novel}) == list(range(18))
    # relabelling: novel label 0 is original class 19
    assert all("class_19/" in r.key for r in task.test_novel if r.label == 0)
    assert task.template == "a photo of a {}, a type of pet."


def test_eurosat_10_classes_and_exact_sampling(tmp_path: Path) -> None:
    rel, _ = make_zhou(tmp_path, "EuroSAT", 10, {"train": 6, "val": 6, "test": 1})
    ds = open_dataset("coop", tmp_path, rel, coop_name="eurosat")
    task = base_to_novel(ds, shots=2, seed=3)
    assert (len(task.base_classnames), len(task.novel_classnames)) == (5, 5)
    assert len(task.train) == 10 and len(task.val) == 10  # val: min(shots, 4) = 2 per base class
    # CoOp's sampling, replicated by hand: one Random(seed); per class in order of appearance,
    # sample from train of all classes (before the base filter), then val.
    rng = random.Random(3)
    expected = []
    for label in range(10):
        items = [r for r in ds.splits["train"] if r.label == label]
        expected += rng.sample(items, 2)
    assert [r.key for r in task.train] == [r.key for r in expected if r.label < 5]
    val_expected = []
    for label in range(10):
        val_expected += rng.sample([r for r in ds.splits["val"] if r.label == label], 2)
    assert [r.key for r in task.val] == [r.key for r in val_expected if r.label < 5]
    # seeded: same seed same split, other seed other split
    assert base_to_novel(ds, 2, 3).split_sha256 == task.split_sha256
    assert base_to_novel(ds, 2, 4).split_sha256 != task.split_sha256
    # shots larger than the class: all items, no repeats
    big = base_to_novel(ds, shots=50, seed=1)
    assert len(big.train) == 5 * 6 and len(big.val) == 5 * 4


def test_odd_number_of_classes_and_caltech_ignored(tmp_path: Path) -> None:
    rel, _ = make_zhou(tmp_path, "Caltech101", 5)
    split_path = tmp_path / rel / "split_zhou_Caltech101.json"
    split = json.loads(split_path.read_text())
    split["train"].append(["BACKGROUND_Google/x.jpg", 0, "class_00"])
    split_path.write_text(json.dumps(split))
    ds = open_dataset("coop", tmp_path, rel)
    assert all("BACKGROUND_Google" not in r.key for r in ds.splits["train"])
    task = base_to_novel(ds, 1, 1)
    assert (len(task.base_classnames), len(task.novel_classnames)) == (3, 2)


def test_fgvc_aircraft(tmp_path: Path) -> None:
    d = tmp_path / "fgvc_aircraft"
    variants = ["707-320", "A300B4", "F/A-18", "Cessna 172"]
    (d / "images").mkdir(parents=True)
    (d / "variants.txt").write_text("\n".join(variants) + "\n")
    n = 0
    for split, k in (("train", 2), ("val", 1), ("test", 1)):
        lines = []
        for v in variants:
            for _ in range(k):
                img_id = f"{1000000 + n:07d}"
                _img(d / "images" / f"{img_id}.jpg")
                lines.append(f"{img_id} {v}")
                n += 1
        (d / f"images_variant_{split}.txt").write_text("\n".join(lines) + "\n")
    ds = open_dataset("coop", tmp_path, "fgvc_aircraft")
    assert ds.name == "FGVCAircraft" and ds.classnames == variants
    assert ds.template == "a photo of a {}, a type of aircraft."
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [8, 4, 4]
    assert ds.splits["train"][2] == Record("fgvc_aircraft/images/1000002.jpg", 1)
    assert ds.load_image(ds.splits["test"][-1].key).size == (8, 8)


def _imagenet_classnames(d: Path, wnids: list[str]) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "classnames.txt").write_text("".join(f"{w} class name {w[-2:]}\n" for w in wnids))


WNIDS = [f"n0{i:07d}" for i in range(6)]


def test_imagenet_family(tmp_path: Path) -> None:
    d = tmp_path / "imagenet"
    _imagenet_classnames(d, WNIDS)
    for w in WNIDS:
        for j in range(4):
            _img(d / "images" / "train" / w / f"{w}_{j}.JPEG")
        _img(d / "images" / "val" / w / f"val_{w}.JPEG")
    (d / "images" / "train" / "README.txt").write_text("not a class")
    ds = open_dataset("coop", tmp_path, "imagenet")
    assert ds.name == "ImageNet" and ds.wnids == WNIDS
    assert ds.classnames[0] == "class name 00"
    assert (len(ds.splits["train"]), len(ds.splits["val"]), len(ds.splits["test"])) == (24, 0, 6)
    task = base_to_novel(ds, shots=2, seed=1)
    assert (len(task.base_classnames), len(task.novel_classnames)) == (3, 3)
    # no val split: val comes from train items the few-shot sample did not take (never from test)
    assert len(task.val) == 3 * 2
    assert not {r.key for r in task.val} & {r.key for r in task.train}
    assert all("/train/" in r.key for r in task.val)

    v2 = tmp_path / "imagenetv2"
    _imagenet_classnames(v2, WNIDS)
    for label in (0, 3, 5):
        _img(v2 / "imagenetv2-matched-frequency-format-val" / str(label) / "a.jpeg")
    ds2 = open_dataset("coop", tmp_path, "imagenetv2")
    assert ds2.name == "ImageNetV2" and ds2.classnames == ds.classnames
    assert [r.label for r in ds2.splits["test"]] == [0, 3, 5] and ds2.splits["train"] == []
    t2 = base_to_novel(ds2, 16, 1)  # test-only: class split only
    assert (t2.train, t2.val, len(t2.base_classnames), len(t2.test_base), len(t2.test_novel)) == (
        [],
        [],
        3,
        1,
        2,
    )

    sk = tmp_path / "imagenet-sketch"
    _imagenet_classnames(sk, WNIDS)
    for w in WNIDS:
        _img(sk / "images" / w / "s.png")
    ds3 = open_dataset("coop", tmp_path, "imagenet-sketch")
    assert ds3.name == "ImageNetSketch" and len(ds3.splits["test"]) == 6

    for folder, sub, name in (
        ("imagenet-adversarial", "imagenet-a", "ImageNetA"),
        ("imagenet-rendition", "imagenet-r", "ImageNetR"),
    ):
        root = tmp_path / folder
        _imagenet_classnames(root, WNIDS)
        for w in (WNIDS[1], WNIDS[4]):  # a subset of the classes
            _img(root / sub / w / "x.jpg")
        (root / sub / "README.txt").write_text("readme")
        dsa = open_dataset("coop", tmp_path, folder)
        assert dsa.name == name and dsa.classnames == ["class name 01", "class name 04"]
        assert [r.label for r in dsa.splits["test"]] == [0, 1]
        assert wnid_subset(dsa, ds) == [1, 4]
        assert dsa.template == "a photo of a {}."


def test_imagefolder(tmp_path: Path) -> None:
    for split, classes in (
        ("train", ["cat", "dog", "golden_retriever"]),
        ("test", ["cat", "dog", "golden_retriever", "zebra"]),
    ):
        for c in classes:
            for j in range(2):
                _img(tmp_path / "mine" / split / c / f"{j}.jpg")
    (tmp_path / "mine" / "train" / "cat" / "notes.txt").write_text("ignored")
    ds = open_dataset(DatasetKind.imagefolder, tmp_path, "mine", options={"template": "a photo of the {}."})
    assert ds.classnames == ["cat", "dog", "golden retriever", "zebra"]
    assert (len(ds.splits["train"]), len(ds.splits["val"]), len(ds.splits["test"])) == (6, 0, 8)
    assert ds.template == "a photo of the {}." and ds.name == "mine"
    assert ds.splits["test"][-1] == Record("mine/test/zebra/1.jpg", 3)
    with pytest.raises(DatasetError) as ei:
        open_dataset("imagefolder", tmp_path, "mine", options={"template": "no placeholder"})
    assert ei.value.code == "bad_options"
    with pytest.raises(DatasetError) as ei:
        open_dataset("imagefolder", tmp_path, "missing")
    assert ei.value.code == "not_found"


def test_builtin_dataset() -> None:
    ds = open_dataset(
        "builtin",
        None,
        "",
        options={"num_classes": 6, "train_per_class": 3, "val_per_class": 1, "test_per_class": 2},
    )
    assert ds.classnames[:2] == ["black circle", "black cross"] and ds.template == "a photo of a {}."
    assert [len(ds.splits[s]) for s in ("train", "val", "test")] == [18, 6, 12]
    assert ds.splits["train"][4] == Record("builtin:1:1:train", 1)
    a = ds.load_image("builtin:1:1:train")
    assert a.size == (32, 32) and a.mode == "RGB"
    assert a.tobytes() == ds.load_image("builtin:1:1:train").tobytes()  # deterministic
    assert a.tobytes() != ds.load_image("builtin:1:1:test").tobytes()  # disjoint splits
    src = open_dataset("builtin", None, "", options={"num_classes": 6, "domain": "source"})
    assert src.options["hue"] == 0.0 and ds.options["hue"] == 0.6
    assert src.load_image("builtin:1:1:train").tobytes() != a.tobytes()
    assert src.split_sha256() != ds.split_sha256()
    task = base_to_novel(ds, 2, 1)
    assert (len(task.base_classnames), len(task.novel_classnames), len(task.train)) == (3, 3, 6)
    for bad in ("builtin:99:0:train", "builtin:1:1:x", "../x"):
        with pytest.raises(DatasetError):
            ds.load_image(bad)
    with pytest.raises(DatasetError) as ei:
        open_dataset("builtin", None, "", options={"domain": "mars"})
    assert ei.value.code == "bad_options"


def test_path_confinement(tmp_path: Path) -> None:
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    make_zhou(outside, "EuroSAT", 2)
    root.mkdir()
    for bad in ("../outside/eurosat", "/etc", str(outside / "eurosat"), "a/../../outside"):
        with pytest.raises(DatasetError) as ei:
            open_dataset("coop", root, bad, coop_name="EuroSAT")
        assert (ei.value.code, ei.value.param) == ("path_outside_root", "path"), bad
    os.symlink(outside / "eurosat", root / "eurosat")
    with pytest.raises(DatasetError) as ei:
        open_dataset("coop", root, "eurosat")
    assert ei.value.code == "path_outside_root"
    with pytest.raises(DatasetError) as ei:
        open_dataset("imagefolder", root, "eurosat")
    assert ei.value.code == "path_outside_root"


def test_split_entries_and_symlinked_files_confined(tmp_path: Path) -> None:
    rel, _ = make_zhou(tmp_path / "root", "DescribableTextures", 2)
    root = tmp_path / "root"
    split_path = root / rel / "split_zhou_DescribableTextures.json"
    split = json.loads(split_path.read_text())
    split["test"].append(["../../../secret.jpg", 0, "class_00"])
    split_path.write_text(json.dumps(split))
    with pytest.raises(DatasetError) as ei:
        open_dataset("coop", root, rel)
    assert ei.value.code == "path_outside_root"
    # an image that is a symlink out of the root: listing refuses it; loading by key refuses it
    _img(tmp_path / "secret.jpg")
    (root / "if" / "train" / "a").mkdir(parents=True)
    os.symlink(tmp_path / "secret.jpg", root / "if" / "train" / "a" / "x.jpg")
    with pytest.raises(DatasetError) as ei:
        open_dataset("imagefolder", root, "if")
    assert ei.value.code == "path_outside_root"
    os.remove(root / "if" / "train" / "a" / "x.jpg")
    _img(root / "if" / "train" / "a" / "y.jpg")
    ds = open_dataset("imagefolder", root, "if")
    os.symlink(tmp_path / "secret.jpg", root / "if" / "train" / "a" / "z.jpg")
    with pytest.raises(DatasetError) as ei:
        ds.load_image("if/train/a/z.jpg")
    assert ei.value.code == "path_outside_root"
    with pytest.raises(DatasetError) as ei:
        ds.load_image("../secret.jpg")
    assert ei.value.code == "path_outside_root"


def test_pickled_split_cache_is_never_read(tmp_path: Path) -> None:
    rel, _ = make_zhou(tmp_path, "OxfordFlowers", 2)
    marker = tmp_path / "PWNED"

    class Evil:
        def __reduce__(self):  # noqa: ANN204
            return (os.system, (f"touch {marker}",))

    cache = tmp_path / rel / "split_fewshot"
    cache.mkdir()
    for n in ("shot_16-seed_1.pkl", "shot_1-seed_1.pkl"):
        (cache / n).write_bytes(pickle.dumps(Evil()))
    ds = open_dataset("coop", tmp_path, rel)
    base_to_novel(ds, 1, 1)
    base_to_novel(ds, 16, 1)
    assert not marker.exists()


def test_bad_layouts(tmp_path: Path) -> None:
    rel, _ = make_zhou(tmp_path, "Food101", 2)
    p = tmp_path / rel / "split_zhou_Food101.json"
    for content in (
        "{not json",
        json.dumps({"train": [["a.jpg", "x", "c"]], "test": []}),
        json.dumps([1, 2]),
    ):
        p.write_text(content)
        with pytest.raises(DatasetError) as ei:
            open_dataset("coop", tmp_path, rel)
        assert ei.value.code == "bad_layout"
    p.write_text(json.dumps({"train": [["a.jpg", 0, "x"], ["b.jpg", 0, "y"]], "val": [], "test": []}))
    with pytest.raises(DatasetError) as ei:
        open_dataset("coop", tmp_path, rel)
    assert ei.value.code == "bad_layout"
    p.unlink()
    with pytest.raises(DatasetError) as ei:
        open_dataset("coop", tmp_path, rel, coop_name="Food101")
    assert ei.value.code == "not_found"
    with pytest.raises(DatasetError) as ei:
        open_dataset("coop", tmp_path, rel, coop_name="nonsense")
    assert ei.value.code == "unknown_dataset"
    (tmp_path / "plain").mkdir()
    with pytest.raises(DatasetError) as ei:
        open_dataset("coop", tmp_path, "plain")
    assert ei.value.code == "unknown_dataset"


def test_templates_table() -> None:
    assert TEMPLATES["UCF101"] == "a photo of a person doing {}."
    assert TEMPLATES["EuroSAT"] == "a centered satellite photo of {}."
    assert TEMPLATES["Food101"] == "a photo of {}, a type of food."
    assert TEMPLATES["DescribableTextures"] == "a photo of a {}, a type of texture."
    assert TEMPLATES["OxfordFlowers"] == "a photo of a {}, a type of flower."
    assert len(TEMPLATES) == 15
