"""Human-readable report of a recovery job: a self-contained ``report.html`` and ``curves.png``.

``render_report(report, out_dir)`` takes the ``report.json`` dict (RecoveryResult.model_dump(mode="json")
plus ``manifest`` and ``job_id``) and writes both files. Every optional part may be missing: a section
without data says so instead of failing. The HTML embeds its images as base64 PNG data URIs and its CSS
inline; the only links are relative ones to the job's artifact names, so the file opens offline and,
served from ``.../artifacts/report.html``, its download links resolve to the sibling artifacts.

matplotlib is imported inside the functions that plot (import hygiene: ``import mergetune.core.evaluation.report``
stays cheap and the API process never pays for it). Plots use the object-oriented ``Figure`` API
with the Agg canvas, so no global pyplot state or backend switch is touched.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

REPORT_HTML = "report.html"
CURVES_PNG = "curves.png"

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
SPACES = (
    ("classifier", "classifier (text-feature) space"),
    ("prompt", "prompt-parameter space"),
    ("feature", "feature space (image and text features; MMA)"),
    ("adapter", "adapter-parameter space (MMA)"),
)
SEGMENTS = (
    ("zs_ft", "zero-shot → fine-tuned"),
    ("zs_rec", "zero-shot → recovered"),
    ("ft_rec", "fine-tuned → recovered"),
)
TERMS = (("ce", "cross-entropy"), ("zs", "zero-shot surrogate"), ("lmc", "path (LMC) term"))

_CSS = """
.verdict{border-left:4px solid #1e7b34;background:#eef7f0;padding:.4rem .8rem;margin:.6rem 0}
.verdict.warn{border-left-color:#b3261e;background:#fbeeed}.verdict ul{margin:.3rem 0}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d232b;padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d8dde3;
padding-bottom:.2rem}h3{font-size:1rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #d8dde3;padding:.25rem .6rem;
text-align:right;vertical-align:top}th{background:#f1f4f7}td.l,th.l{text-align:left}
.pos{color:#11733b}.neg{color:#b3261e}.muted{color:#6b7480}.sub{font-size:.8em;display:block}
img{max-width:100%;border:1px solid #e3e7eb}tr.chosen th,tr.chosen td{background:#fff4d6}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;
font-size:.85em}pre{background:#f6f8fa;padding:.6rem;overflow:auto}
"""


# --------------------------------------------------------------------------------------------- helpers


def _num(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, non-numeric, NaN or infinite)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _fmt(value: Any, digits: int = 2) -> str:
    num = _num(value)
    return "—" if num is None else f"{num:.{digits}f}"


def _delta(value: Any, ref: Any) -> str:
    a, b = _num(value), _num(ref)
    if a is None or b is None:
        return ""
    d = a - b
    cls = "pos" if d > 0 else "neg" if d < 0 else "muted"
    return f'<span class="{cls}">{d:+.2f}</span>'


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _dict(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list:
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str | bytes) else []


def _series(values: Any) -> list[float]:
    """A list of floats with NaN in place of missing entries (matplotlib leaves gaps there)."""
    out = []
    for v in _list(values):
        num = _num(v)
        out.append(float("nan") if num is None else num)
    return out


def _has_points(values: Iterable[float]) -> bool:
    return any(not math.isnan(v) for v in values)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return _e(f"{value:.6g}")
    if isinstance(value, Mapping | list | tuple):
        return f"<code>{_e(json.dumps(value, sort_keys=True, default=str))}</code>"
    return _e(value)


def _kv_table(data: Mapping[str, Any], *, depth: int = 3) -> str:
    """A two-column table of ``data``; nested dicts become nested tables down to ``depth`` levels."""
    rows = []
    for key, value in data.items():
        if depth > 1 and isinstance(value, Mapping) and value:
            cell = _kv_table(value, depth=depth - 1)
        else:
            cell = _scalar(value)
        rows.append(f'<tr><th class="l">{_e(key)}</th><td class="l">{cell}</td></tr>')
    return "<table>" + "".join(rows) + "</table>" if rows else '<p class="muted">none</p>'


def _lookup(data: Mapping[str, Any], *paths: str) -> Any:
    """The first present value among dotted ``paths`` (manifest layouts differ between versions)."""
    for path in paths:
        node: Any = data
        for part in path.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node not in (None, "", {}):
            return node
    return None


def _provenance(manifest: Mapping[str, Any], report: Mapping[str, Any]) -> str:
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
    rows = {k: v for k, v in facts.items() if v is not None}
    hp = _lookup(manifest, "config.hyperparameters", "hyperparameters")
    packages = _lookup(manifest, "packages", "package_versions")
    out = _kv_table(rows, depth=1) if rows else ""
    if isinstance(hp, Mapping):
        out += "<h3>Resolved hyperparameters</h3>" + _kv_table(hp, depth=1)
    if isinstance(packages, Mapping):
        out += "<h3>Package versions</h3>" + _kv_table(packages, depth=1)
    return out


# ------------------------------------------------------------------------------------------------ plots


def _figure(rows: int, cols: int, width: float, height: float, *, hspace: float = 0.3):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # Fixed margins rather than constrained layout: the layout solver costs more than the drawing.
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    fig.subplots_adjust(
        left=0.6 / width,
        right=1 - 0.15 / width,
        bottom=0.5 / height,
        top=1 - 0.45 / height,
        wspace=0.25,
        hspace=hspace,
    )
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


CURVE_ROW_INCHES = 3.4  # height of one space's row in curves.png
CURVE_HEAD_INCHES = 0.9  # the figure title


def _hm_series(base: list[float], novel: list[float]) -> list[float]:
    """Harmonic mean of base and novel accuracy point by point (NaN where either is missing)."""
    out = []
    for b, n in zip(base, novel, strict=False):
        if math.isnan(b) or math.isnan(n):
            out.append(float("nan"))
        else:
            out.append(2 * b * n / (b + n) if b + n > 0 else 0.0)
    return out


def _plot_curves(curves: Mapping[str, Any]) -> bytes | None:
    """Accuracy along the interpolation paths: one titled row per space (its own figure within the
    PNG), one panel per segment with base, novel and their HM; one y range shared by every panel."""
    spaces = [(key, label) for key, label in SPACES if _dict(curves.get(key))]
    if not spaces:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width = 13.0
    height = CURVE_HEAD_INCHES + CURVE_ROW_INCHES * len(spaces)
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    rows = fig.subfigures(
        len(spaces) + 1,
        1,
        squeeze=False,
        height_ratios=[CURVE_HEAD_INCHES] + [CURVE_ROW_INCHES] * len(spaces),
    )[:, 0]
    rows[0].text(
        0.5, 0.45, "Accuracy along the interpolation paths (alpha 0 → 1)", ha="center", va="center",
        fontsize=15, fontweight="bold",
    )  # fmt: skip
    subfigs = rows[1:]
    all_axes = []
    lows, highs = [], []
    for sub, (space, space_label) in zip(subfigs, spaces, strict=True):
        sub.suptitle(space_label, fontsize=12, x=0.01, ha="left")
        axes = sub.subplots(1, len(SEGMENTS), squeeze=False)[0]
        sub.subplots_adjust(left=0.06, right=0.99, bottom=0.2, top=0.78, wspace=0.12)
        for ax, (segment, segment_label) in zip(axes, SEGMENTS, strict=True):
            seg = _dict(_dict(curves.get(space)).get(segment))
            alphas = _series(seg.get("alphas"))
            base, novel = _series(seg.get("base_acc")), _series(seg.get("novel_acc"))
            lines = [
                ("base", base, "-", 1.6),
                ("novel", novel, "-", 1.6),
                ("HM", _hm_series(base, novel), "--", 2.4),
            ]
            drawn = False
            for name, ys, style, lw in lines:
                if alphas and len(ys) == len(alphas) and _has_points(ys):
                    ax.plot(alphas, ys, style, marker="o", markersize=3.5, linewidth=lw, label=name)
                    finite = [v for v in ys if not math.isnan(v)]
                    lows.append(min(finite))
                    highs.append(max(finite))
                    drawn = True
            if drawn:
                ax.legend(fontsize=9, loc="best")
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=11)
            ax.set_title(segment_label, fontsize=11)
            ax.set_xlabel("alpha", fontsize=10)
            ax.tick_params(labelsize=10)
            ax.grid(alpha=0.3)
            all_axes.append(ax)
        axes[0].set_ylabel("top-1 accuracy (%)", fontsize=10)
    if lows:  # one y range for every panel: heights compare across segments and spaces
        lo, hi = min(lows), max(highs)
        pad = max(1.0, (hi - lo) * 0.06)
        for ax in all_axes:
            ax.set_ylim(lo - pad, hi + pad)
    return _png(fig)


def _plot_training(training: list[Mapping[str, Any]]) -> bytes | None:
    """Total loss per epoch, then the three loss terms each in its own panel."""
    rows = [r for r in training if isinstance(r, Mapping)]
    if not rows:
        return None
    xs = _series([r.get("epoch") for r in rows])
    if not _has_points(xs):
        xs = [float(i) for i in range(len(rows))]
    panels: list[tuple[str, str]] = [("loss", "total loss"), *TERMS]
    if _has_points(_series([r.get("val_acc") for r in rows])):
        panels.append(("val_acc", "validation accuracy (%)"))
    fig, axes = _figure(1, len(panels), 13.0 if len(panels) <= 4 else 16.0, 3.0)
    for ax, (key, label) in zip(axes[0], panels, strict=True):
        ys = _series([r.get(key) for r in rows])
        if _has_points(ys):
            ax.plot(xs, ys, marker="o", markersize=3)
        else:
            ax.text(0.5, 0.5, "not used", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    return _png(fig)


def _plot_wise_ft(sweep: Mapping[str, Any]) -> bytes | None:
    """Accuracy and loss vs alpha for every split of the WiSE-FT sweep, the chosen alpha marked."""
    alphas = _series(sweep.get("alphas"))
    acc, loss = _dict(sweep.get("accuracy")), _dict(sweep.get("loss"))
    if not alphas or not any(_has_points(_series(v)) for v in acc.values()):
        return None
    best = _num(sweep.get("best_alpha"))
    fig, axes = _figure(1, 2, 11.0, 3.5)
    for ax, data, ylabel in ((axes[0][0], acc, "accuracy (%)"), (axes[0][1], loss, "loss")):
        drawn = False
        for name, values in data.items():
            ys = _series(values)
            if len(ys) == len(alphas) and _has_points(ys):
                ax.plot(alphas, ys, marker="o", markersize=3, label=str(name))
                drawn = True
        if best is not None:
            ax.axvline(best, color="#b3261e", linestyle="--", linewidth=1, label=f"chosen alpha {best:.2f}")
        if drawn:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("alpha (0 = zero-shot, 1 = fine-tuned)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    axes[0][0].set_title("WiSE-FT sweep: accuracy", fontsize=9)
    axes[0][1].set_title("WiSE-FT sweep: loss", fontsize=9)
    return _png(fig)


# ---------------------------------------------------------------------------------------------- sections


def _summary(metrics: Mapping[str, Any]) -> str:
    if not any(_dict(metrics.get(k)) for k, _ in MODELS):
        return '<p class="muted">No metrics recorded.</p>'
    zs, ft = _dict(metrics.get("zero_shot")), _dict(metrics.get("fine_tuned"))
    head = "".join(f"<th>{label}</th>" for _, label in SPLITS)
    body = []
    for key, label in MODELS:
        row = _dict(metrics.get(key))
        cells = []
        for split, _ in SPLITS:
            value = row.get(split)
            notes = []
            for ref_key, ref, tag in (("fine_tuned", ft, "FT"), ("zero_shot", zs, "ZS")):
                delta = _delta(value, ref.get(split)) if key != ref_key else ""
                if delta:
                    notes.append(f'<span class="sub">vs {tag} {delta}</span>')
            extra = "".join(notes)
            cells.append(f"<td>{_fmt(value)}{extra}</td>")
        body.append(f'<tr><th class="l">{label}</th>{"".join(cells)}</tr>')
    return (
        f'<table id="summary"><tr><th class="l">model</th>{head}</tr>{"".join(body)}</table>'
        '<p class="muted">Top-1 accuracy (%); HM = 2BN/(B+N). Deltas are percentage points.</p>'
    )


def _barriers(curves: Mapping[str, Any]) -> str:
    rows = []
    for space, space_label in SPACES:
        for segment, segment_label in SEGMENTS:
            seg = _dict(_dict(curves.get(space)).get(segment))
            if not seg:
                continue
            rows.append(
                f'<tr><td class="l">{_e(space_label)}</td><td class="l">{_e(segment_label)}</td>'
                f"<td>{_fmt(seg.get('barrier_base'), 4)}</td><td>{_fmt(seg.get('barrier_novel'), 4)}</td></tr>"
            )
    if not rows:
        return '<p class="muted">No interpolation curves recorded.</p>'
    return (
        '<table id="barriers"><tr><th class="l">space</th><th class="l">segment</th>'
        f"<th>barrier (base)</th><th>barrier (novel)</th></tr>{''.join(rows)}</table>"
        '<p class="muted">Barrier height = max over alpha of loss(alpha) minus the linear interpolation '
        "of the endpoint losses.</p>"
    )


def _baselines(baselines: Mapping[str, Any], metrics: Mapping[str, Any]) -> str:
    rows = []
    names = (
        ("feature_interpolation", "Feature interpolation (WiSE-FT style)"),
        ("ensemble", "Output ensemble of zero-shot and fine-tuned"),
    )
    rec = _dict(metrics.get("recovered"))
    for key, label in names:
        b = _dict(baselines.get(key))
        if not b:
            continue
        alpha = f" (alpha = {_fmt(b.get('alpha'))})" if _num(b.get("alpha")) is not None else ""
        cells = "".join(f"<td>{_fmt(b.get(s))}</td>" for s, _ in SPLITS)
        rows.append(f'<tr><th class="l">{_e(label)}{alpha}</th>{cells}</tr>')
    for key, b in baselines.items():  # baselines the schema may grow later
        if key not in dict(names) and isinstance(b, Mapping):
            cells = "".join(f"<td>{_fmt(b.get(s))}</td>" for s, _ in SPLITS)
            rows.append(f'<tr><th class="l">{_e(key)}</th>{cells}</tr>')
    if not rows:
        return '<p class="muted">No baselines recorded.</p>'
    if rec:
        cells = "".join(f"<td><strong>{_fmt(rec.get(s))}</strong></td>" for s, _ in SPLITS)
        rows.append(f'<tr><th class="l">Recovered (MergeTune)</th>{cells}</tr>')
    head = "".join(f"<th>{label}</th>" for _, label in SPLITS)
    return f'<table id="baselines"><tr><th class="l">method</th>{head}</tr>{"".join(rows)}</table>'


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


def _verdict(v: Mapping[str, Any]) -> str:
    if not v:
        return ""
    warnings = [w for w in _list(v.get("warnings")) if isinstance(w, Mapping)]
    text = str(v.get("text", "")).split(". Warning: ")[0]
    items = "".join(f'<li data-code="{_e(w.get("code"))}">{_e(w.get("message"))}</li>' for w in warnings)
    cls = "verdict ok" if not warnings else "verdict warn"
    body = f'<p id="verdict-text"><strong>{_e(text)}</strong></p>'
    if items:
        body += f'<ul id="verdict-warnings">{items}</ul>'
    return f'<div id="verdict" class="{cls}">{body}</div>'


def _training_table(training: list[Any]) -> str:
    rows = [r for r in training if isinstance(r, Mapping)]
    if not rows:
        return '<p class="muted">No training log recorded.</p>'
    cols: tuple[str, ...] = ("epoch", "loss", "ce", "zs", "lmc", "lr")
    if any(_num(r.get("val_acc")) is not None for r in rows):
        cols += ("val_acc",)
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td>{_e(r.get(c)) if c == 'epoch' else _fmt(r.get(c), 2 if c == 'val_acc' else 6)}</td>"
            for c in cols
        )
        + "</tr>"
        for r in rows
    )
    return f'<details><summary>Per-epoch values</summary><table id="training">{"<tr>" + head + "</tr>"}{body}</table></details>'


def _extra(extra: list[Any]) -> str:
    """One row per extra dataset (cross-dataset / shift): its facts, then the accuracy of each model as
    extra columns (models no row has a number for are left out; unknown keys follow as they are)."""
    rows = [r for r in extra if isinstance(r, Mapping)]
    if not rows:
        return ""
    facts = [(k, label) for k, label in EXTRA_FACTS if any(k in r for r in rows)]
    models = [(k, label) for k, label in EXTRA_MODELS if any(_num(r.get(k)) is not None for r in rows)]
    known = {k for k, _ in EXTRA_FACTS} | {k for k, _ in EXTRA_MODELS}
    others: list[str] = []
    for r in rows:
        others += [k for k in r if k not in known and k not in others]
    head = (
        "".join(f'<th class="l">{_e(label)}</th>' for _, label in facts)
        + "".join(f"<th>{_e(label)}</th>" for _, label in models)
        + "".join(f'<th class="l">{_e(k)}</th>' for k in others)
    )
    body = []
    for r in rows:
        cells = [f'<td class="l">{_scalar(r.get(k, ""))}</td>' for k, _ in facts]
        for k, _ in models:
            note = ""
            if k != "zero_shot":
                delta = _delta(r.get(k), r.get("zero_shot"))
                note = f'<span class="sub">vs ZS {delta}</span>' if delta else ""
            cells.append(f"<td>{_fmt(r.get(k))}{note}</td>")
        cells += [
            f'<td class="l">{_fmt(r.get(k)) if _num(r.get(k)) is not None else _scalar(r.get(k, ""))}</td>'
            for k in others
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (
        '<h2>Extra evaluations</h2><table id="extra"><tr>'
        + head
        + "</tr>"
        + "".join(body)
        + "</table>"
        + '<p class="muted">Top-1 accuracy (%) on each extra dataset\'s test split over its full class list '
        "(cross-dataset and distribution-shift evaluation); — where a model has no classifier for its "
        "classes. Deltas are percentage points vs zero-shot.</p>"
    )


def _head_models(head: Mapping[str, Any], splits: list[Mapping[str, Any]]) -> list[tuple[str, str]]:
    keys: list[str] = []
    for sp in splits:
        keys += [k for k in _dict(sp.get("accuracy")) if k not in keys]
    keys += [k for k in _dict(head.get("models")) if k not in keys]
    labels = dict(HEAD_MODEL_LABELS)
    order = [k for k, _ in HEAD_MODEL_LABELS if k in keys] + [k for k in keys if k not in labels]
    return [(k, labels.get(k, k)) for k in order]


def _head_table(head: Mapping[str, Any]) -> str:
    """Per split (validation, in-distribution, shifts): accuracy and loss of every head model."""
    splits = [sp for sp in _list(head.get("splits")) if isinstance(sp, Mapping)]
    if not splits:
        return '<p class="muted">No head evaluation recorded.</p>'
    models = _head_models(head, splits)
    cols = "".join(f"<th>{_e(label)}</th>" for _, label in models)
    body = []
    for sp in splits:
        acc, loss = _dict(sp.get("accuracy")), _dict(sp.get("loss"))
        best = max((v for v in (_num(acc.get(k)) for k, _ in models) if v is not None), default=None)
        cells = []
        for k, _ in models:
            a = _num(acc.get(k))
            text = _fmt(a)
            if a is not None and best is not None and a == best:
                text = f"<strong>{text}</strong>"
            delta = _delta(a, acc.get("zero_shot")) if k != "zero_shot" else ""
            note = f'<span class="sub">vs ZS {delta}</span>' if delta else ""
            lo = _num(loss.get(k))
            note += f'<span class="sub muted">loss {_fmt(lo, 4)}</span>' if lo is not None else ""
            cells.append(f"<td>{text}{note}</td>")
        body.append(
            f'<tr><th class="l">{_e(sp.get("name", "?"))}</th><td class="l">{_e(sp.get("kind", ""))}</td>'
            f"<td>{_e(sp.get('images', ''))}</td><td>{_e(sp.get('classes', ''))}</td>{''.join(cells)}</tr>"
        )
    return (
        '<table id="head-splits"><tr><th class="l">split</th><th class="l">kind</th><th>images</th>'
        f"<th>classes</th>{cols}</tr>{''.join(body)}</table>"
        '<p class="muted">Top-1 accuracy (%) (best per split in bold; deltas vs zero-shot in percentage '
        "points) and mean cross-entropy (ensembles: NLL of the averaged probabilities).</p>"
    )


def _wise_ft_table(sweep: Mapping[str, Any]) -> str:
    alphas = _series(sweep.get("alphas"))
    acc = _dict(sweep.get("accuracy"))
    names = [n for n in acc if len(_series(acc.get(n))) == len(alphas)]
    if not alphas or not names:
        return '<p class="muted">No WiSE-FT sweep recorded.</p>'
    best = _num(sweep.get("best_alpha"))
    head = "".join(f"<th>{_e(n)}</th>" for n in names)
    rows = []
    for i, a in enumerate(alphas):
        chosen = best is not None and not math.isnan(a) and abs(a - best) < 1e-9
        cells = "".join(f"<td>{_fmt(_series(acc.get(n))[i])}</td>" for n in names)
        label = f"{_fmt(a)}{' (chosen)' if chosen else ''}"
        attr = ' class="chosen"' if chosen else ""
        rows.append(f'<tr{attr}><th class="l">{label}</th>{cells}</tr>')
    return (
        '<details open><summary>Accuracy (%) per alpha</summary><table id="wiseft"><tr><th class="l">alpha</th>'
        f"{head}</tr>{''.join(rows)}</table></details>"
    )


def _head_section(head: Mapping[str, Any], wise_png: bytes | None) -> str:
    if not head:
        return ""
    sweep = _dict(head.get("wise_ft"))
    facts = (
        f"<p>{_e(head.get('classes', '?'))} classes × {_e(head.get('dim', '?'))} feature dimensions, "
        f"{'with' if head.get('bias') else 'without'} bias.</p>"
    )
    legend = "".join(f"<li><code>{_e(k)}</code>: {_e(v)}</li>" for k, v in _dict(head.get("models")).items())
    chosen = ""
    if _num(sweep.get("best_alpha")) is not None:
        chosen = (
            f'<p id="wiseft-alpha">Chosen alpha = <strong>{_fmt(sweep.get("best_alpha"))}</strong> '
            f"(best accuracy on {_e(sweep.get('selected_on', 'val'))}; ties: smaller loss, then smaller "
            "alpha). W(alpha) = (1 − alpha) W_zs + alpha W_ft: alpha 0 is zero-shot, 1 fine-tuned.</p>"
        )
    return "\n".join(
        [
            "<h2>Linear head</h2>",
            facts,
            _head_table(head),
            f'<details><summary>Models</summary><ul id="head-models">{legend}</ul></details>'
            if legend
            else "",
            "<h3>WiSE-FT weight interpolation</h3>",
            chosen,
            _image(_data_uri(wise_png) if wise_png else None, "WiSE-FT sweep", "wiseft-img"),
            _wise_ft_table(sweep),
        ]
    )


def _image(uri: str | None, alt: str, elem_id: str) -> str:
    if uri is None:
        return f'<p class="muted">No data for {_e(alt.lower())}.</p>'
    return f'<img id="{elem_id}" alt="{_e(alt)}" src="{uri}">'


# -------------------------------------------------------------------------------------------------- API


def _protocol_line(report: Mapping[str, Any]) -> str:
    """Which classes the checkpoint was trained on and how its prompts were assembled (prompt jobs)."""
    protocol = _dict(report.get("protocol"))
    position = _dict(_dict(report.get("config")).get("prompt")).get("class_token_position")
    if not protocol and not position:
        return ""
    bits = []
    if protocol.get("name"):
        bits.append(f"protocol {protocol['name']}")
    if position:
        bits.append(f"class token {position}")
    labels = _dict(protocol.get("labels"))
    if labels:
        bits.append(f"columns: base = {labels.get('base', 'base')}, novel = {labels.get('novel', 'novel')}")
    return f'<p class="muted" id="protocol">{_e(" · ".join(str(b) for b in bits))}</p>'


def build_html(
    report: Mapping[str, Any],
    curves_png: bytes | None,
    training_png: bytes | None,
    wise_png: bytes | None = None,
) -> str:
    """The report page for ``report`` with the given PNGs inlined (None: section says 'no data')."""
    metrics = _dict(report.get("metrics"))
    curves = _dict(report.get("curves"))
    manifest = _dict(report.get("manifest"))
    timings = _dict(report.get("timings"))
    config = _dict(report.get("config"))
    job_id = report.get("job_id")
    title = f"MergeTune report — {job_id}" if job_id else "MergeTune report"
    head = _dict(report.get("head"))
    downloads = "".join(
        f'<li><a href="{_e(name)}" download>{_e(name)}</a> <span class="muted">{_e(desc)}</span></li>'
        for name, desc in (HEAD_DOWNLOADS if head else DOWNLOADS)
    )
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        _verdict(verdict_of(report)),
        "<h2>Summary</h2>",
        _protocol_line(report),
        _summary(metrics),
        _head_section(head, wise_png),
        "<h2>Interpolation curves</h2>",
        '<p class="muted">Base and novel accuracy and their HM (dashed) along the three segments, one '
        "row per space (classifier / text-feature space, prompt-parameter space), on one shared y axis; "
        "the losses along the paths are in report.json (curves) and the barrier table below.</p>",
        _image(_data_uri(curves_png) if curves_png else None, "Interpolation curves", "curves-img"),
        "<h2>Barrier heights</h2>",
        _barriers(curves),
        "<h2>Baselines</h2>",
        _baselines(_dict(report.get("baselines")), metrics),
        "<h2>Training</h2>",
        _image(_data_uri(training_png) if training_png else None, "Training curves", "training-img"),
        _training_table(_list(report.get("training"))),
        _extra(_list(report.get("extra_evaluations"))),
        "<h2>Manifest</h2>",
        _provenance(manifest, report) if manifest else '<p class="muted">No manifest recorded.</p>',
    ]
    if manifest:
        parts += ["<details><summary>Full manifest</summary>", _kv_table(manifest, depth=4), "</details>"]
    if timings:
        parts += ["<h2>Timings (s)</h2>", _kv_table(timings)]
    if config:
        parts += [
            "<h2>Configuration</h2>",
            "<details><summary>Run configuration (JSON)</summary>",
            f"<pre>{_e(json.dumps(config, indent=2, sort_keys=True, default=str))}</pre></details>",
        ]
    parts += ["<h2>Downloads</h2>", f'<ul id="downloads">{downloads}</ul>', "</body></html>"]
    return "\n".join(parts)


def render_report(report: dict, out_dir: Path) -> list[Path]:
    """Write ``report.html`` and ``curves.png`` for ``report`` (the report.json dict) into ``out_dir``.

    Returns the paths written, report.html first. ``curves.png`` is always a valid PNG: when the
    report has no curves it is a placeholder panel saying so, so embedders never get a broken image.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    report = report if isinstance(report, Mapping) else {}
    curves_png = _plot_curves(_dict(report.get("curves")))
    training_png = _plot_training(_list(report.get("training")))
    wise_png = _plot_wise_ft(_dict(_dict(report.get("head")).get("wise_ft")))
    curves_path = out_dir / CURVES_PNG
    if curves_png is None:
        fig, axes = _figure(1, 1, 4.0, 2.0)
        axes[0][0].text(0.5, 0.5, "no interpolation curves", ha="center", va="center")
        axes[0][0].set_axis_off()
        curves_path.write_bytes(_png(fig))
    else:
        curves_path.write_bytes(curves_png)
    html_path = out_dir / REPORT_HTML
    html_path.write_text(build_html(report, curves_png, training_png, wise_png), encoding="utf-8")
    logger.info("report written to %s (job %s)", out_dir, report.get("job_id"))
    return [html_path, curves_path]
