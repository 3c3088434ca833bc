"""``GET /v1/jobs/{id}``, the most polled answer (the dashboard, ``mergetune job wait``, clients' own
loops): the job's row read with one SELECT and rendered straight to JSON bytes in one worker thread;
the answer carries an ETag, and ``If-None-Match`` with it is answered ``304 Not Modified``."""

from __future__ import annotations

import asyncio
import hashlib
import weakref
from types import SimpleNamespace
from typing import Any, cast

from fastapi import Request, Response
from sqlalchemy import Engine, inspect, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from mergetune.api.deps import principal_of
from mergetune.api.errors import NotFound
from mergetune.api.services.jobs import job_read
from mergetune.common.db import get_sessionmaker
from mergetune.common.models import Job
from mergetune.common.settings import Settings

#: Job reads of one process running at once (the others wait in the event loop, holding no thread): below
#: the engine's pool of 10 kept connections, so that a burst of polls neither opens and closes extra
#: connections (a Postgres process each) nor crowds the request threads.
READ_SLOTS = 8

_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = weakref.WeakKeyDictionary()


def _read_slots() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slots = _slots.get(loop)
    if slots is None:
        slots = _slots[loop] = asyncio.Semaphore(READ_SLOTS)
    return slots


def _columns() -> list[Any]:
    global _COLUMNS
    if _COLUMNS is None:  # every column of the job, labelled with its attribute name (metadata_, ...)
        _COLUMNS = [getattr(Job, a.key).label(a.key) for a in inspect(Job).column_attrs]
    return _COLUMNS


_COLUMNS: list[Any] | None = None


def read_job(engine: Engine, project_id: str, job_id: str) -> Job | None:
    """The job's row as a plain object with the model's attribute names: one SELECT on a connection of
    its own in autocommit (no BEGIN, no ROLLBACK, no ORM bookkeeping; about half the work of loading
    the mapped object), read only."""
    stmt = select(*_columns()).where(Job.id == job_id, Job.project_id == project_id)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        row = conn.execute(stmt).mappings().first()
    return cast(Job, SimpleNamespace(**row)) if row is not None else None


def job_json(session: Session, settings: Settings, project_id: str, job_id: str) -> bytes:
    """The job object as JSON (what ``response_model=JobRead`` would send); 404 naming ``id``. The
    session reads only what the per-process caches miss (the queue plan, a queued job's estimate)."""
    try:
        job = read_job(session.get_bind(), project_id, job_id)  # type: ignore[arg-type]
        if job is None:
            raise NotFound(f"job {job_id!r} not found", param="id")
        read = job_read(session, settings, job)
    finally:
        if session.in_transaction():
            session.rollback()  # read only: end the transaction here, in this thread
    return read.__pydantic_serializer__.to_json(read, by_alias=True)


def etag_of(body: bytes) -> str:
    return '"' + hashlib.blake2b(body, digest_size=16).hexdigest() + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    if not if_none_match:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


async def job_answer(request: Request, job_id: str) -> Response:
    """The whole request without FastAPI's dependencies (about a third of its work here): the settings
    from the app, the token through :func:`mergetune.api.deps.principal_of`, a session of its own for
    what the per-process caches miss, closed before answering."""
    settings: Settings = request.app.state.settings
    session = get_sessionmaker(settings.DATABASE_URL)()
    try:
        principal = await principal_of(request.headers.get("authorization"), session)
        async with _read_slots():
            body = await run_in_threadpool(job_json, session, settings, principal.project_id, job_id)
    finally:
        if session.in_transaction():  # only after a refused token: a ROLLBACK, not in the event loop
            await run_in_threadpool(session.close)
        else:
            session.close()
    etag = etag_of(body)
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
