"""Cross-dataset and distribution-shift evaluation of prompts and linear heads (ALGORITHM.md section 4,
"other settings").

Every extra dataset is evaluated on its test split (its val split when it has no test split) over its
**full** class list; the image features are encoded once per dataset with the test transform.

- Prompts transfer to any class list: zero-shot uses the extra dataset's own template; the fine-tuned
  and recovered contexts are run on its class names (a class-specific context uses its class mean,
  as for novel classes).
- A linear head only has rows for the job's classes. Its rows are mapped to the extra dataset's
  classes by wnid when both datasets have wnids (ImageNet-A/-R style subsets, via
  ``mergetune.core.data.wnid_subset``), otherwise by class name: ``same`` classes (ImageNet-V2/-Sketch, a
  shifted built-in domain), a ``subset``, or ``other`` classes, where only zero-shot is reported.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mergetune.core.config import DatasetKind, PromptLearnerSpec
from mergetune.core.data import Dataset, wnid_subset
from mergetune.core.errors import ConfigError, DatasetError
from mergetune.core.evaluation.heads import evaluate_split
from mergetune.core.evaluation.result import ExtraEvaluation, HeadSplit
from mergetune.core.model.backbone import Backbone
from mergetune.core.model.features import encode_records, labels_of
from mergetune.core.model.heads import Head, zero_shot_head
from mergetune.core.model.prompts import PromptLearner, encode_template, novel_ctx

logger = logging.getLogger(__name__)

ExtraDatasets = Sequence[tuple[str, Dataset]]


def eval_records(ds: Dataset) -> list[Any]:
    """The split an extra dataset is evaluated on: test, else val (test-only sets have only test)."""
    records = ds.splits.get("test") or ds.splits.get("val") or []
    if not records:
        raise DatasetError(
            f"dataset {ds.name!r} has no test or val images", code="bad_split", param="dataset"
        )
    return list(records)


def class_mapping(
    target: Dataset, source_classnames: Sequence[str], source_wnids: Sequence[str] | None = None
) -> tuple[str, list[int] | None]:
    """("same" | "subset" | "other", rows) where ``rows[l]`` is the source class of target label l
    (None for "other"). By wnid when both sides have wnids, else by exact class name."""
    src = list(source_classnames)
    if target.wnids is not None and source_wnids is not None:
        ref = Dataset(
            name="source",
            kind=DatasetKind.coop,
            classnames=src,
            template="",
            splits={},
            wnids=list(source_wnids),
        )
        try:
            rows = wnid_subset(target, ref)
        except DatasetError:
            return "other", None
    else:
        index = {c: i for i, c in enumerate(src)}
        if any(c not in index for c in target.classnames):
            return "other", None
        rows = [index[c] for c in target.classnames]
    return ("same" if rows == list(range(len(src))) else "subset"), rows


def builtin_shift_datasets(ds: Dataset) -> list[tuple[str, Dataset]]:
    """The registered shifted splits of a built-in dataset: the same classes, seed and sizes rendered in
    the "shift" domain (mergetune.core.builtin.render.SHIFT_DOMAIN), unless ``ds`` already is that domain.
    Empty for other dataset kinds (their shifted splits are registered datasets passed explicitly)."""
    if ds.kind != DatasetKind.builtin:
        return []
    from mergetune.core.data import open_dataset

    opts = {k: v for k, v in ds.options.items() if k not in ("hue", "blur")}
    shifted = open_dataset(DatasetKind.builtin, None, "", options={**opts, "domain": "shift"})
    if (shifted.options["hue"], shifted.options["blur"]) == (ds.options.get("hue"), ds.options.get("blur")):
        return []
    return [("builtin-shift", shifted)]


def _encode(backbone: Backbone, ds: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    records = eval_records(ds)
    return encode_records(backbone, ds, records), labels_of(records).to(backbone.device)


def _acc(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 0.0 if labels.numel() == 0 else 100.0 * int((logits.argmax(-1) == labels).sum()) / labels.numel()


@torch.no_grad()
def evaluate_prompts_on(
    backbone: Backbone,
    name: str,
    ds: Dataset,
    ctx_ft: torch.Tensor,
    ctx_rec: torch.Tensor,
    spec: PromptLearnerSpec,
    *,
    source_classnames: Sequence[str],
    source_wnids: Sequence[str] | None = None,
) -> ExtraEvaluation:
    """Zero-shot (``ds.template``), fine-tuned and recovered prompts on ``ds``'s full class list."""
    mapping, _ = class_mapping(ds, source_classnames, source_wnids)
    feats, labels = _encode(backbone, ds)
    tau = backbone.logit_scale
    generic = spec.model_copy(update={"csc": False})
    zs = zero_shot_head(encode_template(backbone, ds.classnames, ds.template), tau)
    learner = PromptLearner(backbone, ds.classnames, novel_ctx(ctx_ft.float()).to(backbone.device), generic)
    learner.requires_grad_(False)
    acc: dict[str, float] = {"zero_shot": _acc(zs.logits(feats), labels)}
    for key, ctx in (("fine_tuned", ctx_ft), ("recovered", ctx_rec)):
        g = learner.text_features(novel_ctx(ctx.float()).to(backbone.device)).float()
        acc[key] = _acc(zero_shot_head(g, tau).logits(feats), labels)
    return ExtraEvaluation(
        dataset=name,
        kind="cross_dataset" if mapping == "other" else "shift",
        mapping=mapping,
        classes=ds.num_classes,
        images=int(labels.numel()),
        **acc,
    )


@dataclass
class PreparedSplit:
    """An extra dataset's test features and its class mapping to a head's rows."""

    name: str
    dataset: Dataset
    mapping: str
    rows: list[int] | None
    feats: torch.Tensor
    labels: torch.Tensor


@torch.no_grad()
def prepare_head_split(
    backbone: Backbone,
    name: str,
    ds: Dataset,
    *,
    source_classnames: Sequence[str],
    source_wnids: Sequence[str] | None = None,
) -> PreparedSplit:
    mapping, rows = class_mapping(ds, source_classnames, source_wnids)
    feats, labels = _encode(backbone, ds)
    return PreparedSplit(name, ds, mapping, rows, feats, labels)


@torch.no_grad()
def evaluate_heads_on(
    backbone: Backbone,
    name: str,
    ds: Dataset,
    models: Mapping[str, Head],
    *,
    source_classnames: Sequence[str],
    source_wnids: Sequence[str] | None = None,
    prepared: PreparedSplit | None = None,
) -> tuple[ExtraEvaluation, HeadSplit | None]:
    """Head models (``zero_shot``, ``fine_tuned``, ``merged``, optional ``wise_ft``; rows = the source
    classes) on ``ds``'s full class list; the HeadSplit is None when the classes are "other"."""
    if len(source_classnames) != models["zero_shot"].weight.shape[0]:
        raise ConfigError("source_classnames must name the head's rows", param="classnames")
    p = prepared or prepare_head_split(
        backbone, name, ds, source_classnames=source_classnames, source_wnids=source_wnids
    )
    mapping, rows, feats, labels = p.mapping, p.rows, p.feats, p.labels
    if rows is None:
        zs = zero_shot_head(encode_template(backbone, ds.classnames, ds.template), backbone.logit_scale)
        ev = ExtraEvaluation(
            dataset=name,
            kind="cross_dataset",
            mapping=mapping,
            classes=ds.num_classes,
            images=int(labels.numel()),
            zero_shot=_acc(zs.logits(feats), labels),
        )
        return ev, None
    split = evaluate_split(name, "shift", (feats, labels), {k: h.rows(rows) for k, h in models.items()})
    a = split.accuracy
    ev = ExtraEvaluation(
        dataset=name,
        kind="shift",
        mapping=mapping,
        classes=ds.num_classes,
        images=split.images,
        zero_shot=a["zero_shot"],
        fine_tuned=a.get("fine_tuned"),
        recovered=a.get("merged"),
        recovered_zs_ensemble=a.get("merged_zs_ensemble"),
        endpoint_ensemble=a.get("endpoint_ensemble"),
        wise_ft=a.get("wise_ft"),
    )
    return ev, split
