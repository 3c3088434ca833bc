"""The report's figures: ``curves.png`` (accuracy along the interpolation paths), the training curves and the
linear head's WiSE-FT sweep, each as PNG bytes (None where the report has no data for it).

matplotlib is imported inside the functions that plot (import hygiene: importing this module, or
:mod:`mergetune.core.evaluation.report`, stays cheap and the API process never pays for it). Plots use
the object-oriented ``Figure`` API with the Agg canvas, so no global pyplot state or backend switch is
touched. The value readers here (``_num``, ``_dict``, ``_list``, ``_series``) take whatever a
``report.json`` holds and never fail on a missing or odd value; the report's tables use them too.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

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


# ------------------------------------------------------------------------------------- reading values


def _num(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, non-numeric, NaN or infinite)."""
    if isinstance(value, bool) or value is None:
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


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


def hm_series(base: list[float], novel: list[float]) -> list[float]:
    """Harmonic mean of base and novel accuracy point by point (NaN where either is missing)."""
    out = []
    for b, n in zip(base, novel, strict=False):
        if math.isnan(b) or math.isnan(n):
            out.append(float("nan"))
        else:
            out.append(2 * b * n / (b + n) if b + n > 0 else 0.0)
    return out


#: What alpha 0 and alpha 1 of each segment are: the x axis names them under the ticks.
SEGMENT_ENDS = {
    "zs_ft": ("zero-shot", "fine-tuned"),
    "zs_rec": ("zero-shot", "recovered"),
    "ft_rec": ("fine-tuned", "recovered"),
}
LineStyle = Literal["-", "--", ":", "-."]
SERIES: tuple[tuple[str, LineStyle, float], ...] = (
    ("base", "-", 1.6),
    ("novel", "-", 1.6),
    ("HM", "--", 2.4),
)
SERIES_COLOURS = {"base": "#1f77b4", "novel": "#ff7f0e", "HM": "#2ca02c"}
REFERENCES: tuple[tuple[str, str, str, LineStyle], ...] = (
    ("zero_shot", "zero-shot HM", "#6b7480", ":"),
    ("fine_tuned", "fine-tuned HM", "#b3261e", "-."),
)


def reference_hms(curves: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> dict[str, float]:
    """The zero-shot and fine-tuned HM the curves are read against: the report's metrics, else the two
    ends of the first zero-shot -> fine-tuned segment that has them."""
    out: dict[str, float] = {}
    for key, _, _, _ in REFERENCES:
        hm = _num(_dict(_dict(metrics).get(key)).get("hm"))
        if hm is not None:
            out[key] = hm
    for space, _ in SPACES:
        seg = _dict(_dict(curves.get(space)).get("zs_ft"))
        hms = hm_series(_series(seg.get("base_acc")), _series(seg.get("novel_acc")))
        if hms and not math.isnan(hms[0]) and not math.isnan(hms[-1]):
            out.setdefault("zero_shot", hms[0])
            out.setdefault("fine_tuned", hms[-1])
    return out


def curves_figure(curves: Mapping[str, Any], metrics: Mapping[str, Any] | None = None):
    """The matplotlib ``Figure`` of ``curves.png`` (None without curves): one titled row per space, one
    panel per segment with base, novel and their HM; the ends of each panel named on its x axis (which
    end is the recovered model) and their HM written beside them; the zero-shot and fine-tuned HM as
    horizontal reference lines; one legend for the whole figure; one y range shared by every panel."""
    spaces = [(key, label) for key, label in SPACES if _dict(curves.get(key))]
    if not spaces:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    refs = reference_hms(curves, metrics)
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
        0.5, 0.72, "Accuracy along the interpolation paths (alpha 0 → 1)", ha="center", va="center",
        fontsize=15, fontweight="bold",
    )  # fmt: skip
    subfigs = rows[1:]
    all_axes = []
    lows, highs = list(refs.values()), list(refs.values())
    drawn_any = False
    for sub, (space, space_label) in zip(subfigs, spaces, strict=True):
        sub.suptitle(space_label, fontsize=12, x=0.01, ha="left")
        axes = sub.subplots(1, len(SEGMENTS), squeeze=False)[0]
        sub.subplots_adjust(left=0.06, right=0.97, bottom=0.24, top=0.78, wspace=0.16)
        for ax, (segment, segment_label) in zip(axes, SEGMENTS, strict=True):
            seg = _dict(_dict(curves.get(space)).get(segment))
            alphas = _series(seg.get("alphas"))
            base, novel = _series(seg.get("base_acc")), _series(seg.get("novel_acc"))
            values = {"base": base, "novel": novel, "HM": hm_series(base, novel)}
            drawn = False
            for name, style, lw in SERIES:
                ys = values[name]
                if alphas and len(ys) == len(alphas) and _has_points(ys):
                    ax.plot(
                        alphas, ys, style, marker="o", markersize=3.5, linewidth=lw, label=name,
                        color=SERIES_COLOURS[name],
                    )  # fmt: skip
                    finite = [v for v in ys if not math.isnan(v)]
                    lows.append(min(finite))
                    highs.append(max(finite))
                    drawn = True
            if drawn:
                drawn_any = True
                _mark_ends(ax, alphas, values["HM"])
                for key, label, colour, style in REFERENCES:
                    if key in refs:
                        ax.axhline(refs[key], color=colour, linestyle=style, linewidth=1.2, label=label)
            else:
                ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, fontsize=11)
            left, right = SEGMENT_ENDS[segment]
            ax.set_xticks([0.0, 0.25, 0.5, 0.75, 1.0])
            ax.set_xticklabels([f"0\n{left}", "0.25", "0.5", "0.75", f"1\n{right}"])
            ax.set_xlim(-0.08, 1.08)
            ax.set_title(segment_label, fontsize=11)
            ax.set_xlabel("alpha", fontsize=10)
            ax.tick_params(labelsize=10)
            ax.grid(alpha=0.3)
            all_axes.append(ax)
        axes[0].set_ylabel("top-1 accuracy (%)", fontsize=10)
    if drawn_any:  # one legend for the figure: every panel draws the same series in the same colours
        handles = [
            Line2D(
                [], [], color=SERIES_COLOURS[name], linestyle=style, linewidth=lw, marker="o", markersize=3.5
            )
            for name, style, lw in SERIES
        ]
        labels = [name for name, _, _ in SERIES]
        for key, label, colour, style in REFERENCES:
            if key in refs:
                handles.append(Line2D([], [], color=colour, linestyle=style, linewidth=1.2))
                labels.append(f"{label} {refs[key]:.1f}")
        rows[0].legend(
            handles, labels, loc="lower center", ncol=len(labels), fontsize=10, frameon=False,
            bbox_to_anchor=(0.5, 0.0),
        )  # fmt: skip
    if lows:  # one y range for every panel: heights compare across segments and spaces
        lo, hi = min(lows), max(highs)
        pad = max(1.5, (hi - lo) * 0.1)
        for ax in all_axes:
            ax.set_ylim(lo - pad, hi + pad)
    return fig


def _mark_ends(ax: Any, alphas: list[float], hm: list[float]) -> None:
    """The HM at both ends of a panel: a larger marker and its value written beside it."""
    if len(hm) != len(alphas):
        return
    ends = [(x, y) for x, y in zip(alphas, hm, strict=True) if not (math.isnan(x) or math.isnan(y))]
    if not ends:
        return
    for (x, y), ha, dx in ((ends[0], "left", 6), (ends[-1], "right", -6)):
        ax.plot([x], [y], "o", markersize=7, color=SERIES_COLOURS["HM"], zorder=3)
        ax.annotate(
            f"{y:.1f}", (x, y), xytext=(dx, 7), textcoords="offset points", ha=ha, fontsize=10,
            fontweight="bold", color=SERIES_COLOURS["HM"], zorder=4,
            bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85},
        )  # fmt: skip


def plot_curves(curves: Mapping[str, Any], metrics: Mapping[str, Any] | None = None) -> bytes | None:
    """``curves.png``: :func:`curves_figure` as PNG bytes (None without curves)."""
    fig = curves_figure(curves, metrics)
    return None if fig is None else _png(fig)


def plot_training(training: list[Mapping[str, Any]]) -> bytes | None:
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


def plot_wise_ft(sweep: Mapping[str, Any]) -> bytes | None:
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


def placeholder_png(text: str) -> bytes:
    """A small panel saying ``text`` (curves.png when a report has no curves: never a broken image)."""
    fig, axes = _figure(1, 1, 4.0, 2.0)
    axes[0][0].text(0.5, 0.5, text, ha="center", va="center")
    axes[0][0].set_axis_off()
    return _png(fig)
