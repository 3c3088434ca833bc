"""What the commands print: one JSON document (or one path a line) on stdout, every list in one shape
(:func:`print_list`), and for people, on
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


def print_list(items: Iterable[Any]) -> None:
    """Every ``list`` command's one shape, the REST list page's: ``{"data": [...], "has_more": false,
    "next_cursor": null}`` (the commands follow the cursors, so ``data`` holds every item)."""
    print_json({"data": list(items), "has_more": False, "next_cursor": None})


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
