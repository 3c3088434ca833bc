from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from mergetune.api.deps import IdempotencyKeyHeader, PageDep, PrincipalDep, SessionDep, SettingsDep, StoreDep
from mergetune.api.errors import UnsupportedMediaType, error_responses, from_pydantic
from mergetune.api.schemas import FreedRead, SweepCreate, SweepList, SweepRead
from mergetune.api.services import lifecycle
from mergetune.api.services.idempotency import create_once
from mergetune.api.services.sweeps import (
    cancel_sweep,
    create_sweep,
    get_sweep,
    render_report,
    sweep_read,
    sweep_report,
)
from mergetune.api.uploads import ReceivedUpload, multipart_schema, receive_multipart
from mergetune.common import repositories as repo

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], responses=error_responses(401, 422))


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """The JSON schema with its local ``#/$defs/...`` references replaced by their definitions (the
    request body is not a route parameter, so its models are not among the document's components)."""
    if isinstance(schema, dict):
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline(v, defs) for k, v in schema.items() if k != "$defs"}
    if isinstance(schema, list):
        return [_inline(v, defs) for v in schema]
    return schema


_SPEC_SCHEMA = SweepCreate.model_json_schema()
_SPEC_SCHEMA = _inline(_SPEC_SCHEMA, _SPEC_SCHEMA.get("$defs", {}))

_CREATE_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": _SPEC_SCHEMA},
            "multipart/form-data": multipart_schema(
                "zip or tar(.gz) of a CoOp output tree: <dataset>/shots_<K>/"
                "<Trainer>/<cfg>/seed<N>/prompt_learner/model.pth.tar-<E>",
                spec={"type": "string", "description": "SweepCreate as JSON, without cells"},
            ),
        },
    }
}


def _spec(raw: str | bytes) -> SweepCreate:
    try:
        return SweepCreate.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise from_pydantic(exc) from None


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SweepRead,
    openapi_extra=_CREATE_SCHEMA,
    responses=error_responses(400, 401, 404, 409, 413, 415, 422, 503),
    summary="Create a sweep: cells (checkpoint, dataset, seed) or a CoOp output tree, x an optional grid",
)
async def post_sweep(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    settings: SettingsDep,
    session: SessionDep,
    store: StoreDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> SweepRead:
    archive: ReceivedUpload | None = None
    try:
        ctype = request.headers.get("content-type", "").lower()
        if ctype.startswith("multipart/"):
            archive = await receive_multipart(
                request, tmp_dir=settings.tmp_dir, max_bytes=settings.MAX_UPLOAD_BYTES
            )
            body = _spec(archive.fields.get("spec") or "{}")
        elif ctype.split(";")[0].strip() == "application/json":
            body = _spec(await request.body())  # JSON bodies are size-capped before any route runs
        else:
            raise UnsupportedMediaType(
                "send the sweep as application/json, or multipart/form-data with a `file` (a CoOp tree)",
                param="file",
            )
        sweep, created = await create_once(
            request.app.state, principal.project_id, idempotency_key,
            create_sweep, session, settings, store, principal.project_id, body, archive=archive,
        )  # fmt: skip
    finally:
        if archive is not None:
            archive.cleanup()
    if not created:
        response.status_code = status.HTTP_200_OK
    return await run_in_threadpool(sweep_read, session, sweep)


@router.get("", response_model=SweepList)
def list_sweeps(principal: PrincipalDep, session: SessionDep, page: PageDep) -> SweepList:
    p = repo.list_sweeps(session, principal.project_id, limit=page.limit, after=page.after)
    return SweepList(
        data=[sweep_read(session, s) for s in p.items], has_more=p.has_more, next_cursor=p.next_cursor
    )


@router.get("/{sweep_id}", response_model=SweepRead, responses=error_responses(401, 404))
def read_sweep(sweep_id: str, principal: PrincipalDep, session: SessionDep) -> SweepRead:
    return sweep_read(session, get_sweep(session, principal.project_id, sweep_id))


@router.delete("/{sweep_id}", response_model=FreedRead, responses=error_responses(401, 404, 409))
def delete_sweep(sweep_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep) -> FreedRead:
    """The sweep, its jobs and every file they stored (the answer says how many bytes); 409 while any
    of its jobs has not finished (cancel the sweep first)."""
    return lifecycle.delete_sweep(session, store, principal.project_id, sweep_id)


@router.post("/{sweep_id}/cancel", response_model=SweepRead, responses=error_responses(401, 404, 409))
def post_cancel(sweep_id: str, principal: PrincipalDep, session: SessionDep) -> SweepRead:
    """Cancels every unfinished job of the sweep; 409 when all have finished."""
    return sweep_read(session, cancel_sweep(session, principal.project_id, sweep_id))


def _report(
    request: Request, sweep_id: str, fmt: str, principal: PrincipalDep, session: SessionDep, store: StoreDep
) -> Response:
    sweep = get_sweep(session, principal.project_id, sweep_id)
    job_href = str(request.base_url) + "jobs/"  # the dashboard's job pages, absolute in a downloaded file
    body, media_type = render_report(sweep_report(session, store, sweep), fmt, job_href)
    headers = {}
    if fmt != "json":
        headers["Content-Disposition"] = f'attachment; filename="{sweep.id}-report.{fmt}"'
    return Response(body, media_type=media_type, headers=headers)


_REPORT_RESPONSES = {
    200: {
        "content": {
            "application/json": {},
            "text/csv": {},
            "application/x-tex": {},
            "text/plain": {},
            "text/html": {},
        },
        "description": "The base-to-novel table (selected grid point), the whole grid, every job",
    },
    **error_responses(401, 404),
}


@router.get("/{sweep_id}/report", responses=_REPORT_RESPONSES, response_class=Response)
def report_json(
    request: Request, sweep_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep
) -> Response:
    return _report(request, sweep_id, "json", principal, session, store)


@router.get("/{sweep_id}/report.{fmt}", responses=_REPORT_RESPONSES, response_class=Response)
def report_as(
    request: Request, sweep_id: str, fmt: str, principal: PrincipalDep, session: SessionDep, store: StoreDep
) -> Response:
    """``fmt``: json | csv | tex | txt | html."""
    return _report(request, sweep_id, fmt, principal, session, store)
