from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response, status
from fastapi.responses import FileResponse, StreamingResponse

from mergetune.api.deps import (
    IdempotencyKeyHeader,
    PageDep,
    PrincipalDep,
    SessionDep,
    SettingsDep,
    StoreDep,
    get_principal,
)
from mergetune.api.errors import NotFound, Unprocessable, error_responses
from mergetune.api.schemas import (
    ArtifactList,
    ArtifactRead,
    EventList,
    EventRead,
    FreedRead,
    JobCreate,
    JobList,
    JobRead,
    JobUpdate,
)
from mergetune.api.services import event_stream, lifecycle
from mergetune.api.services.job_view import job_answer
from mergetune.api.services.jobs import cancel_job, create_job, event_seq_before, job_read, update_job
from mergetune.common import repositories as repo
from mergetune.common.models import Job, JobStatus
from mergetune.common.storage import LocalStore

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=error_responses(401, 422))


def _get_job(session: SessionDep, project_id: str, job_id: str) -> Job:
    job = repo.get_job(session, project_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found", param="id")
    return job


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=JobRead,
    responses=error_responses(401, 404, 409, 422, 503),
    summary="Create a MergeTune recovery job",
)
def post_job(
    body: JobCreate,
    response: Response,
    principal: PrincipalDep,
    settings: SettingsDep,
    session: SessionDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> JobRead:
    job, created = create_job(session, settings, principal.project_id, body, idempotency_key=idempotency_key)
    if not created:
        response.status_code = status.HTTP_200_OK
    return job_read(session, settings, job)


@router.get("", response_model=JobList, responses=error_responses(401, 422))
def list_jobs(
    principal: PrincipalDep,
    settings: SettingsDep,
    session: SessionDep,
    page: PageDep,
    status_: Annotated[JobStatus | None, Query(alias="status")] = None,
    dataset_id: Annotated[str | None, Query(max_length=40)] = None,
) -> JobList:
    p = repo.list_jobs(
        session,
        principal.project_id,
        limit=page.limit,
        after=page.after,
        status=status_.value if status_ else None,
        dataset_id=dataset_id,
    )
    return JobList(
        data=[job_read(session, settings, j) for j in p.items], has_more=p.has_more, next_cursor=p.next_cursor
    )


@router.get(
    "/{job_id}",
    response_model=JobRead,
    responses={
        304: {"description": "Not modified (If-None-Match named the ETag)"},
        **error_responses(401, 404),
    },
)
async def get_job(job_id: str, request: Request) -> Response:
    """The job, with an `ETag`: `If-None-Match` naming it answers 304 while the object is unchanged."""
    return await job_answer(request, job_id)  # the most polled route: no dependencies (job_view)


@router.patch("/{job_id}", response_model=JobRead, responses=error_responses(401, 404, 422))
def patch_job(
    job_id: str, body: JobUpdate, principal: PrincipalDep, settings: SettingsDep, session: SessionDep
) -> JobRead:
    """Rename a job, set its tags or its notes (any job, in any status)."""
    job = update_job(session, _get_job(session, principal.project_id, job_id), body)
    return job_read(session, settings, job)


@router.delete("/{job_id}", response_model=FreedRead, responses=error_responses(401, 404, 409))
def delete_job(job_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep) -> FreedRead:
    """A finished job, its events, artifacts and every file it stored (the answer says how many bytes);
    409 while it is queued or running (cancel it first) or when it is a sweep's cell."""
    return lifecycle.delete_job(session, store, principal.project_id, job_id)


@router.post("/{job_id}/cancel", response_model=JobRead, responses=error_responses(401, 404, 409))
def post_cancel(job_id: str, principal: PrincipalDep, settings: SettingsDep, session: SessionDep) -> JobRead:
    """queued -> cancelled at once; running -> cancelling (the worker stops at its next step);
    finished jobs -> 409."""
    job = cancel_job(session, principal.project_id, job_id)
    return job_read(session, settings, job)


@router.get("/{job_id}/events", response_model=EventList, responses=error_responses(401, 404, 422))
def get_events(
    job_id: str,
    principal: PrincipalDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[
        str | None, Query(max_length=20, description="Last event id seen (events are oldest first)")
    ] = None,
) -> EventList:
    job = _get_job(session, principal.project_id, job_id)
    after_id: int | None = None
    if after:
        if not after.isdigit():
            raise Unprocessable("after must be an event id", param="after")
        after_id = int(after)
    p = repo.list_events(session, job.id, limit=limit, after=after_id)
    first = event_seq_before(session, job.id, after_id) + 1
    return EventList(
        data=[
            EventRead.model_validate(e).model_copy(update={"seq": first + i}) for i, e in enumerate(p.items)
        ],
        has_more=p.has_more,
        next_cursor=str(p.items[-1].id) if p.has_more and p.items else None,
    )


@router.get(
    "/{job_id}/events/stream",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "The job's events as server-sent events"},
        **error_responses(401, 404, 422, 503),
    },
    summary="Follow a job's events as server-sent events",
)
async def stream_events(
    job_id: str,
    request: Request,
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    last_event_id: Annotated[
        str | None, Header(alias="Last-Event-ID", description="seq of the last event received")
    ] = None,
    after: Annotated[
        str | None, Query(max_length=20, description="seq of the last event seen (without Last-Event-ID)")
    ] = None,
) -> StreamingResponse:
    """`text/event-stream`: every event of the job as `id: <seq>`, `event: <type>`, `data: <the
    object GET /events gives>`, from after `Last-Event-ID` (or `after`), else from the first; `event:
    job` with the status and progress whenever they change; `: keep-alive` every 15 s; `event: end`
    with the terminal status, then the stream closes. 503 `too_many_streams` (Retry-After) when this
    server process already holds MAX_EVENT_STREAMS streams."""

    def authorise(session: SessionDep) -> str:
        principal = get_principal(session, authorization)
        return _get_job(session, principal.project_id, job_id).id

    found = await event_stream.with_session(request, settings, authorise)
    start = event_stream.parse_after(last_event_id, after)
    return event_stream.open_stream(request, settings, found, start)


@router.get("/{job_id}/artifacts", response_model=ArtifactList, responses=error_responses(401, 404))
def list_artifacts(job_id: str, principal: PrincipalDep, session: SessionDep) -> ArtifactList:
    job = _get_job(session, principal.project_id, job_id)
    return ArtifactList(data=[ArtifactRead.model_validate(a) for a in repo.list_artifacts(session, job.id)])


@router.get(
    "/{job_id}/artifacts/{name}",
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The artifact bytes"},
        **error_responses(401, 404),
    },
    response_class=Response,
)
def download_artifact(
    job_id: str, name: str, principal: PrincipalDep, session: SessionDep, store: StoreDep
) -> Response:
    job = _get_job(session, principal.project_id, job_id)
    art = repo.get_artifact(session, job.id, name)
    if art is None:
        raise NotFound(f"job {job.id} has no artifact {name!r}", param="name")
    headers = {"ETag": f'"{art.sha256}"', "X-Content-SHA256": art.sha256}
    if isinstance(store, LocalStore):
        return FileResponse(
            store.local_path(art.key), media_type=art.media_type, filename=art.name, headers=headers
        )
    headers["Content-Disposition"] = f'attachment; filename="{art.name}"'
    headers["Content-Length"] = str(art.bytes)
    return StreamingResponse(store.iter_chunks(art.key), media_type=art.media_type, headers=headers)
