"""The requests of the MergeTune API as plain data, shared by the sync and the async client.

An API operation (:mod:`mergetune._operations`) is a generator that yields steps and receives their
results: a :class:`Call` (one HTTP request; the result is the decoded JSON, or the bytes with
``raw``), a :class:`Download` (stream a response body into an open file) or a :class:`Sleep`. The
clients in :mod:`mergetune.client` only carry the steps out, with ``httpx.Client`` or
``httpx.AsyncClient``; building the requests and reading the answers happens here, once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx


class ApiError(Exception):
    """An error answer of the API: HTTP status plus the ``{"error": {code, message, param}}`` body."""

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(f"{status} {code}: {message}" + (f" (param: {param})" if param else ""))
        self.status, self.code, self.message, self.param = status, code, message, param


@dataclass(frozen=True)
class Upload:
    """A file sent as one part of a multipart body, read in chunks while the request is sent."""

    path: Path
    content_type: str | None = None


@dataclass(frozen=True)
class Call:
    """One HTTP request. Fields left empty are not sent; ``files`` maps form fields to files."""

    method: str
    path: str
    params: dict[str, Any] = field(default_factory=dict)
    json: Any = None
    data: dict[str, str] = field(default_factory=dict)
    files: dict[str, Upload] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    raw: bool = False  # the result is the body's bytes, not its JSON


@dataclass(frozen=True)
class Download:
    """Send ``call`` and write its body, chunk by chunk, to the open binary file ``out``."""

    call: Call
    out: IO[bytes]


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Open:
    """Send ``call`` and keep its response open for :class:`Read` steps; the result is a handle (an
    error answer raises :class:`ApiError`). ``read_timeout``: seconds a read may wait for bytes."""

    call: Call
    read_timeout: float | None = None


@dataclass(frozen=True)
class Read:
    """The next bytes of an :class:`Open` response as they arrive; ``b""`` once it has ended."""

    handle: Any


@dataclass(frozen=True)
class Close:
    """Close an :class:`Open` response (the driver closes any left open when an operation ends)."""

    handle: Any


@dataclass(frozen=True)
class Emit:
    """A value handed to the caller of an iterating operation (``stream_job_events``); no I/O."""

    value: Any


Step = Call | Download | Sleep | Open | Read | Close | Emit
#: What a dropped or silent connection raises in the drivers (a stream reconnects on these).
NETWORK_ERRORS: tuple[type[BaseException], ...] = (httpx.TransportError,)
CHUNK = 1024 * 1024


def http_options(base_url: str, token: str | None, timeout: float) -> dict[str, Any]:
    """The keyword arguments of ``httpx.Client`` / ``httpx.AsyncClient`` for this API and token."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return {"base_url": base_url.rstrip("/"), "headers": headers, "timeout": timeout}


@contextlib.contextmanager
def request_args(call: Call) -> Iterator[dict[str, Any]]:
    """The arguments of ``httpx.Client.request(call.method, call.path, **args)``; files stay open
    while the block runs (httpx reads them in chunks as it sends)."""
    args: dict[str, Any] = {}
    if call.params:
        args["params"] = {k: v for k, v in call.params.items() if v is not None}
    if call.json is not None:
        args["json"] = call.json
    if call.data:
        args["data"] = call.data
    if call.headers:
        args["headers"] = call.headers
    with contextlib.ExitStack() as stack:
        if call.files:
            args["files"] = {
                name: (f.path.name, stack.enter_context(f.path.open("rb")), f.content_type)
                for name, f in call.files.items()
            }
        yield args


def result(call: Call, r: httpx.Response) -> Any:
    """What a :class:`Call` step gives back: the JSON (None for an empty body) or, with ``raw``, the
    bytes; an error answer raises :class:`ApiError`."""
    raise_for_error(r)
    if call.raw:
        return r.content
    return r.json() if r.content else None


def raise_for_error(r: httpx.Response) -> None:
    """:class:`ApiError` for a 4xx/5xx answer (its body must have been read)."""
    if r.status_code < 400:
        return
    try:
        err = r.json()["error"]
        raise ApiError(r.status_code, err.get("code", "error"), err.get("message", ""), err.get("param"))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ApiError(r.status_code, "http_error", r.text[:500]) from None


def missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    return missing


def remove_dirs(dirs: list[Path]) -> None:
    """Remove the folders (deepest first) that are empty; never someone else's files."""
    for d in dirs:
        try:
            d.rmdir()
        except OSError:
            pass
