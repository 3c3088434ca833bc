"""The base-to-novel table of a sweep, the way the prompt-learning papers build it (no torch).

Per dataset, each model's base and novel accuracies are averaged over the seeds (standard deviation
with ddof=0, as CoOp's ``parse_test_res.py`` prints it) and the HM is computed from those two means,
not averaged over seeds. The "Average" row averages the per-dataset base and novel means over the
datasets and again takes the HM of the two averages (CoCoOp's Table 1: base 80.47, novel 71.69 ->
HM 75.83). Deltas are the recovered row minus the fine-tuned and the zero-shot rows, in points.

For a grid (e.g. W x W_LMC), every grid point has its own table; the selected point is the one with
the highest mean validation accuracy (``val_acc``: the recovered prompt's accuracy on the base
classes' validation split after its last epoch) over the cells that have one; ties go to the earlier
point. Test accuracies never take part in the selection.

:func:`build_table` returns plain data (the JSON report); :func:`to_csv` and :func:`to_latex` render it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from mergetune.core.evaluation.result import harmonic_mean

#: Row order of the table: the two endpoints, the two naive baselines, then MergeTune's result.
MODELS = ("zero_shot", "fine_tuned", "feature_interpolation", "ensemble", "recovered")
MODEL_LABELS = {
    "zero_shot": "Zero-shot",
    "fine_tuned": "Fine-tuned",
    "feature_interpolation": "Feature interpolation",
    "ensemble": "ZS+FT ensemble",
    "recovered": "MergeTune (recovered)",
}
SELECTION_RULES = ("val_acc",)


@dataclass(frozen=True)
class CellResult:
    """One finished cell of one grid point: accuracies (%) as (base, novel) per model in MODELS."""

    dataset: str
    seed: int
    point: int = 0
    accuracies: dict[str, tuple[float, float]] = field(default_factory=dict)
    val_acc: float | None = None


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / n)


def _row(pairs: Sequence[tuple[float, float]]) -> dict[str, float]:
    base, base_std = _mean_std([b for b, _ in pairs])
    novel, novel_std = _mean_std([n for _, n in pairs])
    return {
        "base": base,
        "base_std": base_std,
        "novel": novel,
        "novel_std": novel_std,
        "hm": harmonic_mean(base, novel),
    }


def _delta(rows: dict[str, dict[str, float]], ref: str) -> dict[str, float] | None:
    if "recovered" not in rows or ref not in rows:
        return None
    return {k: rows["recovered"][k] - rows[ref][k] for k in ("base", "novel", "hm")}


def _table(cells: Sequence[CellResult], datasets: Sequence[str]) -> dict[str, Any]:
    """Per-dataset rows (seed means, std, HM of the means) and their average over datasets."""
    out: list[dict[str, Any]] = []
    for name in datasets:
        mine = sorted((c for c in cells if c.dataset == name), key=lambda c: c.seed)
        rows: dict[str, dict[str, float]] = {}
        for model in MODELS:
            pairs = [c.accuracies[model] for c in mine if model in c.accuracies]
            if pairs:
                rows[model] = _row(pairs)
        out.append(
            {
                "dataset": name,
                "seeds": [c.seed for c in mine],
                "rows": rows,
                "delta_vs_fine_tuned": _delta(rows, "fine_tuned"),
                "delta_vs_zero_shot": _delta(rows, "zero_shot"),
            }
        )
    avg_rows: dict[str, dict[str, float]] = {}
    for model in MODELS:
        per_ds = [d["rows"][model] for d in out if model in d["rows"]]
        if not per_ds:
            continue
        base = sum(r["base"] for r in per_ds) / len(per_ds)
        novel = sum(r["novel"] for r in per_ds) / len(per_ds)
        avg_rows[model] = {"base": base, "novel": novel, "hm": harmonic_mean(base, novel)}
    average = {
        "datasets": sum(1 for d in out if d["rows"]),
        "rows": avg_rows,
        "delta_vs_fine_tuned": _delta(avg_rows, "fine_tuned"),
        "delta_vs_zero_shot": _delta(avg_rows, "zero_shot"),
    }
    return {"datasets": out, "average": average}


def select_point(cells: Sequence[CellResult], n_points: int, rule: str = "val_acc") -> int | None:
    """The grid point with the highest mean validation accuracy over its cells (ties: the earlier one);
    None when no cell reported one yet."""
    if rule not in SELECTION_RULES:
        raise ValueError(f"unknown selection rule {rule!r}")
    best: tuple[float, int] | None = None
    for p in range(n_points):
        vals = [c.val_acc for c in cells if c.point == p and c.val_acc is not None]
        if not vals:
            continue
        score = sum(vals) / len(vals)
        if best is None or score > best[0]:
            best = (score, p)
    return None if best is None else best[1]


def build_table(
    cells: Sequence[CellResult],
    *,
    datasets: Sequence[str],
    points: Sequence[dict[str, Any]] = ({},),
    cells_per_point: int | None = None,
    rule: str = "val_acc",
) -> dict[str, Any]:
    """The sweep report's data. ``datasets`` fixes the row order (every dataset of the sweep, finished
    or not); ``points`` are the grid's hyperparameter overrides (one empty point without a grid);
    ``cells_per_point`` is how many cells each point has in all (for ``complete``)."""
    grid: list[dict[str, Any]] = []
    for p, params in enumerate(points):
        mine = [c for c in cells if c.point == p]
        vals = [c.val_acc for c in mine if c.val_acc is not None]
        grid.append(
            {
                "point": p,
                "params": dict(params),
                "done": len(mine),
                "val_acc": sum(vals) / len(vals) if vals else None,
                **_table(mine, datasets),
            }
        )
    chosen = select_point(cells, len(points), rule) if len(points) > 1 else (0 if points else None)
    done = len(cells)
    total = cells_per_point * len(points) if cells_per_point is not None else None
    table = grid[chosen] if chosen is not None else _table([], datasets) | {"point": None, "params": {}}
    return {
        "models": list(MODELS),
        "selection": {
            "rule": rule,
            "point": chosen,
            "params": grid[chosen]["params"] if chosen is not None else None,
            # With cells still running the choice can change.
            "final": total is not None and done >= total,
        },
        "datasets": table["datasets"],
        "average": table["average"],
        "grid": grid if len(points) > 1 else [],
    }


def _f(value: float | None, digits: int = 2) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def to_csv(table: dict[str, Any]) -> str:
    """One line per (dataset or Average, model) of the selected point, then one per grid point's average
    recovered row when there is a grid."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["point", "dataset", "model", "base", "base_std", "novel", "novel_std", "hm", "seeds"])
    point = table["selection"]["point"]
    blocks = [*((d["dataset"], d) for d in table["datasets"]), ("Average", table["average"])]
    for name, block in blocks:
        seeds = ";".join(str(s) for s in block.get("seeds", []))
        for model in MODELS:
            r = block["rows"].get(model)
            if r is not None:
                w.writerow(
                    [
                        point,
                        name,
                        model,
                        _f(r["base"]),
                        _f(r.get("base_std")),
                        _f(r["novel"]),
                        _f(r.get("novel_std")),
                        _f(r["hm"]),
                        seeds,
                    ]  # fmt: skip
                )
        for key in ("delta_vs_fine_tuned", "delta_vs_zero_shot"):
            d = block.get(key)
            if d is not None:
                w.writerow([point, name, key, _f(d["base"]), "", _f(d["novel"]), "", _f(d["hm"]), seeds])
    for g in table["grid"]:
        r = g["average"]["rows"].get("recovered")
        if r is not None:
            label = " ".join(f"{k}={v}" for k, v in g["params"].items())
            w.writerow([g["point"], f"Average [{label}]", "recovered", _f(r["base"]), "", _f(r["novel"]), "",
                        _f(r["hm"]), ""])  # fmt: skip
    return buf.getvalue()


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}  # fmt: skip


def tex_escape(text: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in text)


def _tex_cell(mean: float, std: float | None) -> str:
    return f"{mean:.2f}" if std is None else f"{mean:.2f}$_{{\\pm {std:.2f}}}$"


def to_latex(table: dict[str, Any], caption: str = "Base-to-novel accuracy (%)") -> str:
    """A ``booktabs`` table: per dataset (then Average) a block of the models, with the recovered row's
    deltas against the fine-tuned and the zero-shot rows."""
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{tex_escape(caption)}}}",
        r"\begin{tabular}{llccc}",
        r"\toprule",
        r"Dataset & Method & Base & Novel & HM \\",
        r"\midrule",
    ]
    blocks = [*((d["dataset"], d) for d in table["datasets"]), ("Average", table["average"])]
    for i, (name, block) in enumerate(blocks):
        first = True
        for model in MODELS:
            r = block["rows"].get(model)
            if r is None:
                continue
            label = tex_escape(name) if first else ""
            first = False
            row = [label, tex_escape(MODEL_LABELS[model]), _tex_cell(r["base"], r.get("base_std")),
                   _tex_cell(r["novel"], r.get("novel_std")), f"{r['hm']:.2f}"]  # fmt: skip
            if model == "recovered":
                row = [row[0], *(rf"\textbf{{{c}}}" for c in row[1:])]
            lines.append(" & ".join(row) + r" \\")
        for key, what in (("delta_vs_fine_tuned", "fine-tuned"), ("delta_vs_zero_shot", "zero-shot")):
            d = block.get(key)
            if d is not None:
                lines.append(
                    f" & $\\Delta$ vs {what} & {d['base']:+.2f} & {d['novel']:+.2f} & {d['hm']:+.2f} \\\\"
                )
        if first:  # no finished cell yet
            lines.append(f"{tex_escape(name)} & -- & -- & -- & -- \\\\")
        if i < len(blocks) - 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


def to_text(table: dict[str, Any]) -> str:
    """A fixed-width rendering for terminals: per dataset (then Average) each model's base / novel / HM
    (seed means, ± std) and the recovered row's deltas."""
    out = [f"{'dataset':<14} {'method':<22} {'base':>14} {'novel':>14} {'HM':>7}"]
    blocks = [*((d["dataset"], d) for d in table["datasets"]), ("Average", table["average"])]
    for name, block in blocks:
        out.append("-" * 75)
        if not block["rows"]:
            out.append(f"{name[:14]:<14} (no finished cell yet)")
            continue
        first = True
        for model in MODELS:
            r = block["rows"].get(model)
            if r is None:
                continue
            cells = []
            for key in ("base", "novel"):
                std = r.get(f"{key}_std")
                cells.append(f"{r[key]:6.2f}" + (f" ±{std:5.2f}" if std is not None else " " * 7))
            label = name[:14] if first else ""
            first = False
            out.append(f"{label:<14} {MODEL_LABELS[model]:<22} {cells[0]:>14} {cells[1]:>14} {r['hm']:7.2f}")
        for key, what in (
            ("delta_vs_fine_tuned", "Δ vs fine-tuned"),
            ("delta_vs_zero_shot", "Δ vs zero-shot"),
        ):
            d = block.get(key)
            if d is not None:
                out.append(f"{'':<14} {what:<22} {d['base']:>+14.2f} {d['novel']:>+14.2f} {d['hm']:>+7.2f}")
    sel = table["selection"]
    if table["grid"]:
        out.append("-" * 75)
        for g in table["grid"]:
            r = g["average"]["rows"].get("recovered")
            mark = "*" if g["point"] == sel["point"] else " "
            params = " ".join(f"{k}={v}" for k, v in g["params"].items())
            val = f"{g['val_acc']:.2f}" if g["val_acc"] is not None else "-"
            hm = f"{r['hm']:.2f}" if r else "-"
            out.append(f"{mark} point {g['point']:<3} {params:<40} val_acc {val:>6}  HM {hm:>6}")
        out.append(
            f"selected by {sel['rule']}: point {sel['point']}" + ("" if sel["final"] else " (provisional)")
        )
    return "\n".join(out) + "\n"
