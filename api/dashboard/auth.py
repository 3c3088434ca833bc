"""Who is looking: the dashboard's login cookie, the viewer it resolves to, and the CSRF check.

Login takes an API token (the same bearer tokens the REST API uses) and keeps it in an HttpOnly,
SameSite=Strict cookie; every page and JSON endpoint resolves the cookie to the token's project and
shows only that project's objects. Without a valid cookie, pages redirect to ``/login`` (see
:func:`to_login`) and JSON endpoints answer 401. State-changing forms carry a CSRF token derived from
the cookie (an HMAC), checked on POST with :func:`check_csrf`.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated
from urllib.parse import urlencode

from fastapi import Depends, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import select
from sqlalchemy.orm import Session

from mergetune.api.deps import SessionDep
from mergetune.common import repositories as repo
from mergetune.common.models import ApiToken

COOKIE = "mergetune_token"


class Viewer:
    """The logged-in token: its project and the CSRF token for its forms."""

    def __init__(self, token: ApiToken, raw: str) -> None:
        self.token = token
        self.project_id = token.project_id
        self.project_name = token.project.name if token.project is not None else token.project_id
        self.csrf = csrf_token(raw)


def csrf_token(raw: str) -> str:
    """A per-token CSRF value: forging it needs the HttpOnly cookie, which scripts cannot read."""
    return hmac.new(raw.encode("utf-8"), b"mergetune-dashboard-csrf", hashlib.sha256).hexdigest()


def lookup_token(session: Session, raw: str | None) -> ApiToken | None:
    """The usable token for the cookie/form value: unknown, revoked and expired tokens read as None."""
    if not raw or len(raw) > 512:
        return None
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == repo.hash_token(raw)))
    return token if token is not None and repo.token_refusal(token) is None else None


def get_viewer(request: Request, session: SessionDep) -> Viewer | None:
    """The logged-in viewer from the cookie, or None (pages then redirect, JSON answers 401)."""
    raw = request.cookies.get(COOKIE)
    token = lookup_token(session, raw)
    return Viewer(token, raw) if token is not None and raw else None


ViewerDep = Annotated[Viewer | None, Depends(get_viewer)]


def to_login(request: Request) -> RedirectResponse:
    """The redirect to the login page, coming back to this page (path and query) afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)


def safe_next(target: str | None) -> str:
    """``target`` when it is a same-site path, else ``/``."""
    # Only same-site paths: no scheme, no host, no protocol-relative "//evil".
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def check_csrf(viewer: Viewer, value: str | None) -> bool:
    """Whether a form's ``csrf`` value is the viewer's."""
    return bool(value) and hmac.compare_digest(viewer.csrf, value or "")
