"""mergetune.core.evaluation.crossdata: class mappings, the built-in shift domain, prompt and head evaluation on extra
datasets, and recover(..., extra_datasets=...) for prompt jobs."""

from __future__ import annotations

import pytest
import torch

from mergetune.core.config import BackboneSpec, DatasetKind, FeatureMode, Hyperparameters, PromptLearnerSpec
from mergetune.core.data import Dataset, Record, base_to_novel, open_dataset
from mergetune.core.errors import DatasetError
from mergetune.core.evaluation.crossdata import (
    builtin_shift_datasets,
    class_mapping,
    eval_records,
    evaluate_heads_on,
    evaluate_prompts_on,
)
from mergetune.core.method.recovery import recover
from mergetune.core.model.backbone import load_backbone
from mergetune.core.model.features import encode_records, labels_of
from mergetune.core.model.heads import Head, zero_shot_head
from mergetune.core.model.prompts import encode_template, zero_shot_ctx

OPTS = {"num_classes": 6, "train_per_class": 4, "val_per_class": 2, "test_per_class": 3}


@pytest.fixture(scope="module")
def backbone():
    torch.set_num_threads(1)
    return load_backbone(BackboneSpec(model="tiny-test", pretrained="random:4"))


@pytest.fixture(scope="module")
def ds():
    return open_dataset(DatasetKind.builtin, None, "", options=OPTS)


def _named(classnames, wnids=None, test=()):
    return Dataset(
        name="x", kind=DatasetKind.coop, classnames=list(classnames), template="a photo of a {}.",
        splits={"test": list(test)}, wnids=wnids,
    )  # fmt: skip


def test_class_mapping() -> None:
    src = ["cat", "dog", "fox", "owl"]
    assert class_mapping(_named(src), src) == ("same", [0, 1, 2, 3])
    assert class_mapping(_named(["owl", "dog"]), src) == ("subset", [3, 1])
    assert class_mapping(_named(["owl", "yak"]), src) == ("other", None)
    # by wnid when both sides have them (names may differ, as ImageNet-A's do)
    wn = ["n1", "n2", "n3", "n4"]
    assert class_mapping(_named(["Fox!", "Cat"], wnids=["n3", "n1"]), src, wn) == ("subset", [2, 0])
    assert class_mapping(_named(["x"], wnids=["n9"]), src, wn) == ("other", None)
    with pytest.raises(DatasetError):
        eval_records(_named(src))


def test_builtin_shift_datasets(ds) -> None:
    ((name, shifted),) = builtin_shift_datasets(ds)
    assert name == "builtin-shift" and shifted.options["hue"] == 1.2 and ds.options["hue"] == 0.6
    assert shifted.classnames == ds.classnames and len(shifted.splits["test"]) == 18
    assert shifted.options["num_classes"] == 6 and shifted.options["test_per_class"] == 3
    assert builtin_shift_datasets(shifted) == []
    assert builtin_shift_datasets(_named(["a"])) == []


def test_evaluate_heads_on_shift_and_subset(backbone, ds) -> None:
    (_, shifted), tau = builtin_shift_datasets(ds)[0], backbone.logit_scale
    zs = zero_shot_head(encode_template(backbone, ds.classnames, ds.template), tau)
    g = torch.Generator().manual_seed(0)
    ft = Head(zs.weight + 3 * torch.randn(zs.weight.shape, generator=g), torch.randn(6, generator=g))
    models = {"zero_shot": zs, "fine_tuned": ft, "merged": ft}
    ev, split = evaluate_heads_on(backbone, "shift", shifted, models, source_classnames=ds.classnames)
    feats = encode_records(backbone, shifted, shifted.splits["test"])
    y = labels_of(shifted.splits["test"])
    expect = 100.0 * float((ft.logits(feats).argmax(-1) == y).float().mean())
    assert split is not None and split.kind == "shift" and split.images == 18 and split.classes == 6
    assert split.accuracy["fine_tuned"] == pytest.approx(expect)
    assert ev.fine_tuned == pytest.approx(expect) and ev.recovered == ev.fine_tuned and ev.mapping == "same"
    assert ev.wise_ft is None and ev.endpoint_ensemble == split.accuracy["endpoint_ensemble"]
    # an ImageNet-A style subset: classes 4 and 1 only, labels 0/1 in the subset
    recs = [Record(r.key, {4: 0, 1: 1}[r.label]) for r in shifted.splits["test"] if r.label in (4, 1)]
    sub = Dataset(
        name="sub", kind=DatasetKind.builtin, classnames=[ds.classnames[4], ds.classnames[1]],
        template=ds.template, splits={"test": recs}, _loader=shifted.load_image,
    )  # fmt: skip
    ev2, split2 = evaluate_heads_on(backbone, "sub", sub, models, source_classnames=ds.classnames)
    f2 = encode_records(backbone, sub, recs)
    y2 = labels_of(recs)
    expect2 = 100.0 * float((ft.rows([4, 1]).logits(f2).argmax(-1) == y2).float().mean())
    assert (
        ev2.mapping == "subset"
        and split2.classes == 2
        and split2.accuracy["fine_tuned"] == pytest.approx(expect2)
    )
    # other classes: only zero-shot, with the dataset's own class names
    other = Dataset(
        name="o", kind=DatasetKind.builtin, classnames=["zebra", "yak"], template=ds.template,
        splits={"test": recs}, _loader=shifted.load_image,
    )  # fmt: skip
    ev3, split3 = evaluate_heads_on(backbone, "o", other, models, source_classnames=ds.classnames)
    assert (
        split3 is None
        and ev3.kind == "cross_dataset"
        and ev3.fine_tuned is None
        and 0 <= ev3.zero_shot <= 100
    )


def test_evaluate_prompts_on_init_context_equals_zero_shot(backbone, ds) -> None:
    # "a photo of a" as context reproduces the builtin template "a photo of a {}." exactly
    ctx = zero_shot_ctx(backbone, 4)
    spec = PromptLearnerSpec(n_ctx=4, ctx_init=None)
    (_, shifted) = builtin_shift_datasets(ds)[0]
    ev = evaluate_prompts_on(backbone, "s", shifted, ctx, ctx + 0.5, spec, source_classnames=ds.classnames)
    assert ev.kind == "shift" and ev.classes == 6 and ev.images == 18
    assert ev.fine_tuned == ev.zero_shot
    assert ev.recovered is not None and 0 <= ev.recovered <= 100


def test_recover_prompt_with_extra_datasets(backbone, ds) -> None:
    task = base_to_novel(ds, shots=2, seed=1)
    hp = Hyperparameters(epochs=1, batch_size=8, feature_mode=FeatureMode.none, curve_step=0.5)
    ctx = torch.randn(4, backbone.text_width) * 0.02
    (_, shifted) = builtin_shift_datasets(ds)[0]
    other = open_dataset(
        DatasetKind.builtin, None, "", options={**OPTS, "num_classes": 3, "domain": "source"}
    )
    out = recover(backbone, task, ctx, hp, extra_datasets=[("shift", shifted), ("source3", other)])
    rows = out.result.extra_evaluations
    assert [r["dataset"] for r in rows] == ["shift", "source3"]
    assert rows[0]["mapping"] == "same" and rows[1]["mapping"] == "subset" and rows[1]["classes"] == 3
    assert all(r["fine_tuned"] is not None and r["recovered"] is not None for r in rows)
    assert "extra_evaluations" in out.result.timings
    assert recover(backbone, task, ctx, hp).result.extra_evaluations == []
