"""What the client commands share: the connection options, the client they open, and the parsing of
``KEY=VALUE`` pairs, JSON objects and input files into one-line :class:`UserError` messages."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from mergetune.client import Client

DEFAULT_URL = "http://127.0.0.1:8000"


class UserError(Exception):
    """A mistake the user can fix: printed as one line on stderr (exit 1), never as a traceback."""


# -- options every client command takes ----------------------------------------------------------
Url = Annotated[
    str | None,
    typer.Option("--url", envvar="MERGETUNE_URL", help=f"API base URL (default {DEFAULT_URL})"),
]
Token = Annotated[str | None, typer.Option("--token", envvar="MERGETUNE_TOKEN", help="bearer token")]
Timeout = Annotated[float, typer.Option("--timeout", metavar="SECONDS", help="HTTP timeout in seconds")]

# -- options the commands that wait take ---------------------------------------------------------
Interval = Annotated[float, typer.Option("--interval", metavar="SECONDS", help="poll interval in seconds")]
WaitTimeout = Annotated[
    float | None,
    typer.Option("--wait-timeout", metavar="SECONDS", help="give up after this many seconds"),
]
Quiet = Annotated[bool, typer.Option("--quiet", help="no progress bar")]

# -- options of jobs and sweeps -------------------------------------------------------------------
Model = Annotated[str | None, typer.Option("--model", help="backbone model, e.g. ViT-B-16 or tiny-clip")]
Pretrained = Annotated[
    str | None, typer.Option("--pretrained", help="backbone weights tag, e.g. openai or builtin")
]
Hyperparameters = Annotated[
    str | None, typer.Option("--hyperparameters", metavar="JSON", help="JSON object of hyperparameters")
]
Metadata = Annotated[
    list[str] | None,
    typer.Option("--metadata", metavar="KEY=VALUE", help="a free-form label (repeatable)"),
]
TokenPosition = Literal["end", "middle", "front"]
Protocol = Literal["base2novel", "all"]


def connect(url: str | None, token: str | None, timeout: float) -> Client:
    """The client of the API at ``url`` (MERGETUNE_URL) with ``token`` (MERGETUNE_TOKEN)."""
    if not token:
        raise UserError("no token: pass --token or set MERGETUNE_TOKEN (see `mergetune token create`)")
    return Client(url or DEFAULT_URL, token, timeout=timeout)


def backbone(model: str | None, pretrained: str | None) -> dict[str, str] | None:
    """``{"model": ..., "pretrained": ...}`` with the parts given; None when neither is."""
    spec = {k: v for k, v in {"model": model, "pretrained": pretrained}.items() if v}
    return spec or None


# -- parsing --------------------------------------------------------------------------------------
def json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """The JSON object given to ``option`` (None when not given); bad JSON names the option."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{option}: not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"{option}: expected a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value


def input_file(path: Path, option: str) -> Path:
    """A readable regular file, or a one-line error naming ``option``."""
    if not path.exists():
        raise UserError(f"{option}: {path}: no such file")
    if path.is_dir():
        raise UserError(f"{option}: {path} is a directory; give the file itself")
    if not os.access(path, os.R_OK):
        raise UserError(f"{option}: {path}: permission denied")
    return path


def parse_value(raw: str) -> Any:
    """``3`` -> 3, ``0.1`` -> 0.1, ``true`` -> True, anything that is not JSON -> the text itself."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def pairs(items: list[str] | None, *, typed: bool) -> dict[str, Any]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (values parsed as JSON when ``typed``)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = parse_value(value) if typed else value
    return out


def hyperparameters(text: str | None, items: list[str] | None) -> dict[str, Any]:
    """``--hyperparameters JSON`` updated with the ``--hp KEY=VALUE`` pairs."""
    hp = json_object(text, "--hyperparameters") or {}
    hp.update(pairs(items, typed=True))
    return hp
