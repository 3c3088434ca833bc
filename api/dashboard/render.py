"""How the dashboard's pages are drawn: the Jinja2 templates and their filters, the value formatters,
the page, not-found and form-error renderers, and the route serving ``/static/{name}`` (so nothing
has to be mounted). Templates live in ``api/templates``, static files in ``api/static``."""

from __future__ import annotations

import gzip
import mimetypes
import secrets
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import plotly
from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates

from mergetune.api.dashboard.auth import Viewer
from mergetune.common.models import TERMINAL_STATUSES, JobStatus

API_DIR = Path(__file__).resolve().parent.parent
TEMPLATES_DIR = API_DIR / "templates"
STATIC_DIR = API_DIR / "static"
TERMINAL = {s.value for s in TERMINAL_STATUSES}
STATUSES = [s.value for s in JobStatus]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


# ------------------------------------------------------------------------------------------- formatting


def fmt_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def fmt_duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "—"
    seconds = int(((end or datetime.now(UTC)) - start).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def fmt_num(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    return f"{value:.{digits}f}"


def fmt_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)  # pragma: no cover


def fmt_ago(value: datetime | None) -> str:
    """ "3 min ago" style (the UTC time goes in a title next to it)."""
    if value is None:
        return "—"
    seconds = max(0, int((datetime.now(UTC) - value.astimezone(UTC)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


templates.env.filters["time"] = fmt_time
templates.env.filters["ago"] = fmt_ago
templates.env.filters["num"] = fmt_num
templates.env.filters["bytes"] = fmt_bytes
templates.env.globals["duration"] = fmt_duration
templates.env.globals["TERMINAL"] = TERMINAL


# -------------------------------------------------------------------------------------------- rendering


def render(request: Request, name: str, viewer: Viewer | None, status_code: int = 200, **context: Any):
    """The template ``name`` with ``context``, the viewer, the job statuses and the nav entry."""
    context.update(viewer=viewer, statuses=STATUSES, nav=name.removesuffix(".html"))
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def not_found(request: Request, viewer: Viewer, what: str) -> Response:
    return render(request, "not_found.html", viewer, status_code=404, what=what)


def error_page(
    request: Request, viewer: Viewer, name: str, status_code: int, message: str, param: str | None, **ctx: Any
) -> Response:
    """A form page shown again with the error naming its field (and a fresh idempotency key)."""
    return render(
        request,
        name,
        viewer,
        status_code=status_code,
        error=message,
        error_param=param,
        idempotency_key=secrets.token_hex(16),
        **ctx,
    )


# ----------------------------------------------------------------------------------------------- static

_STATIC_FILES = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else {}


# The chart library (plotly.js) is the one the ``plotly`` Python package ships, served from our own origin
# under a versioned name so browsers may keep it for a year; never from a CDN.
PLOTLY_VERSION = plotly.__version__
PLOTLY_URL = f"/static/vendor/plotly-{PLOTLY_VERSION}.min.js"
templates.env.globals["PLOTLY_URL"] = PLOTLY_URL


@cache
def _plotly_bytes() -> tuple[bytes, bytes]:
    raw = (Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js").read_bytes()
    return raw, gzip.compress(raw, compresslevel=6, mtime=0)


@router.get("/static/vendor/{name}")
def vendor_file(name: str, request: Request) -> Response:
    if name != PLOTLY_URL.rsplit("/", 1)[1]:
        return Response("not found", status_code=404)
    raw, packed = _plotly_bytes()
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "Vary": "Accept-Encoding"}
    if "gzip" in request.headers.get("accept-encoding", ""):
        headers["Content-Encoding"] = "gzip"
        return Response(packed, media_type="text/javascript", headers=headers)
    return Response(raw, media_type="text/javascript", headers=headers)


@router.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for /favicon.ico whatever the page links: the SVG icon, permanently."""
    return RedirectResponse("/static/favicon.svg", status_code=301)


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    path = _STATIC_FILES.get(name)
    if path is None:
        return Response("not found", status_code=404)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})
