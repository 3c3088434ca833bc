"""Human-readable report of a recovery job: a self-contained ``report.html`` and ``curves.png``.

``render_report(report, out_dir)`` takes the ``report.json`` dict (RecoveryResult.model_dump(mode="json")
plus ``manifest`` and ``job_id``) and writes both files. Every optional part may be missing: a section
without data says so instead of failing. The HTML embeds its images as base64 PNG data URIs and its CSS
inline; the only links are relative ones to the job's artifact names, so the file opens offline and,
served from ``.../artifacts/report.html``, its download links resolve to the sibling artifacts.

The page is the Jinja2 template ``templates/report.html`` (autoescaped); this module reads the report
into the template's context (which rows each table has, which numbers go in them) and gives the
template its number-formatting filters. The figures come from :mod:`mergetune.core.evaluation.plots`,
which imports matplotlib only when it plots.
"""

from __future__ import annotations

import base64
import json
import logging
import math
from collections.abc import Mapping
from functools import cache
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup, escape

from mergetune.core.evaluation.plots import (
    SEGMENTS,
    SPACES,
    _dict,
    _list,
    _num,
    _series,
    placeholder_png,
    plot_curves,
    plot_training,
    plot_wise_ft,
)

logger = logging.getLogger(__name__)

REPORT_HTML = "report.html"
CURVES_PNG = "curves.png"
TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"

# Artifact names a job publishes (CONTRACT: worker pipeline), linked relatively from the report.
DOWNLOADS: tuple[tuple[str, str], ...] = (
    ("prompts.safetensors", "recovered context + JSON metadata (safetensors)"),
    ("prompts.pth.tar", "Dassl layout, loads into CoOp's evaluation code"),
    ("prompts-coop.tar", "prompt_learner/model.pth.tar-<epochs>: unpack into CoOp's --model-dir"),
    ("report.json", "metrics, curves, barrier heights, manifest"),
    ("manifest.json", "seed, resolved config, hashes, package versions"),
    ("curves.png", "interpolation curves"),
    ("report.html", "this report"),
)

HEAD_DOWNLOADS: tuple[tuple[str, str], ...] = (
    ("head.safetensors", "merged linear head (weight, bias) + JSON metadata (safetensors)"),
    *DOWNLOADS[2:],
)

MODELS = (("zero_shot", "Zero-shot"), ("fine_tuned", "Fine-tuned"), ("recovered", "Recovered"))
#: Linear-head models (mergetune.core.method.heads.HEAD_MODELS), in table order; unknown ones follow under their key.
HEAD_MODEL_LABELS = (
    ("zero_shot", "Zero-shot"),
    ("fine_tuned", "Fine-tuned"),
    ("merged", "Merged (MergeTune)"),
    ("merged_zs_ensemble", "Merged + zero-shot ensemble"),
    ("endpoint_ensemble", "Endpoint ensemble (zero-shot + fine-tuned)"),
    ("wise_ft", "WiSE-FT (chosen alpha)"),
)
#: Columns of the extra-evaluation table: the facts first, then one accuracy column per model.
EXTRA_FACTS = (
    ("dataset", "dataset"),
    ("kind", "kind"),
    ("mapping", "classes vs job"),
    ("classes", "classes"),
    ("images", "images"),
)
EXTRA_MODELS = (
    ("zero_shot", "Zero-shot"),
    ("fine_tuned", "Fine-tuned"),
    ("recovered", "Recovered"),
    ("recovered_zs_ensemble", "Recovered + zero-shot ensemble"),
    ("endpoint_ensemble", "Endpoint ensemble"),
    ("wise_ft", "WiSE-FT"),
)
SPLITS = (("base", "Base"), ("novel", "Novel"), ("hm", "HM"))


# ------------------------------------------------------------------------------ the template's filters


def _fmt(value: Any, digits: int = 2) -> str:
    """``num``: a number to ``digits`` decimals, or a dash when it is missing, non-numeric or not finite."""
    num = _num(value)
    return "—" if num is None else f"{num:.{digits}f}"


def _signed(value: float) -> str:
    """``signed``: a difference in percentage points, always with its sign."""
    return f"{value:+.2f}"


def _scalar(value: Any) -> Markup:
    """``scalar``: a table cell for any JSON value (floats to 6 significant digits, containers as JSON)."""
    if isinstance(value, float):
        return escape(f"{value:.6g}")
    if isinstance(value, Mapping | list | tuple):
        return Markup("<code>{}</code>").format(json.dumps(value, sort_keys=True, default=str))
    return escape(value)


@cache
def _env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES_DIR)),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=StrictUndefined,
    )
    env.filters.update(num=_fmt, signed=_signed, scalar=_scalar)
    env.tests["number"] = lambda value: _num(value) is not None
    return env


# ------------------------------------------------------------------------------------ reading the report


def _diff(value: Any, ref: Any) -> float | None:
    """``value - ref`` when both are numbers (the deltas the tables show), else None."""
    a, b = _num(value), _num(ref)
    return None if a is None or b is None else a - b


def _data_uri(png: bytes | None) -> str | None:
    return None if png is None else "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _lookup(data: Mapping[str, Any], *paths: str) -> Any:
    """The first present value among dotted ``paths`` (manifest layouts differ between versions)."""
    for path in paths:
        node: Any = data
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node not in (None, "", {}):
            return node
    return None


def _provenance(manifest: Mapping[str, Any], report: Mapping[str, Any]) -> dict[str, Any]:
    """The facts a reader looks for first, pulled out of the manifest (the full manifest follows)."""
    worker = _lookup(manifest, "worker.host", "worker_host", "host")
    node = _lookup(manifest, "worker.node")
    facts = {
        "seed": _lookup(manifest, "seed", "config.hyperparameters.seed", "hyperparameters.seed"),
        "dataset split sha256": _lookup(
            manifest,
            "dataset.split_sha256",
            "dataset_split_sha256",
            "split_sha256",
            "dataset.sha256_of_split",
        ),
        "backbone": _lookup(manifest, "backbone.model", "config.backbone.model"),
        "backbone weights hash": _lookup(
            manifest,
            "backbone.weights_sha256",
            "backbone_weights_sha256",
            "backbone.identity",
            "weights_sha256",
        ),
        "checkpoint sha256": _lookup(manifest, "checkpoint.sha256"),
        "worker host": f"{worker} ({node})" if worker and node else worker or node,
        "device": _lookup(manifest, "worker.device", "device"),
        "total time (s)": _lookup(manifest, "timings.total", "timings.total_s")
        or _dict(report.get("timings")).get("total"),
    }
    hp = _lookup(manifest, "config.hyperparameters", "hyperparameters")
    packages = _lookup(manifest, "packages", "package_versions")
    return {
        "facts": {k: v for k, v in facts.items() if v is not None},
        "hyperparameters": hp if isinstance(hp, Mapping) else None,
        "packages": packages if isinstance(packages, Mapping) else None,
    }


def _when(value: Any) -> str | None:
    """An ISO timestamp from the manifest as ``YYYY-MM-DD HH:MM UTC`` (the text as it is if unparsable)."""
    if not isinstance(value, str) or not value:
        return None
    from datetime import UTC, datetime

    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    if at.tzinfo is not None:
        at = at.astimezone(UTC)
    return at.strftime("%Y-%m-%d %H:%M UTC")


def _header(
    report: Mapping[str, Any], manifest: Mapping[str, Any]
) -> list[tuple[str, str | None, str | None]]:
    """The page header's facts, always these five in this order: (label, value or None, detail)."""
    ds, ck, bb = (
        _dict(manifest.get("dataset")),
        _dict(manifest.get("checkpoint")),
        _dict(manifest.get("backbone")),
    )
    if not bb:
        bb = _dict(_dict(manifest.get("config")).get("backbone"))
    job = report.get("job_id") or manifest.get("job_id")
    dataset = ds.get("name") or ds.get("id")
    ds_detail = ", ".join(str(v) for v in (ds.get("id") if ds.get("name") else None, ds.get("kind")) if v)
    ck_detail = ", ".join(
        str(v)
        for v in (ck.get("method"), f"sha256 {str(ck['sha256'])[:12]}" if ck.get("sha256") else None)
        if v
    )
    backbone = bb.get("model")
    date = _when(manifest.get("finished_at")) or _when(manifest.get("started_at"))
    return [
        ("Job", str(job) if job else None, None),
        ("Dataset", str(dataset) if dataset else None, ds_detail or None),
        ("Checkpoint", str(ck["id"]) if ck.get("id") else None, ck_detail or None),
        (
            "Backbone",
            str(backbone) if backbone else None,
            str(bb["pretrained"]) if bb.get("pretrained") else None,
        ),
        ("Date", date, "finished" if manifest.get("finished_at") else None),
    ]


def verdict_of(report: Mapping[str, Any]) -> Mapping[str, Any]:
    """The report's verdict; computed from its metrics and baselines when an older report lacks one."""
    v = _dict(report.get("verdict"))
    if v or not _dict(report.get("metrics")):
        return v
    try:
        from mergetune.core.evaluation.result import Baselines, Metrics, compute_verdict

        bl = _dict(report.get("baselines"))
        return compute_verdict(
            Metrics.model_validate(report["metrics"]), Baselines.model_validate(bl) if bl else None
        ).model_dump(mode="json")
    except (ValueError, KeyError, TypeError):
        return {}


def _verdict(v: Mapping[str, Any]) -> dict[str, Any] | None:
    if not v:
        return None
    warnings = [w for w in _list(v.get("warnings")) if isinstance(w, Mapping)]
    return {
        "text": str(v.get("text", "")).split(". Warning: ")[0],
        "warnings": [(w.get("code"), w.get("message")) for w in warnings],
    }


def _protocol(report: Mapping[str, Any]) -> str | None:
    """Which classes the checkpoint was trained on and how its prompts were assembled (prompt jobs)."""
    protocol = _dict(report.get("protocol"))
    position = _dict(_dict(report.get("config")).get("prompt")).get("class_token_position")
    if not protocol and not position:
        return None
    bits = []
    if protocol.get("name"):
        bits.append(f"protocol {protocol['name']}")
    if position:
        bits.append(f"class token {position}")
    labels = _dict(protocol.get("labels"))
    if labels:
        bits.append(f"columns: base = {labels.get('base', 'base')}, novel = {labels.get('novel', 'novel')}")
    return " · ".join(str(b) for b in bits)


def _summary(metrics: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """One row per model: per split its accuracy and its deltas vs fine-tuned and zero-shot."""
    if not any(_dict(metrics.get(k)) for k, _ in MODELS):
        return None
    refs = (
        ("fine_tuned", _dict(metrics.get("fine_tuned")), "FT"),
        ("zero_shot", _dict(metrics.get("zero_shot")), "ZS"),
    )
    rows = []
    for key, label in MODELS:
        row = _dict(metrics.get(key))
        cells = []
        for split, _ in SPLITS:
            deltas = [
                (tag, _diff(row.get(split), ref.get(split))) for ref_key, ref, tag in refs if key != ref_key
            ]
            cells.append({"value": row.get(split), "notes": [(tag, d) for tag, d in deltas if d is not None]})
        rows.append({"label": label, "cells": cells})
    return rows


def _barriers(curves: Mapping[str, Any]) -> list[tuple[str, str, Any, Any]]:
    rows = []
    for space, space_label in SPACES:
        for segment, segment_label in SEGMENTS:
            seg = _dict(_dict(curves.get(space)).get(segment))
            if seg:
                rows.append((space_label, segment_label, seg.get("barrier_base"), seg.get("barrier_novel")))
    return rows


def _baselines(baselines: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    names = (
        ("feature_interpolation", "Feature interpolation (WiSE-FT style)"),
        ("ensemble", "Output ensemble of zero-shot and fine-tuned"),
    )
    rows = []
    for key, label in names:
        b = _dict(baselines.get(key))
        if b:
            rows.append(
                {"label": label, "alpha": _num(b.get("alpha")), "cells": [b.get(s) for s, _ in SPLITS]}
            )
    for key, b in baselines.items():  # baselines the schema may grow later
        if key not in dict(names) and isinstance(b, Mapping):
            rows.append({"label": key, "alpha": None, "cells": [b.get(s) for s, _ in SPLITS]})
    if not rows:
        return None
    rec = _dict(metrics.get("recovered"))
    return {"rows": rows, "recovered": [rec.get(s) for s, _ in SPLITS] if rec else None}


def _training(training: list[Any]) -> dict[str, Any] | None:
    rows = [r for r in training if isinstance(r, Mapping)]
    if not rows:
        return None
    cols: tuple[str, ...] = ("epoch", "loss", "ce", "zs", "lmc", "lr")
    if any(_num(r.get("val_acc")) is not None for r in rows):
        cols += ("val_acc",)
    return {"cols": cols, "rows": rows}


def _extra(extra: list[Any]) -> dict[str, Any] | None:
    """One row per extra dataset (cross-dataset / shift): its facts, then the accuracy of each model as
    extra columns (models no row has a number for are left out; unknown keys follow as they are)."""
    rows = [r for r in extra if isinstance(r, Mapping)]
    if not rows:
        return None
    facts = [(k, label) for k, label in EXTRA_FACTS if any(k in r for r in rows)]
    models = [(k, label) for k, label in EXTRA_MODELS if any(_num(r.get(k)) is not None for r in rows)]
    known = {k for k, _ in EXTRA_FACTS} | {k for k, _ in EXTRA_MODELS}
    others: list[str] = []
    for r in rows:
        others += [k for k in r if k not in known and k not in others]
    body = [
        {
            "facts": [r.get(k, "") for k, _ in facts],
            "models": [
                (r.get(k), _diff(r.get(k), r.get("zero_shot")) if k != "zero_shot" else None)
                for k, _ in models
            ],
            "others": [r.get(k, "") for k in others],
        }
        for r in rows
    ]
    return {
        "facts": [label for _, label in facts],
        "models": [label for _, label in models],
        "others": others,
        "rows": body,
    }


def _head_models(head: Mapping[str, Any], splits: list[Mapping[str, Any]]) -> list[tuple[str, str]]:
    keys: list[str] = []
    for sp in splits:
        keys += [k for k in _dict(sp.get("accuracy")) if k not in keys]
    keys += [k for k in _dict(head.get("models")) if k not in keys]
    labels = dict(HEAD_MODEL_LABELS)
    order = [k for k, _ in HEAD_MODEL_LABELS if k in keys] + [k for k in keys if k not in labels]
    return [(k, labels.get(k, k)) for k in order]


def _head_table(head: Mapping[str, Any]) -> dict[str, Any] | None:
    """Per split (validation, in-distribution, shifts): accuracy and loss of every head model."""
    splits = [sp for sp in _list(head.get("splits")) if isinstance(sp, Mapping)]
    if not splits:
        return None
    models = _head_models(head, splits)
    rows = []
    for sp in splits:
        acc, loss = _dict(sp.get("accuracy")), _dict(sp.get("loss"))
        best = max((v for v in (_num(acc.get(k)) for k, _ in models) if v is not None), default=None)
        cells = []
        for k, _ in models:
            a = _num(acc.get(k))
            cells.append(
                {
                    "acc": a,
                    "best": a is not None and best is not None and a == best,
                    "delta": _diff(a, acc.get("zero_shot")) if k != "zero_shot" else None,
                    "loss": _num(loss.get(k)),
                }
            )
        rows.append({"split": sp, "cells": cells})
    return {"models": [label for _, label in models], "rows": rows}


def _wise_ft_table(sweep: Mapping[str, Any]) -> dict[str, Any] | None:
    alphas = _series(sweep.get("alphas"))
    acc = _dict(sweep.get("accuracy"))
    names = [n for n in acc if len(_series(acc.get(n))) == len(alphas)]
    if not alphas or not names:
        return None
    best = _num(sweep.get("best_alpha"))
    rows = [
        {
            "alpha": a,
            "chosen": best is not None and not math.isnan(a) and abs(a - best) < 1e-9,
            "accs": [_series(acc.get(n))[i] for n in names],
        }
        for i, a in enumerate(alphas)
    ]
    return {"names": names, "rows": rows}


def _head_section(head: Mapping[str, Any], wise_png: bytes | None) -> dict[str, Any] | None:
    if not head:
        return None
    sweep = _dict(head.get("wise_ft"))
    return {
        "classes": head.get("classes", "?"),
        "dim": head.get("dim", "?"),
        "bias": bool(head.get("bias")),
        "table": _head_table(head),
        "legend": list(_dict(head.get("models")).items()),
        "best_alpha": _num(sweep.get("best_alpha")),
        "selected_on": sweep.get("selected_on", "val"),
        "wise_uri": _data_uri(wise_png),
        "wise_ft": _wise_ft_table(sweep),
    }


# -------------------------------------------------------------------------------------------------- API


def build_html(
    report: Mapping[str, Any],
    curves_png: bytes | None,
    training_png: bytes | None,
    wise_png: bytes | None = None,
) -> str:
    """The report page for ``report`` with the given PNGs inlined (None: section says 'no data')."""
    metrics = _dict(report.get("metrics"))
    manifest = _dict(report.get("manifest"))
    config = _dict(report.get("config"))
    job_id = report.get("job_id")
    head = _dict(report.get("head"))
    return (
        _env()
        .get_template(REPORT_HTML)
        .render(
            title=f"MergeTune report — {job_id}" if job_id else "MergeTune report",
            header=_header(report, manifest),
            verdict=_verdict(verdict_of(report)),
            protocol=_protocol(report),
            splits=[label for _, label in SPLITS],
            summary=_summary(metrics),
            head=_head_section(head, wise_png),
            curves_uri=_data_uri(curves_png),
            barriers=_barriers(_dict(report.get("curves"))),
            baselines=_baselines(_dict(report.get("baselines")), metrics),
            training_uri=_data_uri(training_png),
            training=_training(_list(report.get("training"))),
            extra=_extra(_list(report.get("extra_evaluations"))),
            manifest=manifest,
            provenance=_provenance(manifest, report) if manifest else None,
            timings=_dict(report.get("timings")),
            config=json.dumps(config, indent=2, sort_keys=True, default=str) if config else None,
            downloads=HEAD_DOWNLOADS if head else DOWNLOADS,
        )
    )


def render_report(report: dict, out_dir: Path) -> list[Path]:
    """Write ``report.html`` and ``curves.png`` for ``report`` (the report.json dict) into ``out_dir``.

    Returns the paths written, report.html first. ``curves.png`` is always a valid PNG: when the
    report has no curves it is a placeholder panel saying so, so embedders never get a broken image.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report if isinstance(report, Mapping) else {}
    curves_png = plot_curves(_dict(report.get("curves")), _dict(report.get("metrics")))
    training_png = plot_training(_list(report.get("training")))
    wise_png = plot_wise_ft(_dict(_dict(report.get("head")).get("wise_ft")))
    curves_path = out_dir / CURVES_PNG
    curves_path.write_bytes(
        curves_png if curves_png is not None else placeholder_png("no interpolation curves")
    )
    html_path = out_dir / REPORT_HTML
    html_path.write_text(build_html(report, curves_png, training_png, wise_png), encoding="utf-8")
    logger.info("report written to %s (job %s)", out_dir, report.get("job_id"))
    return [html_path, curves_path]
