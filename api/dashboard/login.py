"""The login page (an API token in, the HttpOnly cookie out) and logout."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from mergetune.api.dashboard.auth import COOKIE, ViewerDep, check_csrf, lookup_token, safe_next
from mergetune.api.dashboard.render import render
from mergetune.api.deps import SessionDep

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)


@router.get("/login")
def login_page(request: Request, viewer: ViewerDep, next: str = "/") -> Response:
    if viewer is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return render(request, "login.html", None, next=safe_next(next), error=None)


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    raw = token.strip()
    found = lookup_token(session, raw)
    if found is None:
        return render(
            request,
            "login.html",
            None,
            status_code=401,
            next=safe_next(next),
            error="Unknown or revoked token.",
        )
    found.last_used_at = datetime.now(UTC)
    session.commit()
    response = RedirectResponse(safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        raw,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=7 * 24 * 3600,
        path="/",
    )
    logger.info("dashboard login for project %s", found.project_id)
    return response


@router.post("/logout")
def logout(viewer: ViewerDep, csrf: Annotated[str, Form()] = "") -> Response:
    if viewer is not None and not check_csrf(viewer, csrf):
        return Response("bad CSRF token", status_code=403)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response
