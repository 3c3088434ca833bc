"""``mergetune sweep create|wait|download|get|cancel|list``: many jobs at once, from a CoOp output
tree (one job per run in it) or from cells x a hyperparameter grid, and their base-to-novel table."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from mergetune.cli import options as o
from mergetune.cli.output import ProgressBar, print_json, print_lines, print_list, say, sweep_progress

app = typer.Typer(
    name="sweep", help="sweeps: many jobs from a CoOp output tree or a grid", no_args_is_help=True
)

SweepId = Annotated[str, typer.Argument(metavar="SWEEP", help="sweep id (swp_...)")]


class Format(StrEnum):
    """A report format (a list of Literals is not a Typer option type)."""

    json = "json"
    csv = "csv"
    tex = "tex"
    txt = "txt"
    html = "html"


def grid(items: list[str] | None) -> dict[str, list[Any]]:
    """``--grid w_zs=1,10`` -> {"w_zs": [1, 10]}."""
    axes: dict[str, list[Any]] = {}
    for key, raw in o.pairs(items, typed=False).items():
        axes[key] = [o.parse_value(v.strip()) for v in str(raw).split(",") if v.strip()]
    return axes


def cell(text: str) -> dict[str, Any]:
    """``CHECKPOINT_ID:DATASET_ID[:SEED]`` -> a SweepCell."""
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise o.UserError(f"--cell takes CHECKPOINT_ID:DATASET_ID[:SEED], got {text!r}")
    found: dict[str, Any] = {"checkpoint_id": parts[0], "dataset_id": parts[1]}
    if len(parts) == 3:
        if not parts[2].isdigit():
            raise o.UserError(f"--cell: the seed must be a whole number, got {parts[2]!r}")
        found["seed"] = int(parts[2])
    return found


@app.command("create")
def create(
    tree: Annotated[Path | None, typer.Option(help="zip/tar of a CoOp output directory")] = None,
    cells: Annotated[
        list[str] | None, typer.Option("--cell", metavar="CKPT:DATASET[:SEED]", help="a cell (repeatable)")
    ] = None,
    dataset_map: Annotated[
        list[str] | None, typer.Option(metavar="TREE_NAME=DATASET_ID", help="default: datasets by name")
    ] = None,
    name: Annotated[str | None, typer.Option(help="display name")] = None,
    model: o.Model = None,
    pretrained: o.Pretrained = None,
    hp: Annotated[
        list[str] | None,
        typer.Option("--hp", metavar="KEY=VALUE", help="a shared hyperparameter (repeatable)"),
    ] = None,
    hyperparameters: o.Hyperparameters = None,
    grid_axes: Annotated[
        list[str] | None, typer.Option("--grid", metavar="KEY=V1,V2", help="a grid axis (repeatable)")
    ] = None,
    protocol: Annotated[
        o.Protocol | None, typer.Option(help="classes the checkpoints were trained on")
    ] = None,
    class_token_position: Annotated[
        o.TokenPosition | None, typer.Option(help="CoOp's CLASS_TOKEN_POSITION")
    ] = None,
    metadata: o.Metadata = None,
    idempotency_key: Annotated[str | None, typer.Option(metavar="KEY", help="default: a fresh key")] = None,
    url: o.Url = None,
    token: o.Token = None,
    timeout: o.Timeout = 300.0,
) -> None:
    """Create a sweep from a tree archive or from cells; prints it as JSON."""
    if bool(tree) == bool(cells):
        raise o.UserError("give --tree ARCHIVE or --cell CHECKPOINT:DATASET[:SEED] (repeatable), not both")
    if tree:
        o.input_file(tree, "--tree")
    spec: dict[str, Any] = {
        "name": name,
        "cells": [cell(c) for c in cells or []],
        "dataset_map": o.pairs(dataset_map, typed=False),
        "backbone": o.backbone(model, pretrained),
        "hyperparameters": o.hyperparameters(hyperparameters, hp),
        "grid": grid(grid_axes),
        "protocol": protocol,
        "prompt": {"class_token_position": class_token_position} if class_token_position else None,
        "metadata": o.pairs(metadata, typed=False),
    }
    spec = {k: v for k, v in spec.items() if v}
    with o.connect(url, token, timeout) as c:
        print_json(c.create_sweep(spec, tree=tree, idempotency_key=idempotency_key))


@app.command("wait")
def wait(
    sweep: SweepId,
    interval: o.Interval = 2.0,
    wait_timeout: o.WaitTimeout = None,
    quiet: o.Quiet = False,
    url: o.Url = None,
    token: o.Token = None,
    timeout: o.Timeout = 300.0,
) -> None:
    """Wait for a sweep (progress on stderr), then print its table; exit 0 when it succeeded."""
    with o.connect(url, token, timeout) as c:
        with ProgressBar(sweep_progress) as bar:
            done = c.wait_sweep(
                sweep, interval=interval, timeout=wait_timeout, on_update=None if quiet else bar
            )
        table = c.sweep_report(done["id"], "txt").decode("utf-8")
    print_json(done)
    say(table.rstrip("\n"))  # for a person; stdout stays one JSON document
    say(done["status"])
    if done["status"] != "succeeded":
        raise typer.Exit(1)


@app.command("download")
def download(
    sweep: SweepId,
    formats: Annotated[
        list[Format] | None, typer.Option("--format", help="repeatable (default: all)")
    ] = None,
    out: Annotated[
        Path, typer.Option(metavar="DIR", help="folder (default: here)", show_default=False)
    ] = Path("."),
    url: o.Url = None,
    token: o.Token = None,
    timeout: o.Timeout = 300.0,
) -> None:
    """Download the report (json, csv, tex, txt, html); prints one path a line."""
    with o.connect(url, token, timeout) as c:
        chosen = tuple(f.value for f in formats) if formats else tuple(f.value for f in Format)
        print_lines(c.download_sweep_report(sweep, out, chosen))


@app.command("get")
def get(sweep: SweepId, url: o.Url = None, token: o.Token = None, timeout: o.Timeout = 300.0) -> None:
    """Print a sweep as JSON."""
    with o.connect(url, token, timeout) as c:
        print_json(c.get_sweep(sweep))


@app.command("cancel")
def cancel(sweep: SweepId, url: o.Url = None, token: o.Token = None, timeout: o.Timeout = 300.0) -> None:
    """Cancel every unfinished job of a sweep."""
    with o.connect(url, token, timeout) as c:
        print_json(c.cancel_sweep(sweep))


@app.command("list")
def list_(url: o.Url = None, token: o.Token = None, timeout: o.Timeout = 300.0) -> None:
    """List the project's sweeps as JSON ({"data": [...], "has_more": false, "next_cursor": null})."""
    with o.connect(url, token, timeout) as c:
        print_list(c.list_sweeps())


def register(root: typer.Typer) -> None:
    root.add_typer(app)
