"""The MLOps dashboard: server-rendered pages under ``/`` plus small JSON endpoints for polling.

Login takes an API token and keeps it in an HttpOnly cookie (:mod:`.auth`); every page and JSON
endpoint shows only the token's project's objects (other projects' ids answer 404, like the REST API).
State-changing forms carry a CSRF token derived from the cookie. Job creation and cancellation go
through the same service functions as the REST API; everything else is read-only SQL over the shared
ORM models. Pages are drawn by :mod:`.render`; each page has its module.

Wire it with ``app.include_router(dashboard.router)`` (static files are served by a route of this
router, so nothing has to be mounted).
"""

from __future__ import annotations

from fastapi import APIRouter

from mergetune.api.dashboard import (
    checkpoints,
    compare,
    datasets,
    job,
    jobs,
    login,
    new_job,
    overview,
    render,
    sweeps,
    usage,
    webhooks,
)

router = APIRouter(include_in_schema=False)
# In matching order: /jobs/new (new_job) must come before /jobs/{job_id} (job).
for _page in (
    login,
    jobs,
    overview,
    new_job,
    job,
    compare,
    checkpoints,
    datasets,
    sweeps,
    usage,
    webhooks,
    render,
):
    router.include_router(_page.router)

__all__ = ["router"]
