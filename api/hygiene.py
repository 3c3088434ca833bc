"""Input hygiene at the edge: control characters never reach the database.

Postgres refuses NUL in text, and no identifier, name, cursor or form value of this API has a use for
control characters, so a pure ASGI middleware answers them before routing:

- path parameters, query parameters and header values with a C0/C1 control character (NUL included) or
  DEL: **400** ``invalid_characters``, ``param`` naming the path parameter (``job_id``), the query
  parameter (``after``) or the header;
- JSON and form bodies whose keys or string values hold such a character (tab, LF and CR are allowed
  in body text) or a lone UTF-16 surrogate (``"\\ud800"``, not encodable as UTF-8): **422**
  ``invalid_characters``, ``param`` the field's dotted path (``metadata.note``,
  ``eval_dataset_ids[0]``);
- JSON bodies over :data:`MAX_JSON_BYTES`: **413** before they are parsed.

Multipart names, filenames and form fields are checked by :mod:`mergetune.api.uploads` while the body streams.
These are ordinary responses (no exception reaches the server), so the connection stays usable.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import parse_qsl

from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mergetune.api.errors import error_body

#: Control characters refused in paths, query strings and header values (C0, DEL, C1).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: In body text tab, LF and CR are ordinary; the other controls and lone surrogates are not.
_BODY_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")
_HEADER_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")

MAX_JSON_BYTES = 16 * 1024 * 1024  # far above any JSON body this API takes; uploads are multipart


def has_control(text: str) -> bool:
    """True when ``text`` holds a character refused in names, identifiers and form values."""
    return bool(_BODY_CONTROL.search(text))


def describe(text: str) -> str:
    """``U+0000`` for the first refused character of ``text``."""
    m = _BODY_CONTROL.search(text) or _CONTROL.search(text)
    return f"U+{ord(m.group()):04X}" if m else "a control character"


def _shown(name: str) -> str:
    """A parameter name safe to echo back (its control characters escaped)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", name)[:100]


def _walk(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """(param, text) for every key and string value of a decoded JSON document."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            child = f"{path}.{k}" if path else str(k)
            yield child, str(k)
            yield from _walk(v, child)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def first_bad_field(document: Any) -> tuple[str, str] | None:
    """(param, character) of the first key or string value that holds a refused character."""
    for param, text in _walk(document, ""):
        if _BODY_CONTROL.search(text):
            return _shown(param) or "body", describe(text)
    return None


class InputHygieneMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        refusal = self._check_request_line(scope)
        if refusal is not None:
            await _answer(send, 400, *refusal)
            return
        ctype = _header(scope, b"content-type").split(b";")[0].strip().lower()
        is_json = ctype == b"application/json" or ctype.endswith(b"+json")
        is_form = ctype == b"application/x-www-form-urlencoded"
        if scope["method"] not in ("POST", "PUT", "PATCH") or not (is_json or is_form):
            await self.app(scope, receive, send)
            return

        length = _header(scope, b"content-length")
        if is_json and length.isdigit() and int(length) > MAX_JSON_BYTES:
            await _answer(send, 413, "payload_too_large", f"JSON body over {MAX_JSON_BYTES} bytes", None)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: nothing to answer
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if is_json and size > MAX_JSON_BYTES:
                await _answer(send, 413, "payload_too_large", f"JSON body over {MAX_JSON_BYTES} bytes", None)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        bad = _scan_json(body) if is_json else _scan_form(body)
        if bad is not None:
            param, char = bad
            await _answer(
                send, 422, "invalid_characters", f"{param}: control character {char} is not allowed", param
            )
            return

        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    @staticmethod
    def _check_request_line(scope: Scope) -> tuple[str, str, str] | None:
        path: str = scope.get("path", "")
        if _CONTROL.search(path):
            param = _path_param(scope) or "path"
            char = f"U+{ord(_CONTROL.search(path).group()):04X}"  # type: ignore[union-attr]
            return (
                "invalid_characters",
                f"path parameter {param}: control character {char} is not allowed",
                param,
            )
        raw_qs: bytes = scope.get("query_string", b"")
        if raw_qs:
            for key, value in parse_qsl(raw_qs.decode("utf-8", "replace"), keep_blank_values=True):
                for text in (key, value):
                    m = _CONTROL.search(text)
                    if m:
                        param = _shown(key) or "query"
                        return (
                            "invalid_characters",
                            f"query parameter {param}: control character U+{ord(m.group()):04X} is not allowed",
                            param,
                        )
        for name, value in scope.get("headers", []):
            if _HEADER_CONTROL.search(value) or _HEADER_CONTROL.search(name):
                param = _shown(name.decode("latin-1"))
                return "invalid_characters", f"header {param}: control characters are not allowed", param
        return None


def _templates(routes: Iterable[Any], prefix: str = "") -> Iterator[str]:
    """Every route's path template, through included routers too."""
    for route in routes:
        path = getattr(route, "path", None)
        if isinstance(path, str) and "{" in path:
            yield prefix + path
        inner = getattr(route, "original_router", None)  # a router included by FastAPI
        if inner is not None:
            context = getattr(route, "include_context", None)
            yield from _templates(
                getattr(inner, "routes", []), prefix + (getattr(context, "prefix", "") or "")
            )
        sub = getattr(route, "routes", None)  # a Mount
        if sub is not None and inner is None:
            yield from _templates(sub, prefix + (path or ""))


def _path_param(scope: Scope) -> str | None:
    """The name of the first path parameter (of a route template that matches) holding a control
    character; None when no template matches."""
    app = scope.get("app")
    patterns = getattr(app, "_hygiene_path_patterns", None) if app is not None else None
    if patterns is None:
        patterns = [compile_path(t)[0] for t in dict.fromkeys(_templates(getattr(app, "routes", [])))]
        if app is not None:
            app._hygiene_path_patterns = patterns  # type: ignore[attr-defined]
    path = scope.get("path", "")
    for pattern in patterns:
        m = pattern.match(path)
        if m is None:
            continue
        for name, value in m.groupdict().items():
            if _CONTROL.search(value):
                return name
    return None


def _scan_json(body: bytes) -> tuple[str, str] | None:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError):
        return None  # not JSON: the route's own validation answers (422 invalid_json)
    return first_bad_field(document)


def _scan_form(body: bytes) -> tuple[str, str] | None:
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        return None
    for key, value in pairs:
        for text in (key, value):
            if _BODY_CONTROL.search(text):
                return _shown(key) or "form", describe(text)
    return None


def _header(scope: Scope, name: bytes) -> bytes:
    for k, v in scope.get("headers", []):
        if k == name:
            return bytes(v)
    return b""


async def _answer(send: Send, status: int, code: str, message: str, param: str | None) -> None:
    payload = json.dumps(error_body(code, message, param), separators=(",", ":")).encode("utf-8")
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
