"""A job's events as server-sent events (``text/event-stream``), shared by ``GET
/v1/jobs/{id}/events/stream`` (bearer token) and the dashboard's ``/ui/jobs/{id}/events/stream``
(login cookie).

Nothing of a stream lives in the process beyond its own position: every POLL_SECONDS one
:class:`JobWatch` per process asks Postgres, with a fresh short-lived session, which of the streamed
jobs changed (status, progress or a newer event row: two queries for all of them), and only their
streams read their new rows (again a short session each). So any API process can serve any stream,
whichever process or worker wrote the rows, and a waiting stream holds neither a database
connection nor a thread. What a stream sends:

- ``retry: RETRY_MS`` once, first;
- each event row as ``id: <seq>`` / ``event: <type>`` / ``data: <the EventRead JSON>``, in seq order
  (a row whose type is ``job`` or ``end`` is sent as ``event: event``; the dashboard's stream sends
  rows without ``event:``, as plain messages);
- ``event: job`` (no id) with ``{"id", "status", "progress"}``: first, then whenever the status or
  the progress changes;
- ``: keep-alive`` comments after HEARTBEAT_SECONDS without anything else;
- ``event: end`` with ``{"id", "status"}`` once the job is in a terminal status and every event
  committed by then was sent; then the response ends.

At most ``Settings.MAX_EVENT_STREAMS`` streams are open in one process (:class:`StreamSlots`; the
gauge ``mergetune_event_streams_open`` counts them); beyond it the route answers 503 with
``Retry-After``. A client that goes away ends its stream at once (the response is cancelled on
``http.disconnect``) and frees its slot.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import StreamingResponse
from prometheus_client import Gauge
from sqlalchemy import func, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from mergetune.api.deps import _session_slots
from mergetune.api.errors import ServiceUnavailable, Unprocessable
from mergetune.api.schemas import EventRead
from mergetune.common.db import get_sessionmaker
from mergetune.common.models import TERMINAL_STATUSES, Job, JobEvent
from mergetune.common.settings import Settings

POLL_SECONDS = 0.5  # how often a stream looks for new rows
HEARTBEAT_SECONDS = 15.0  # a comment after this long without anything else (keeps proxies from closing)
RETRY_MS = 2000  # the reconnection delay the stream asks EventSource for
BATCH = 500  # event rows read per look; a full batch is followed at once by the next
RETRY_AFTER = 5  # Retry-After (s) of the 503 when every slot is taken

log = logging.getLogger(__name__)

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_TERMINAL = frozenset(s.value for s in TERMINAL_STATUSES)

T = TypeVar("T")


# ------------------------------------------------------------------------------------------------ slots


class StreamSlots:
    """The open streams of one process, at most ``limit``."""

    def __init__(self, limit: int, gauge: Gauge | None) -> None:
        self.limit = limit
        self.open = 0
        self._gauge = gauge

    def take(self) -> bool:
        if self.open >= self.limit:
            return False
        self.open += 1
        if self._gauge is not None:
            self._gauge.set(self.open)
        return True

    def release(self) -> None:
        self.open = max(0, self.open - 1)
        if self._gauge is not None:
            self._gauge.set(self.open)


def stream_slots(request: Request) -> StreamSlots:
    """This app's slots, made on first use (their gauge in the app's metrics registry)."""
    state = request.app.state
    slots: StreamSlots | None = getattr(state, "event_stream_slots", None)
    if slots is None:
        metrics = getattr(state, "metrics", None)
        gauge = None
        if metrics is not None:
            gauge = Gauge(
                "mergetune_event_streams_open",
                "Server-sent event streams of job events open in this API process",
                registry=metrics.registry,
            )
        slots = state.event_stream_slots = StreamSlots(state.settings.MAX_EVENT_STREAMS, gauge)
    return slots


class _SlotResponse(StreamingResponse):
    """A streaming response that gives its slot back however it ends (finished, failed, cancelled by
    a disconnect, or never started because the client left first)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream", headers=HEADERS)
        self._release = release
        self._released = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            if not self._released:
                self._released = True
                self._release()


# ------------------------------------------------------------------------------------------- database


async def with_session(request: Request, settings: Settings, fn: Callable[[Session], T]) -> T:
    """``fn(session)`` in the threadpool with a fresh session, closed at once; it waits (without a
    thread) for one of the process's database slots like every request does."""

    def run() -> T:
        session = get_sessionmaker(settings.DATABASE_URL)()
        try:
            return fn(session)
        finally:
            try:
                session.rollback()
            finally:
                session.close()

    async with _session_slots(request):
        return await run_in_threadpool(run)


def parse_after(last_event_id: str | None, after: str | None) -> int:
    """The seq to start after: the ``Last-Event-ID`` header (a reconnecting EventSource), else the
    ``after`` query, else 0 (from the first event). 422 naming the field for anything but digits."""
    for name, value in (("Last-Event-ID", last_event_id), ("after", after)):
        if value is None or value.strip() == "":
            continue
        value = value.strip()
        if not value.isdigit() or len(value) > 18:
            raise Unprocessable(f"{name} must be an event seq (a whole number >= 0)", param=name)
        return int(value)
    return 0


@dataclass
class _Position:
    last_id: int  # the id of the last event sent (0: none)
    last_seq: int  # its seq


def _start(session: Session, job_id: str, after_seq: int) -> _Position:
    """The position after the job's ``after_seq``-th event (after its last one when it has fewer)."""
    if after_seq <= 0:
        return _Position(0, 0)
    query = (
        select(JobEvent.id)
        .where(JobEvent.job_id == job_id)
        .order_by(JobEvent.id)
        .offset(after_seq - 1)
        .limit(1)
    )
    event_id = session.scalar(query)
    if event_id is not None:
        return _Position(int(event_id), after_seq)
    count, last = session.execute(
        select(func.count(), func.max(JobEvent.id)).where(JobEvent.job_id == job_id)
    ).one()
    return _Position(int(last or 0), int(count or 0))


@dataclass
class _Look:
    status: str | None  # None: the job is gone
    progress: dict[str, Any] | None
    events: list[EventRead]  # read while the session was open (without their seq)
    seq_before: int = 0  # how many of the job's events have ids up to the last one sent


def _look(session: Session, job_id: str, after_id: int) -> _Look:
    # The status first: events committed with (or before) a terminal status are then visible below.
    row = session.execute(select(Job.status, Job.progress).where(Job.id == job_id)).first()
    if row is None:
        return _Look(None, None, [])
    query = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after_id)
        .order_by(JobEvent.id)
        .limit(BATCH)
    )
    events = [EventRead.model_validate(e) for e in session.scalars(query)]
    before = 0
    if events and after_id:
        # Counted, not carried: an event committed late with a smaller id (two writers at once) then
        # shows as a gap in the stream's seq while every seq stays the one GET /events gives.
        count = select(func.count()).where(JobEvent.job_id == job_id, JobEvent.id <= after_id)
        before = int(session.scalar(count) or 0)
    return _Look(row.status, row.progress, events, before)


# ---------------------------------------------------------------------------------------- the watcher


class JobWatch:
    """One look at Postgres every POLL_SECONDS for every job this process streams: two small queries
    (each job's status and progress, and its newest event id) however many streams are open. A job
    whose answer differs from the last look wakes its streams, which then read their new rows; idle
    streams cost no queries of their own. It runs while some stream is open."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._waiters: dict[str, set[asyncio.Event]] = {}
        self._seen: dict[str, tuple[Any, ...] | None] = {}
        self._task: asyncio.Task[None] | None = None
        self.looks = 0  # how many looks it took (tests and benchmarks read it)

    def subscribe(self, job_id: str) -> asyncio.Event:
        event = asyncio.Event()
        self._waiters.setdefault(job_id, set()).add(event)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())
        return event

    def unsubscribe(self, job_id: str, event: asyncio.Event) -> None:
        waiting = self._waiters.get(job_id)
        if waiting is not None:
            waiting.discard(event)
            if not waiting:
                del self._waiters[job_id]
                self._seen.pop(job_id, None)

    async def _run(self) -> None:
        settings: Settings = self._app.state.settings
        while self._waiters:
            await asyncio.sleep(POLL_SECONDS)
            ids = sorted(self._waiters)
            if not ids:
                break
            try:
                async with _app_session_slots(self._app):
                    now = await run_in_threadpool(_versions, settings.DATABASE_URL, ids)
            except Exception:  # noqa: BLE001 - the streams read for themselves and report the failure
                log.warning("event streams: the look at the database failed", exc_info=True)
                now = {}
            self.looks += 1
            for job_id in ids:
                version = now.get(job_id)
                if job_id in self._seen and self._seen[job_id] == version and version is not None:
                    continue
                if job_id in self._waiters:
                    self._seen[job_id] = version
                    for event in self._waiters[job_id]:
                        event.set()


def _versions(url: str, ids: list[str]) -> dict[str, tuple[Any, ...]]:
    """(status, progress, newest event id) of each job; a job that is gone is left out."""
    session = get_sessionmaker(url)()
    try:
        out: dict[str, tuple[Any, ...]] = {}
        jobs = session.execute(select(Job.id, Job.status, Job.progress).where(Job.id.in_(ids)))
        for job_id, status, progress in jobs:
            out[job_id] = (status, json.dumps(progress, sort_keys=True, default=str), 0)
        newest = session.execute(
            select(JobEvent.job_id, func.max(JobEvent.id))
            .where(JobEvent.job_id.in_(ids))
            .group_by(JobEvent.job_id)
        )
        for job_id, last in newest:
            if job_id in out:
                out[job_id] = (*out[job_id][:2], int(last))
        return out
    finally:
        try:
            session.rollback()
        finally:
            session.close()


def job_watch(request: Request) -> JobWatch:
    state = request.app.state
    watch: JobWatch | None = getattr(state, "event_stream_watch", None)
    if watch is None:
        watch = state.event_stream_watch = JobWatch(request.app)
    return watch


def _app_session_slots(app: Any) -> asyncio.Semaphore:
    """The process's database slots (:data:`mergetune.api.deps.MAX_DB_SESSIONS`), as requests take them."""
    return _session_slots(_AppOnly(app))  # type: ignore[arg-type]


@dataclass(frozen=True)
class _AppOnly:
    app: Any


# ------------------------------------------------------------------------------------------ the stream


def sse(data: str | None = None, *, event: str | None = None, id: int | None = None) -> str:
    """One server-sent event; every line of ``data`` becomes its own ``data:`` line."""
    lines = []
    if id is not None:
        lines.append(f"id: {id}")
    if event is not None:
        lines.append(f"event: {event}")
    for line in (data or "").split("\n"):
        lines.append(f"data: {line}")
    return "\n".join(lines) + "\n\n"


#: Names of the stream's own messages: an event row of such a type is sent as ``event: event``.
RESERVED = frozenset({"job", "end"})


def _event_message(event: EventRead, seq: int, named: bool) -> str:
    body = event.model_copy(update={"seq": seq}).model_dump_json()
    if not named:
        return sse(body, id=seq)  # a plain "message": what EventSource.onmessage receives
    name = event.type if event.type and event.type not in RESERVED else "event"
    return sse(body, event=name, id=seq)


async def job_events(
    request: Request, settings: Settings, job_id: str, after_seq: int, *, named: bool = True
) -> AsyncIterator[str]:
    """The stream of the (already authorised) job ``job_id`` after its event ``after_seq``; each row
    named by its type (``named``) or sent as a plain message (the dashboard's one listener)."""
    pos = await with_session(request, settings, lambda s: _start(s, job_id, after_seq))
    yield f"retry: {RETRY_MS}\n\n"
    last_sent = time.monotonic()
    shown: tuple[str | None, str] | None = None
    watch = job_watch(request)
    changed = watch.subscribe(job_id)
    try:
        while True:
            changed.clear()  # before the read: a change committed during it wakes the next wait
            look = await with_session(request, settings, lambda s: _look(s, job_id, pos.last_id))
            if look.events:
                pos.last_seq = look.seq_before
            for event in look.events:
                pos.last_seq += 1
                pos.last_id = event.id
                yield _event_message(event, pos.last_seq, named)
                last_sent = time.monotonic()
            if look.status is None:
                yield sse(json.dumps({"id": job_id, "status": None}), event="end")
                return
            state = (look.status, json.dumps(look.progress, sort_keys=True, default=str))
            if state != shown:
                shown = state
                body = {"id": job_id, "status": look.status, "progress": look.progress or {}}
                yield sse(json.dumps(body, default=str), event="job")
                last_sent = time.monotonic()
            if len(look.events) >= BATCH:
                continue  # more rows are waiting
            if look.status in _TERMINAL:
                yield sse(json.dumps({"id": job_id, "status": look.status}), event="end")
                return
            while True:  # until the watcher sees the job change; a comment every HEARTBEAT_SECONDS
                quiet = HEARTBEAT_SECONDS - (time.monotonic() - last_sent)
                try:
                    await asyncio.wait_for(changed.wait(), timeout=max(0.0, quiet))
                    break
                except TimeoutError:
                    yield ": keep-alive\n\n"
                    last_sent = time.monotonic()
    finally:
        watch.unsubscribe(job_id, changed)


def open_stream(
    request: Request, settings: Settings, job_id: str, after_seq: int, *, named: bool = True
) -> StreamingResponse:
    """The response of an authorised stream request: takes one of the process's slots (503 with
    ``Retry-After`` when none is free) and gives it back when the stream ends in any way."""
    slots = stream_slots(request)
    if not slots.take():
        raise ServiceUnavailable(
            f"this server already streams {slots.limit} event streams; retry later or poll "
            "GET /v1/jobs/{id}/events",
            code="too_many_streams",
            headers={"Retry-After": str(RETRY_AFTER)},
        )
    return _SlotResponse(job_events(request, settings, job_id, after_seq, named=named), slots.release)
