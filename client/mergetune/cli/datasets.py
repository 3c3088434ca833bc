"""``mergetune dataset create|list``: register the data a job trains and evaluates on."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from mergetune.cli.options import Timeout, Token, Url, connect, json_object
from mergetune.cli.output import print_json, print_list

app = typer.Typer(name="dataset", help="datasets", no_args_is_help=True)


@app.command("create")
def create(
    name: Annotated[str, typer.Option(help="dataset name")],
    kind: Annotated[Literal["builtin", "coop", "imagefolder"], typer.Option(help="layout on disk")],
    path: Annotated[
        str | None, typer.Option(help="folder relative to the server's data root (coop, imagefolder)")
    ] = None,
    coop_name: Annotated[
        str | None, typer.Option(help="CoOp's dataset name, e.g. eurosat (kind coop)")
    ] = None,
    options: Annotated[
        str | None,
        typer.Option(
            metavar="JSON", help="JSON object of kind-specific options, e.g. '{\"num_classes\": 6}'"
        ),
    ] = None,
    url: Url = None,
    token: Token = None,
    timeout: Timeout = 300.0,
) -> None:
    """Register a dataset."""
    opts = json_object(options, "--options")
    with connect(url, token, timeout) as c:
        print_json(c.create_dataset(name, kind, path, coop_name=coop_name, options=opts))


@app.command("list")
def list_(url: Url = None, token: Token = None, timeout: Timeout = 300.0) -> None:
    """List the project's datasets as JSON ({"data": [...], "has_more": false, "next_cursor": null})."""
    with connect(url, token, timeout) as c:
        print_list(c.list_datasets())


def register(root: typer.Typer) -> None:
    root.add_typer(app)
