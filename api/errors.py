"""Domain errors carry their HTTP status; one set of handlers renders every error as
``{"error": {"code": ..., "message": ..., "param": ...}}`` (validation errors, 404/405 from routing,
core errors and unexpected failures included)."""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from mergetune.common.db import DatabaseUnavailable, is_unavailable
from mergetune.common.storage import is_storage_full
from mergetune.core.errors import CoreError

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    code: str
    message: str
    param: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        status_code: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status_code is not None:
            self.status_code = status_code
        self.param = param
        self.headers = headers


class BadRequest(ApiError):
    status_code, code = 400, "bad_request"


class Unauthorized(ApiError):
    status_code, code = 401, "unauthorized"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message, code=code, headers={"WWW-Authenticate": "Bearer"})


class NotFound(ApiError):
    status_code, code = 404, "not_found"


class Conflict(ApiError):
    status_code, code = 409, "conflict"


class PayloadTooLarge(ApiError):
    status_code, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status_code, code = 415, "unsupported_media_type"


class Unprocessable(ApiError):
    status_code, code = 422, "invalid_request"


class ServiceUnavailable(ApiError):
    status_code, code = 503, "service_unavailable"


class InsufficientStorage(ApiError):
    """507 ``storage_full`` with ``Retry-After``: the server's disk is full; the same request can
    succeed later (nothing of it was kept)."""

    status_code, code = 507, "storage_full"


#: Seconds a client should wait before retrying an upload refused for a full disk.
STORAGE_RETRY_AFTER = 60


def storage_full(
    message: str = "the server's storage is full; retry later", param: str | None = "file"
) -> InsufficientStorage:
    return InsufficientStorage(message, param=param, headers={"Retry-After": str(STORAGE_RETRY_AFTER)})


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    503: "service_unavailable",
    507: "storage_full",
}

_DESCRIPTIONS = {
    400: "Bad request",
    401: "Missing or invalid bearer token",
    404: "Not found (or owned by another project)",
    405: "Method not allowed",
    409: "Conflict (state or Idempotency-Key reuse with another body)",
    413: "Upload larger than the configured limit",
    415: "Unsupported media type",
    422: "Invalid input; `param` names the offending field",
    503: "A dependency (database, broker) is unavailable",
    507: "The server's storage is full (`storage_full`, with Retry-After); nothing was kept",
}


#: Seconds a client should wait before retrying while the database is unreachable.
DATABASE_RETRY_AFTER = 5


def database_unavailable() -> JSONResponse:
    """503 ``database_unavailable`` with ``Retry-After``: the database cannot be reached right now."""
    return error_json(
        503,
        "database_unavailable",
        "the database is unavailable; retry later",
        None,
        headers={"Retry-After": str(DATABASE_RETRY_AFTER)},
    )


def database_disk_full(exc: BaseException) -> bool:
    """The database refused a write for want of disk: Postgres' ``disk_full`` (SQLSTATE 53100) or
    SQLite's "database or disk is full" (the embedded mode keeps its database under HOME)."""
    orig = getattr(exc, "orig", None)
    if getattr(orig, "sqlstate", None) == "53100":
        return True
    return "database or disk is full" in str(orig if orig is not None else exc) or is_storage_full(orig)


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries documenting the error body for each status code."""
    return {c: {"model": ErrorResponse, "description": _DESCRIPTIONS.get(c, "Error")} for c in codes}


def error_body(code: str, message: str, param: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "param": param}}


def error_json(status: int, code: str, message: str, param: str | None = None, **kw: Any) -> JSONResponse:
    return JSONResponse(error_body(code, message, param), status_code=status, **kw)


def loc_to_param(loc: tuple[Any, ...] | list[Any], prefix: str | None = None) -> str | None:
    """``("body", "hyperparameters", "lr")`` -> ``"hyperparameters.lr"``; list indices kept."""
    parts = [str(p) for p in loc]
    if parts and parts[0] in ("body", "query", "path", "header", "cookie", "form"):
        parts = parts[1:]
    if prefix:
        parts = [prefix, *parts]
    return ".".join(parts) or None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean 'lr'?)`` for the known names closest to ``name`` (difflib), else ``""``."""
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    if not close:
        return ""
    return f" (did you mean {' or '.join(repr(c) for c in close)}?)"


def validation_message(
    errors: list[Any], prefix: str | None = None, known: Iterable[str] | None = None
) -> tuple[str, str | None]:
    """A readable message for all errors and the param of the first one. With ``known`` (the model's
    field names), an unknown field says so and names the closest known ones."""
    msgs = []
    first_param = None
    for e in errors:
        loc = tuple(e.get("loc", ()))
        param = loc_to_param(loc, prefix)
        if first_param is None:
            first_param = param
        msg = e.get("msg")
        if known is not None and e.get("type") == "extra_forbidden" and loc:
            name = str(loc[-1])
            what = prefix.removesuffix("s") if prefix else "field"
            msg = f"unknown {what} {name!r}{did_you_mean(name, known)}"
        msgs.append(f"{param}: {msg}" if param else str(msg))
    return "; ".join(msgs) or "invalid request", first_param


def from_pydantic(
    exc: ValidationError, prefix: str | None = None, known: Iterable[str] | None = None
) -> Unprocessable:
    message, param = validation_message(exc.errors(), prefix, known)
    return Unprocessable(message, param=param)


def core_status(exc: CoreError) -> int:
    if not exc.user_error:
        return 500
    if exc.code == "path_outside_root":
        return 400
    if exc.code == "too_large":
        return 413
    return 422


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error_json(exc.status_code, exc.code, exc.message, exc.param, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = list(exc.errors())
        message, param = validation_message(errors)
        code = "invalid_request"
        if errors and errors[0].get("type") == "json_invalid":
            code, param = "invalid_json", None
        return error_json(422, code, message, param)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _STATUS_CODES.get(exc.status_code, "http_error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        return error_json(exc.status_code, code, message, None, headers=getattr(exc, "headers", None))

    @app.exception_handler(CoreError)
    async def _core(_: Request, exc: CoreError) -> JSONResponse:
        status = core_status(exc)
        if status == 500:
            log.error("core error: %s", exc, exc_info=exc)
            return error_json(500, "internal_error", "internal error", None)
        return error_json(status, exc.code, exc.message, exc.param)

    @app.exception_handler(DatabaseUnavailable)
    @app.exception_handler(sa_exc.DBAPIError)
    @app.exception_handler(sa_exc.TimeoutError)
    async def _database(_: Request, exc: Exception) -> JSONResponse:
        # Handled here (not by the catch-all below, which ends the connection): the client keeps its
        # connection and may retry on it.
        if database_disk_full(exc):  # the database's own disk: as temporary as the store's
            log.warning("database disk full: %s", str(exc).splitlines()[0][:200])
            full = storage_full(param=None)
            return error_json(full.status_code, full.code, full.message, None, headers=full.headers)
        if is_unavailable(exc):
            log.warning("database unavailable: %s: %s", type(exc).__name__, str(exc).splitlines()[0][:200])
            return database_unavailable()
        if isinstance(exc, sa_exc.DataError) and "NUL" in str(exc.orig):
            # A NUL byte that reached Postgres by a path the edge does not check: bad input, not a 500.
            log.warning("NUL byte reached the database", exc_info=exc)
            return error_json(422, "invalid_characters", "a text value holds a NUL character", None)
        log.error("database error", exc_info=exc)
        return error_json(500, "internal_error", "internal error", None)

    @app.exception_handler(OSError)
    async def _os_error(_: Request, exc: OSError) -> JSONResponse:
        # Handled here (not by the catch-all, which ends the connection): a full disk is temporary.
        if is_storage_full(exc):
            log.warning("storage full: %s", exc)
            full = storage_full(param=None)
            return error_json(full.status_code, full.code, full.message, None, headers=full.headers)
        log.error("unhandled error", exc_info=exc)
        return error_json(500, "internal_error", "internal error", None)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        if is_storage_full(exc):
            full = storage_full(param=None)
            return error_json(full.status_code, full.code, full.message, None, headers=full.headers)
        log.error("unhandled error", exc_info=exc)
        return error_json(500, "internal_error", "internal error", None)
