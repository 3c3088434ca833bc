"""The ``mergetune`` command (Typer): the client's command groups, and the operator's when the server
is installed.

Client side (``--url`` / MERGETUNE_URL, ``--token`` / MERGETUNE_TOKEN)::

    mergetune upload FILE [--method M] [--name N] [--class-token-position end|middle|front]
    mergetune dataset create --name N --kind builtin|coop|imagefolder [--path P] [--coop-name C] [--options JSON]
    mergetune dataset list
    mergetune job create --checkpoint ID --dataset ID [--model M --pretrained P] [--hp key=value ...]
                         [--eval-dataset ID ...] [--protocol base2novel|all] [--class-token-position P]
    mergetune job wait JOB        (progress bar on stderr; exit 0 when succeeded)
    mergetune job get|cancel|events JOB, mergetune job list
    mergetune download JOB [--name NAME ...] [--out DIR]
    mergetune sweep create|wait|download|get|cancel|list
    mergetune weights upload FILE [--name N], mergetune weights list|get|delete

Server side (:mod:`mergetune.ops`, only where the server is installed): ``serve [--embedded]``,
``worker``, ``migrate``, ``reconcile``, ``token create|list|revoke``.

Every error is one line on stderr (``error: ...``; exit 1, 2 for a wrong command line); ``--debug``
anywhere on the line (or MERGETUNE_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Annotated

import httpx
import typer
from typer.main import get_command

from mergetune.cli import checkpoints, datasets, jobs, sweeps, weights
from mergetune.cli.options import UserError
from mergetune.client import ApiError

__all__ = ["UserError", "build_app", "describe_error", "main"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("mergetune-service", "mergetune-client"):
        try:
            return version(dist)
        except PackageNotFoundError:
            continue
    return "unknown"  # pragma: no cover - a source tree without install


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"mergetune {_version()}\n")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_show_version, is_eager=True, help="print the version and exit"),
    ] = False,
    debug: Annotated[
        bool, typer.Option("--debug", help="print the traceback of an error (anywhere on the line)")
    ] = False,
) -> None:
    """MergeTune recovery service."""


def _add_ops(app: typer.Typer) -> None:
    """The operator's command groups, when the server (``mergetune.ops``) is installed. This is the one
    place the client reaches server code: pyproject's import-linter contract allows exactly this import
    (``mergetune.cli -> mergetune.ops``, ignore_imports) and no other from the client."""
    try:
        import mergetune.ops as ops
    except ModuleNotFoundError as exc:
        if exc.name != "mergetune.ops":
            raise
        return  # the client alone (pip install ./client)
    ops.register(app)


@functools.lru_cache(maxsize=1)
def build_app() -> typer.Typer:
    app = typer.Typer(
        name="mergetune",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        epilog="--debug (anywhere on the line) prints the full traceback of an error.",
    )
    app.callback()(_root)
    for group in (checkpoints, datasets, jobs, sweeps, weights):
        group.register(app)
    _add_ops(app)
    return app


def describe_error(exc: BaseException) -> str:
    """One line for a person: what went wrong and, where it helps, what to do."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, ApiError):
        where = f" (field: {exc.param})" if exc.param else ""
        return f"{exc.message or exc.code}{where} [HTTP {exc.status} {exc.code}]"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        url = str(exc.request.url.copy_with(path="/", query=None)) if _has_request(exc) else "the server"
        return (
            f"cannot connect to {url.rstrip('/')}: {_reason(exc)}; is `mergetune serve` running there? "
            "(set --url or MERGETUNE_URL)"
        )
    if isinstance(exc, httpx.TimeoutException):
        return f"the server did not answer in time ({type(exc).__name__}); raise --timeout SECONDS"
    if isinstance(exc, httpx.HTTPError):
        return f"HTTP error talking to the server: {_reason(exc)}"
    if isinstance(exc, TimeoutError):
        return str(exc)
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
        return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    return f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)"


def _has_request(exc: Exception) -> bool:
    try:
        exc.request  # type: ignore[attr-defined]  # noqa: B018
    except RuntimeError:
        return False
    return True


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lower = text.lower()
    if "refused" in lower:
        return "connection refused"
    if "name or service not known" in lower or "nodename nor servname" in lower:
        return "unknown host name"
    return text.splitlines()[0]


def _usage_hint(exc: typer.TyperException) -> str:
    ctx = getattr(exc, "ctx", None)
    path = ctx.command_path if ctx is not None else "mergetune"
    return f"{exc.format_message()} (see `{path} --help`)"


def main(argv: list[str] | None = None) -> int:
    """Run ``mergetune`` with ``argv`` (default: the process's); returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MERGETUNE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    command = get_command(build_app())
    try:
        code = command.main(args=argv, prog_name="mergetune", standalone_mode=False)
        return code if isinstance(code, int) else 0
    except (KeyboardInterrupt, typer.Abort):
        return 130
    except typer.TyperException as exc:  # a wrong command line (unknown option, missing argument ...)
        if debug:
            raise
        if not exc.format_message().strip():  # no command given: the help Typer printed is the answer
            return exc.exit_code
        sys.stderr.write(f"error: {_usage_hint(exc)}\n")
        return exc.exit_code
    except Exception as exc:
        if debug:
            raise
        sys.stderr.write(f"error: {describe_error(exc)}\n")
        return 1
