"""``mergetune weights upload|list|get|delete``: backbone weights uploaded once to the service and named
by jobs as ``--pretrained weights:<id>`` (or ``sha256:<hex>``). Uploading the same bytes again answers
the record already there. A refused file is one line on stderr and exit 1, with nothing on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mergetune.cli.options import Timeout, Token, Url, connect, input_file
from mergetune.cli.output import print_json, print_list

app = typer.Typer(name="weights", help="backbone weights uploaded to the service", no_args_is_help=True)


@app.command("upload")
def upload(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="a safetensors file or a torch state dict (.pt / .pth / .bin)"),
    ],
    name: Annotated[str | None, typer.Option(help="display name (default: the file name)")] = None,
    url: Url = None,
    token: Token = None,
    timeout: Timeout = 600.0,
) -> None:
    """Upload weights once; prints the record (its "pretrained" is what a job names)."""
    input_file(file, "FILE")
    with connect(url, token, timeout) as c:
        print_json(c.upload_weights(file, name=name))


@app.command("list")
def list_(url: Url = None, token: Token = None, timeout: Timeout = 300.0) -> None:
    """List the project's weights as JSON ({"data": [...], "has_more": false, "next_cursor": null})."""
    with connect(url, token, timeout) as c:
        print_list(c.list_weights())


@app.command("get")
def get(
    weights_id: Annotated[str, typer.Argument(metavar="ID", help="the weights id (weights_...)")],
    url: Url = None,
    token: Token = None,
    timeout: Timeout = 300.0,
) -> None:
    """Print one record of weights."""
    with connect(url, token, timeout) as c:
        print_json(c.get_weights(weights_id))


@app.command("delete")
def delete(
    weights_id: Annotated[str, typer.Argument(metavar="ID", help="the weights id (weights_...)")],
    url: Url = None,
    token: Token = None,
    timeout: Timeout = 300.0,
) -> None:
    """Delete weights (refused while a queued or running job names them); prints the bytes freed."""
    with connect(url, token, timeout) as c:
        print_json(c.delete_weights(weights_id))


def register(root: typer.Typer) -> None:
    root.add_typer(app)
