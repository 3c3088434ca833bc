"""``mergetune upload``: send a fine-tuned checkpoint (CoOp/KgCoOp prompts, a linear head, MMA
adapters) to the service; prints the checkpoint as JSON. A file the service rejects is one line on stderr
(``error: FILE was rejected: why [code] (checkpoint ckpt_...)``) and exit 2, with nothing on stdout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import typer

from mergetune.cli.options import Timeout, Token, TokenPosition, Url, connect, input_file
from mergetune.cli.output import print_json, say

Method = Literal["coop", "kgcoop", "linear_head", "mma"]


def upload(
    file: Annotated[
        Path,
        typer.Argument(metavar="FILE", help="Dassl .pth.tar, .pth/.pt state dict or .safetensors"),
    ],
    method: Annotated[Method | None, typer.Option(help="default: detected from the file")] = None,
    name: Annotated[str | None, typer.Option(help="display name (default: the file name)")] = None,
    class_token_position: Annotated[
        TokenPosition | None, typer.Option(help="CoOp's CLASS_TOKEN_POSITION")
    ] = None,
    idempotency_key: Annotated[
        str | None,
        typer.Option(metavar="KEY", help="a retried request with the same key creates nothing new"),
    ] = None,
    url: Url = None,
    token: Token = None,
    timeout: Timeout = 300.0,
) -> None:
    """Upload a checkpoint."""
    input_file(file, "FILE")
    with connect(url, token, timeout) as c:
        ckpt = c.upload_checkpoint(
            file,
            method=method,
            name=name,
            idempotency_key=idempotency_key,
            class_token_position=class_token_position,
        )
    if ckpt["status"] != "ready":
        err = ckpt.get("error") or {}
        why = err.get("message") or "not a checkpoint the service can read"
        code = f" [{err['code']}]" if err.get("code") else ""
        say(f"error: {file} was {ckpt['status']}: {why.splitlines()[0]}{code} (checkpoint {ckpt['id']})")
        raise typer.Exit(2)
    print_json(ckpt)


def register(app: typer.Typer) -> None:
    app.command("upload")(upload)
