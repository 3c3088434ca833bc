"""One job's page, ``/jobs/{job_id}``: its name, status, verdict, progress and live chart first, then
its metrics, training charts, artifacts, settings and events; the JSON the page polls while the job
runs (``/ui/jobs/{job_id}/live``); the annotate (name, tags, notes) and cancel forms; and artifact
downloads.

Cancelling and annotating go through the same service functions as ``POST /v1/jobs/{id}/cancel``
and ``PATCH /v1/jobs/{id}``."""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response, StreamingResponse
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mergetune.api.dashboard.auth import COOKIE, Viewer, ViewerDep, check_csrf, lookup_token, to_login
from mergetune.api.dashboard.queries import REPORT_MAX_BYTES, epoch_series, job_artifacts, project_job
from mergetune.api.dashboard.render import TERMINAL, fmt_duration, fmt_time, not_found, render
from mergetune.api.deps import SessionDep, SettingsDep
from mergetune.api.errors import ApiError, error_body
from mergetune.api.schemas import JobUpdate
from mergetune.api.services import event_stream
from mergetune.api.services import jobs as job_service
from mergetune.common.models import Artifact, Checkpoint, Dataset, Job, JobEvent
from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactNotFound, get_store

logger = logging.getLogger(__name__)

EVENTS_PAGE = 200

router = APIRouter(include_in_schema=False)


# ------------------------------------------------------------------------------------- events and live


def _events(session: Session, job_id: str, after: int = 0) -> list[JobEvent]:
    query = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after)
        .order_by(JobEvent.id)
        .limit(EVENTS_PAGE)
    )
    return list(session.scalars(query))


def _latest_events(session: Session, job_id: str) -> tuple[list[JobEvent], int]:
    """The newest EVENTS_PAGE events in order, and how many the job has in all."""
    query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc()).limit(EVENTS_PAGE)
    total = session.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id)) or 0
    return list(session.scalars(query))[::-1], int(total)


def status_history(session: Session, job_id: str) -> list[dict[str, Any]]:
    """The job's status changes as the server recorded them (its "status" events), oldest first, with
    repeats folded: [{"status", "at", "message"}]."""
    query = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type == "status")
        .order_by(JobEvent.id)
        .limit(1000)
    )
    out: list[dict[str, Any]] = []
    for e in session.scalars(query):
        st = (e.data or {}).get("status") if isinstance(e.data, dict) else None
        if isinstance(st, str) and (not out or out[-1]["status"] != st):
            out.append({"status": st, "at": fmt_time(e.created_at), "message": e.message})
    return out


def _event_json(event: JobEvent, seq: int | None = None) -> dict[str, Any]:
    return {
        "id": event.id,
        "seq": seq,
        "created_at": fmt_time(event.created_at),
        "level": event.level,
        "type": event.type,
        "message": event.message,
    }


def _queue_facts(session: Session, settings: Settings, job: Job) -> dict[str, Any]:
    """Queue position, why the job waits and estimated finish, computed exactly as ``GET /v1/jobs/{id}``
    does."""
    read = job_service.job_read(session, settings, job)
    return {
        "queue_position": read.queue_position,
        "queue_reason": read.queue.reason if read.queue else None,
        "queue_message": read.queue.message if read.queue else "",
        "estimated_finish": fmt_time(read.estimated_finish) if read.estimated_finish else "—",
        "eta_text": eta_text(read),
    }


def eta_text(read: Any) -> str:
    """The estimated finish as the job page shows it: "18:42 – 18:51 UTC (likely 18:45; from this
    job's 5 measured epochs)"; seconds shown when the range is under 10 minutes wide."""
    rng = read.estimated_finish_range
    if read.estimated_finish is None or rng is None:
        return "—"
    earliest, likely, latest = (t.astimezone(UTC) for t in (rng.earliest, read.estimated_finish, rng.latest))
    form = "%H:%M:%S" if (latest - earliest).total_seconds() < 600 else "%H:%M"
    if latest.date() != datetime.now(UTC).date():
        form = "%Y-%m-%d " + form
    return (
        f"{earliest.strftime(form)} – {latest.strftime(form)} UTC "
        f"(likely {likely.strftime(form)}; from {rng.basis})"
    )


def job_live(session: Session, settings: Settings, job: Job, after: int = 0) -> dict[str, Any]:
    """What the job page polls: status, progress, metrics, queue facts, new events."""
    return {
        "id": job.id,
        "status": job.status,
        **_queue_facts(session, settings, job),
        "terminal": job.status in TERMINAL,
        "progress": job.progress or {},
        "metrics": job.metrics,
        "error": job.error,
        "started_at": fmt_time(job.started_at),
        "finished_at": fmt_time(job.finished_at),
        "duration": fmt_duration(job.started_at, job.finished_at),
        "worker_host": job.worker_host,
        "events": [
            _event_json(e, first + i)
            for first in [job_service.event_seq_before(session, job.id, after or None) + 1]
            for i, e in enumerate(_events(session, job.id, after))
        ],
        "status_history": status_history(session, job.id),
        "epochs": epoch_series(session, job.id),
    }


@router.get("/ui/jobs/{job_id}/live")
def job_live_json(
    session: SessionDep,
    viewer: ViewerDep,
    settings: SettingsDep,
    job_id: str,
    after: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    if viewer is None:
        return JSONResponse(error_body("unauthenticated", "log in at /login"), status_code=401)
    job = project_job(session, viewer, job_id)
    if job is None:
        return JSONResponse(error_body("not_found", f"job {job_id!r} not found", "job_id"), status_code=404)
    return JSONResponse(job_live(session, settings, job, after), headers={"Cache-Control": "no-store"})


@router.get("/ui/jobs/{job_id}/events/stream")
async def job_events_stream(request: Request, settings: SettingsDep, job_id: str) -> Response:
    """The job's events as server-sent events (what ``GET /v1/jobs/{id}/events/stream`` sends), for
    the job page's EventSource: the login cookie instead of a bearer token; 401/404 as ``/live``."""
    raw = request.cookies.get(COOKIE)

    def authorise(session: Session) -> tuple[bool, bool]:
        token = lookup_token(session, raw)
        if token is None or not raw:
            return False, False
        return True, project_job(session, Viewer(token, raw), job_id) is not None

    viewer_ok, found = await event_stream.with_session(request, settings, authorise)
    if not viewer_ok:
        return JSONResponse(error_body("unauthenticated", "log in at /login"), status_code=401)
    if not found:
        return JSONResponse(error_body("not_found", f"job {job_id!r} not found", "job_id"), status_code=404)
    try:
        start = event_stream.parse_after(
            request.headers.get("last-event-id"), request.query_params.get("after")
        )
    except ApiError as exc:
        return JSONResponse(error_body(exc.code, exc.message, exc.param), status_code=exc.status_code)
    return event_stream.open_stream(request, settings, job_id, start, named=False)


# ---------------------------------------------------------------------------------------- training charts

TRAINING_PANELS = (
    ("loss", "total loss"),
    ("ce", "cross-entropy"),
    ("zs", "zero-shot surrogate"),
    ("lmc", "path term"),
    ("val_acc", "validation accuracy (%)"),
)


def _training_log(settings: Settings, artifacts: list[Artifact]) -> list[dict[str, Any]]:
    """The per-epoch records of a finished job's report.json (empty when there is none)."""
    art = next((a for a in artifacts if a.name == "report.json"), None)
    if art is None or (art.bytes or 0) > REPORT_MAX_BYTES:
        return []
    try:
        report = json.loads(get_store(settings).get_bytes(art.key))
    except (ArtifactNotFound, OSError, ValueError):
        logger.warning("report.json of artifact %s is unreadable", art.key, exc_info=True)
        return []
    rows = report.get("training") if isinstance(report, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def training_charts(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One chart per training quantity that has finite values: its points (drawn by charts.js with a y
    range that does not blow small changes up) and the numbers its caption states."""
    charts = []
    for key, title in TRAINING_PANELS:
        pts = [
            [float(r.get("epoch", i)), float(v)]
            for i, r in enumerate(rows)
            if isinstance(v := r.get(key), int | float) and not isinstance(v, bool) and math.isfinite(v)
        ]
        if not pts:
            continue
        ys = [p[1] for p in pts]
        charts.append(
            {"key": key, "title": title, "points": pts, "first": ys[0], "last": ys[-1], "min": min(ys)}
            | {"max": max(ys)}
        )
    return charts


# ------------------------------------------------------------------------------------------------ pages


@router.get("/jobs/{job_id}")
def job_detail(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    settings: SettingsDep,
    job_id: str,
    annotate_error: Annotated[str, Query(max_length=500)] = "",
) -> Response:
    if viewer is None:
        return to_login(request)
    job = project_job(session, viewer, job_id)
    if job is None:
        return not_found(request, viewer, f"job {job_id}")
    artifacts = job_artifacts(session, job.id)
    events, events_total = _latest_events(session, job.id)
    return render(
        request,
        "job.html",
        viewer,
        job=job,
        artifacts=artifacts,
        artifact_names={a.name for a in artifacts},
        events=events,
        events_total=events_total,
        first_event_seq=events_total - len(events) + 1,
        status_history=status_history(session, job.id),
        epochs=epoch_series(session, job.id),
        annotate_error=annotate_error,
        last_event_id=events[-1].id if events else 0,
        dataset=session.get(Dataset, job.dataset_id),
        checkpoint=session.get(Checkpoint, job.checkpoint_id),
        queue=_queue_facts(session, settings, job),
        training=training_charts(_training_log(settings, artifacts)) if job.status == "succeeded" else [],
    )


@router.post("/jobs/{job_id}/annotate")
async def annotate_job(request: Request, session: SessionDep, viewer: ViewerDep, job_id: str) -> Response:
    """The job page's name / tags / notes form: the same validation as ``PATCH /v1/jobs/{id}``."""
    if viewer is None:
        return to_login(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if not check_csrf(viewer, form.get("csrf")):
        return Response("bad CSRF token", status_code=403)
    job = project_job(session, viewer, job_id)
    if job is None:
        return not_found(request, viewer, f"job {job_id}")
    tags = [t for t in (form.get("tags") or "").split(",") if t.strip()]
    try:
        body = JobUpdate(name=form.get("name") or None, tags=tags, notes=form.get("notes") or None)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return RedirectResponse(
            f"/jobs/{quote(job.id)}?" + urlencode({"annotate_error": f"{where}: {message}"}), status_code=303
        )
    job_service.update_job(session, job, body)
    return RedirectResponse(f"/jobs/{quote(job.id)}#annotations", status_code=303)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, session: SessionDep, viewer: ViewerDep, job_id: str) -> Response:
    if viewer is None:
        return to_login(request)
    form = await request.form()
    csrf = form.get("csrf")
    if not check_csrf(viewer, csrf if isinstance(csrf, str) else None):
        return Response("bad CSRF token", status_code=403)
    job = project_job(session, viewer, job_id)
    if job is None:
        return not_found(request, viewer, f"job {job_id}")
    if job.status not in TERMINAL:
        try:
            job_service.cancel_job(session, viewer.project_id, job.id)
        except ApiError as exc:  # finished meanwhile: the page shows the final status
            logger.info("dashboard cancel of %s refused: %s", job.id, exc.message)
    return RedirectResponse(f"/jobs/{quote(job.id)}", status_code=303)


@router.get("/jobs/{job_id}/artifacts/{name}")
def job_artifact(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep, job_id: str, name: str
) -> Response:
    if viewer is None:
        return to_login(request)
    job = project_job(session, viewer, job_id)
    artifact = (
        session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name))
        if job is not None
        else None
    )
    if artifact is None:
        return not_found(request, viewer, f"artifact {name}")
    store = get_store(settings)
    try:
        size = store.size(artifact.key)
    except ArtifactNotFound:
        return not_found(request, viewer, f"artifact {name}")
    inline = artifact.media_type.startswith(("image/", "text/html"))
    disposition = "inline" if inline else "attachment"
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f'{disposition}; filename="{quote(artifact.name)}"',
        "X-Content-Type-Options": "nosniff",
    }
    if artifact.media_type.startswith("text/html"):
        # The report is self-contained: no scripts, no external loads.
        headers["Content-Security-Policy"] = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return StreamingResponse(store.iter_chunks(artifact.key), media_type=artifact.media_type, headers=headers)
