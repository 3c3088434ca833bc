"""A job's events as server-sent events (``text/event-stream``), shared by ``GET
/v1/jobs/{id}/events/stream`` (bearer token) and the dashboard's ``/ui/jobs/{id}/events/stream``
(login cookie).

Nothing of a stream lives in the process beyond its own position: every POLL_SECONDS the generator
reads the job's status and its new event rows from Postgres with a fresh, short-lived session (a
threadpool hop holding a database slot for a few milliseconds), so any API process can serve any
stream, whichever process or worker wrote the rows, and a waiting stream holds neither a
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

HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no", "Connection": "keep-alive"}
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
    return _Look(row.status, row.progress, [EventRead.model_validate(e) for e in session.scalars(query)])


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
    while True:
        look = await with_session(request, settings, lambda s: _look(s, job_id, pos.last_id))
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
        if time.monotonic() - last_sent >= HEARTBEAT_SECONDS:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)


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
