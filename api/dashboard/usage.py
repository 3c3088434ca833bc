"""``/usage``: the project's device time, jobs and stored bytes, per UTC day (what ``GET /v1/usage``
answers)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from mergetune.api.dashboard.auth import ViewerDep, to_login
from mergetune.api.dashboard.render import render
from mergetune.api.deps import SessionDep
from mergetune.common.models import utcnow
from mergetune.common.usage import project_usage

router = APIRouter(include_in_schema=False)


@router.get("/usage")
def usage_page(request: Request, session: SessionDep, viewer: ViewerDep, days: int = 30) -> Response:
    if viewer is None:
        return to_login(request)
    days = min(max(days, 1), 366)
    usage = project_usage(session, viewer.project_id, days=days, now=utcnow())
    usage["days"] = list(reversed(usage["days"]))  # today first
    return render(request, "usage.html", viewer, usage=usage, n_days=days)
