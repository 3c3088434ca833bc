"""What the commands print: one JSON document (or one path a line) on stdout, and for people, on
stderr, a rich progress bar while a job or sweep runs and a sweep's base-to-novel table.

stdout stays machine-readable (``mergetune job create ... | jq -r .id``); everything else goes to stderr.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterable
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def print_lines(items: Iterable[Any]) -> None:
    for item in items:
        sys.stdout.write(f"{item}\n")
    sys.stdout.flush()


def say(line: str) -> None:
    """One line for a person, on stderr."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


# -- progress -------------------------------------------------------------------------------------
def job_progress(job: dict[str, Any]) -> tuple[float, str]:
    """(fraction done, status line) of a job object: epoch, step, loss and queue position."""
    p = job.get("progress") or {}
    frac = 0.0
    try:
        epochs, steps = int(p["epochs"]), max(1, int(p.get("steps") or 1))
        frac = min(1.0, ((int(p["epoch"]) - 1) + int(p.get("step") or 0) / steps) / max(1, epochs))
    except (KeyError, TypeError, ValueError):
        pass
    if job["status"] == "succeeded":
        frac = 1.0
    detail = ""
    if p.get("epoch") is not None:
        detail = f" epoch {p.get('epoch')}/{p.get('epochs')}"
        if p.get("loss") is not None:
            detail += f" loss {float(p['loss']):.4f}"
    if job.get("queue_position"):
        detail += f" (queue position {job['queue_position']})"
    return frac, f"{job['status']}{detail}"


def sweep_progress(sweep: dict[str, Any]) -> tuple[float, str]:
    """(fraction done, status line) of a sweep object: its jobs by state."""
    p = sweep["progress"]
    detail = f"{p['succeeded']}/{p['jobs']} succeeded, {p['running']} running, {p['queued']} queued"
    if p["failed"] or p["cancelled"]:
        detail += f", {p['failed']} failed, {p['cancelled']} cancelled"
    return float(p["fraction"]), f"{sweep['status']} ({detail})"


class ProgressBar:
    """``<id> ━━━━━━━━━━ 42.0% <status>`` on stderr, redrawn on every update (pass it as
    ``on_update``); on a terminal it moves, elsewhere (a log file) its last state is written once."""

    def __init__(self, describe: Callable[[dict[str, Any]], tuple[float, str]]) -> None:
        self.describe = describe
        self.bar: Progress | None = None
        self.task: Any = None

    def __call__(self, obj: dict[str, Any]) -> None:
        frac, status = self.describe(obj)
        if self.bar is None:
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=30),
                TextColumn("{task.percentage:5.1f}%"),
                TextColumn("{task.fields[status]}"),
                console=Console(stderr=True),
            )
            self.bar.start()
            self.task = self.bar.add_task(obj["id"], total=1.0, status=status)
        self.bar.update(self.task, completed=frac, status=status)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()
            self.bar = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the sweep table (the server's core.evaluation.sweep_table.to_text, which the client cannot import)
MODELS = ("zero_shot", "fine_tuned", "feature_interpolation", "ensemble", "recovered")
MODEL_LABELS = {
    "zero_shot": "Zero-shot",
    "fine_tuned": "Fine-tuned",
    "feature_interpolation": "Feature interpolation",
    "ensemble": "ZS+FT ensemble",
    "recovered": "MergeTune (recovered)",
}


def sweep_table(table: dict[str, Any]) -> str:
    """The report's ``table`` in fixed width for terminals: per dataset (then Average) each model's
    base / novel / HM (seed means, ± std) and the recovered row's deltas; then the grid, if any."""
    out = [f"{'dataset':<14} {'method':<22} {'base':>14} {'novel':>14} {'HM':>7}"]
    blocks = [*((d["dataset"], d) for d in table["datasets"]), ("Average", table["average"])]
    for name, block in blocks:
        out.append("-" * 75)
        if not block["rows"]:
            out.append(f"{name[:14]:<14} (no finished cell yet)")
            continue
        label = name[:14]
        for model in (m for m in table.get("models", MODELS) if m in block["rows"]):
            r = block["rows"][model]
            cells = []
            for key in ("base", "novel"):
                std = r.get(f"{key}_std")
                cells.append(f"{r[key]:6.2f}" + (f" ±{std:5.2f}" if std is not None else " " * 7))
            title = MODEL_LABELS.get(model, model)
            out.append(f"{label:<14} {title:<22} {cells[0]:>14} {cells[1]:>14} {r['hm']:7.2f}")
            label = ""
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
        final = "" if sel["final"] else " (provisional)"
        out.append(f"selected by {sel['rule']}: point {sel['point']}{final}")
    return "\n".join(out) + "\n"
