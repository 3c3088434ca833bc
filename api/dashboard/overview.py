"""The queue health panel (queue depth, activity, recent workers) and ``/ui/overview``, the JSON the
jobs list polls for that panel and for the statuses of the jobs it shows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from mergetune.api.dashboard.auth import ViewerDep
from mergetune.api.dashboard.render import fmt_time
from mergetune.api.deps import SessionDep
from mergetune.api.errors import error_body
from mergetune.common import repositories as repo
from mergetune.common.models import ACTIVE_STATUSES, Job, JobStatus

WORKER_RECENT = timedelta(seconds=60)

router = APIRouter(include_in_schema=False)


def queue_health(session: Session, project_id: str) -> dict[str, Any]:
    """Queue depth and activity over all projects (one queue serves them all) + recent workers. A
    worker busy with another project's job shows as ``busy`` without that job's id."""
    counts = repo.count_jobs_by_status(session)
    active = sum(counts.get(s.value, 0) for s in ACTIVE_STATUSES)
    workers = sorted(repo.live_workers(session, datetime.now(UTC) - WORKER_RECENT), key=lambda w: w.hostname)
    running = {w.current_job_id for w in workers if w.current_job_id}
    own = (
        set(session.scalars(select(Job.id).where(Job.id.in_(running), Job.project_id == project_id)))
        if running
        else set()
    )
    return {
        "queued": counts.get(JobStatus.queued.value, 0) + counts.get(JobStatus.validating.value, 0),
        "running": active,
        "workers": [
            {
                "hostname": w.hostname,
                "last_seen": fmt_time(w.last_seen),
                "age_s": int((datetime.now(UTC) - w.last_seen).total_seconds()),
                "current_job_id": w.current_job_id if w.current_job_id in own else None,
                "busy": w.current_job_id is not None,
            }
            for w in workers
        ],
    }


@router.get("/ui/overview")
def overview_json(session: SessionDep, viewer: ViewerDep, ids: str = "") -> Response:
    """Health panel numbers and the statuses of the jobs shown on the list page."""
    if viewer is None:
        return JSONResponse(error_body("unauthenticated", "log in at /login"), status_code=401)
    wanted = [i for i in ids.split(",") if i][:100]
    statuses = {}
    if wanted:
        rows = session.execute(
            select(Job.id, Job.status, Job.progress).where(
                Job.project_id == viewer.project_id, Job.id.in_(wanted)
            )
        ).all()
        statuses = {r.id: {"status": r.status, "progress": r.progress or {}} for r in rows}
    return JSONResponse(
        {"health": queue_health(session, viewer.project_id), "jobs": statuses},
        headers={"Cache-Control": "no-store"},
    )
