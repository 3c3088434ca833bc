"""Human-readable report of a recovery job: a self-contained ``report.html`` and ``curves.png``.

``render_report(report, out_dir)`` takes the ``report.json`` dict (RecoveryResult.model_dump(mode="json")
plus ``manifest`` and ``job_id``) and writes both files. Every optional part may be missing: a section
without data says so instead of failing. The HTML embeds its images as base64 PNG data URIs and its CSS
inline; the only links are relative ones to the job's artifact names, so the file opens offline and,
served from ``.../artifacts/report.html``, its download links resolve to the sibling artifacts.

matplotlib is imported inside the functions that plot (core import hygiene: ``import core.report``
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
    ("report.json", "metrics, curves, barrier heights, manifest"),
    ("manifest.json", "seed, resolved config, hashes, package versions"),
    ("curves.png", "interpolation curves"),
    ("report.html", "this report"),
)

MODELS = (("zero_shot", "Zero-shot"), ("fine_tuned", "Fine-tuned"), ("recovered", "Recovered"))
SPLITS = (("base", "Base"), ("novel", "Novel"), ("hm", "HM"))
SPACES = (("classifier", "classifier (text-feature) space"), ("prompt", "prompt-parameter space"))
SEGMENTS = (
    ("zs_ft", "zero-shot → fine-tuned"),
    ("zs_rec", "zero-shot → recovered"),
    ("ft_rec", "fine-tuned → recovered"),
)
TERMS = (("ce", "cross-entropy"), ("zs", "zero-shot surrogate"), ("lmc", "path (LMC) term"))

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#1d232b;padding:0 1rem;line-height:1.4}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{font-size:1.2rem;margin-top:2rem;border-bottom:1px solid #d8dde3;
padding-bottom:.2rem}h3{font-size:1rem}
table{border-collapse:collapse;margin:.5rem 0}th,td{border:1px solid #d8dde3;padding:.25rem .6rem;
text-align:right;vertical-align:top}th{background:#f1f4f7}td.l,th.l{text-align:left}
.pos{color:#11733b}.neg{color:#b3261e}.muted{color:#6b7480}.sub{font-size:.8em;display:block}
img{max-width:100%;border:1px solid #e3e7eb}code,pre{font-family:ui-monospace,Menlo,Consolas,monospace;
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


def _plot_curves(curves: Mapping[str, Any]) -> bytes | None:
    """Accuracy (base/novel) and loss vs alpha: one accuracy row and one loss row per space."""
    spaces = [(key, label) for key, label in SPACES if _dict(curves.get(key))]
    if not spaces:
        return None
    fig, axes = _figure(2 * len(spaces), len(SEGMENTS), 13.0, 3.0 * 2 * len(spaces), hspace=0.45)
    for s, (space, space_label) in enumerate(spaces):
        for c, (segment, segment_label) in enumerate(SEGMENTS):
            seg = _dict(_dict(curves.get(space)).get(segment))
            acc_ax, loss_ax = axes[2 * s][c], axes[2 * s + 1][c]
            alphas = _series(seg.get("alphas"))
            acc_ax.set_title(f"{space_label}\n{segment_label}", fontsize=9)
            for ax, keys, ylabel in (
                (acc_ax, (("base_acc", "base"), ("novel_acc", "novel")), "accuracy (%)"),
                (loss_ax, (("base_loss", "base"), ("novel_loss", "novel")), "loss"),
            ):
                drawn = False
                for key, name in keys:
                    ys = _series(seg.get(key))
                    if alphas and len(ys) == len(alphas) and _has_points(ys):
                        ax.plot(alphas, ys, marker="o", markersize=3, label=name)
                        drawn = True
                if drawn:
                    ax.legend(fontsize=8)
                else:
                    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
                ax.set_ylabel(ylabel, fontsize=8)
                ax.set_xlabel("alpha", fontsize=8)
                ax.tick_params(labelsize=7)
                ax.grid(alpha=0.3)
    return _png(fig)


def _plot_training(training: list[Mapping[str, Any]]) -> bytes | None:
    """Total loss per epoch, then the three loss terms each in its own panel."""
    rows = [r for r in training if isinstance(r, Mapping)]
    if not rows:
        return None
    xs = _series([r.get("epoch") for r in rows])
    if not _has_points(xs):
        xs = [float(i) for i in range(len(rows))]
    fig, axes = _figure(1, 1 + len(TERMS), 13.0, 3.0)
    for ax, (key, label) in zip(axes[0], (("loss", "total loss"), *TERMS), strict=True):
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


def _training_table(training: list[Any]) -> str:
    rows = [r for r in training if isinstance(r, Mapping)]
    if not rows:
        return '<p class="muted">No training log recorded.</p>'
    cols = ("epoch", "loss", "ce", "zs", "lmc", "lr")
    head = "".join(f"<th>{c}</th>" for c in cols)
    body = "".join(
        "<tr>"
        + "".join(f"<td>{_e(r.get(c)) if c == 'epoch' else _fmt(r.get(c), 6)}</td>" for c in cols)
        + "</tr>"
        for r in rows
    )
    return f'<details><summary>Per-epoch values</summary><table id="training">{"<tr>" + head + "</tr>"}{body}</table></details>'


def _extra(extra: list[Any]) -> str:
    rows = [r for r in extra if isinstance(r, Mapping)]
    if not rows:
        return ""
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    head = "".join(f'<th class="l">{_e(c)}</th>' for c in cols)
    body = "".join(
        "<tr>" + "".join(f'<td class="l">{_scalar(r.get(c, ""))}</td>' for c in cols) + "</tr>" for r in rows
    )
    return f'<h2>Extra evaluations</h2><table id="extra">{"<tr>" + head + "</tr>"}{body}</table>'


def _image(uri: str | None, alt: str, elem_id: str) -> str:
    if uri is None:
        return f'<p class="muted">No data for {_e(alt.lower())}.</p>'
    return f'<img id="{elem_id}" alt="{_e(alt)}" src="{uri}">'


# -------------------------------------------------------------------------------------------------- API


def build_html(report: Mapping[str, Any], curves_png: bytes | None, training_png: bytes | None) -> str:
    """The report page for ``report`` with the given PNGs inlined (None: section says 'no data')."""
    metrics = _dict(report.get("metrics"))
    curves = _dict(report.get("curves"))
    manifest = _dict(report.get("manifest"))
    timings = _dict(report.get("timings"))
    config = _dict(report.get("config"))
    job_id = report.get("job_id")
    title = f"MergeTune report — {job_id}" if job_id else "MergeTune report"
    downloads = "".join(
        f'<li><a href="{_e(name)}" download>{_e(name)}</a> <span class="muted">{_e(desc)}</span></li>'
        for name, desc in DOWNLOADS
    )
    parts = [
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<h2>Summary</h2>",
        _summary(metrics),
        "<h2>Interpolation curves</h2>",
        '<p class="muted">Base and novel accuracy and loss along the three segments, in classifier '
        "(text-feature) space and in prompt-parameter space.</p>",
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
    curves_path = out_dir / CURVES_PNG
    if curves_png is None:
        fig, axes = _figure(1, 1, 4.0, 2.0)
        axes[0][0].text(0.5, 0.5, "no interpolation curves", ha="center", va="center")
        axes[0][0].set_axis_off()
        curves_path.write_bytes(_png(fig))
    else:
        curves_path.write_bytes(curves_png)
    html_path = out_dir / REPORT_HTML
    html_path.write_text(build_html(report, curves_png, training_png), encoding="utf-8")
    logger.info("report written to %s (job %s)", out_dir, report.get("job_id"))
    return [html_path, curves_path]
