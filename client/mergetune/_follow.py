"""Following a job as it runs, written once for both clients (steps of :mod:`mergetune._requests`).

:func:`follow_stream` reads ``GET /v1/jobs/{id}/events/stream`` (server-sent events): it resumes
with ``Last-Event-ID`` after a dropped connection, so no event is lost or repeated, and gives up
(returning ``None``; the caller then polls) when the server has no stream (404, 405 or 501: an older
server) or when MAX_FAILURES connections in a row ended before any event arrived.
:func:`poll_events` is that polling for the events themselves.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from mergetune._requests import NETWORK_ERRORS, ApiError, Call, Close, Emit, Open, Read, Sleep, Step
from mergetune._sse import SSEParser

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "timed_out", "expired"})
#: Answers of a server without the stream route: fall back to polling at once.
NO_STREAM = frozenset({404, 405, 501})
#: Connections in a row that end (or fail) before any event: then fall back to polling.
MAX_FAILURES = 3
#: Seconds a read may wait for bytes; the server sends a keep-alive comment every 15 s.
READ_TIMEOUT = 45.0
#: Seconds before reconnecting when the stream asked for nothing else (its ``retry:``).
DEFAULT_RETRY = 1.0
MAX_BACKOFF = 10.0

Flow = Generator[Step, Any, Any]
OnUpdate = Callable[[dict[str, Any]], None] | None


@dataclass
class Followed:
    """How following ended: ``job`` the final job object (None: the stream was unavailable, poll
    instead) and ``seq`` the last event seq received."""

    job: dict[str, Any] | None
    seq: int


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


def _check(deadline: float | None, timeout: float | None, job: dict[str, Any]) -> None:
    if deadline is not None and time.monotonic() > deadline:
        raise TimeoutError(f"job {job['id']} still {job['status']} after {timeout} s")


def _read_timeout(deadline: float | None) -> float:
    if deadline is None:
        return READ_TIMEOUT
    return max(0.5, min(READ_TIMEOUT, deadline - time.monotonic() + 0.1))


def follow_stream(
    job: dict[str, Any],
    *,
    after: int = 0,
    timeout: float | None = None,
    on_update: OnUpdate = None,
    emit: bool = False,
) -> Flow:
    """Follow the stream of ``job`` (its current object) until its ``end`` event: ``on_update`` gets
    the job object whenever its status (fetched again) or progress (from the stream) changes; with
    ``emit`` every event object after seq ``after`` is emitted. Returns :class:`Followed`."""
    job_id = job["id"]
    path = f"/v1/jobs/{job_id}/events/stream"
    deadline = _deadline(timeout)
    seq, failures, retry = after, 0, DEFAULT_RETRY
    while True:
        _check(deadline, timeout, job)
        headers = {"Accept": "text/event-stream"}
        if seq:
            headers["Last-Event-ID"] = str(seq)
        try:
            handle = yield Open(Call("GET", path, headers=headers), read_timeout=_read_timeout(deadline))
        except ApiError as exc:
            if exc.status in NO_STREAM:
                return Followed(None, seq)
            if exc.status < 500 and exc.status != 429:
                raise  # 401, 422: polling would be refused too
            handle = None
        except NETWORK_ERRORS:
            handle = None
        ended: dict[str, Any] | None = None
        if handle is not None:
            parser = SSEParser()
            try:
                while ended is None:
                    chunk = yield Read(handle)
                    if not chunk:
                        break
                    for event in parser.feed(chunk):
                        failures = 0
                        if event.event == "end":
                            ended = json.loads(event.data)
                            break
                        if event.event == "job":
                            state = json.loads(event.data)
                            if state.get("status") != job["status"]:
                                job = yield Call("GET", f"/v1/jobs/{job_id}")
                            else:
                                job = {**job, "progress": state.get("progress") or {}}
                            if on_update is not None:
                                on_update(job)
                            continue
                        if event.id is not None and event.id.isdigit():
                            seq = int(event.id)
                        if emit:
                            yield Emit(json.loads(event.data))
                    _check(deadline, timeout, job)
            except NETWORK_ERRORS:
                pass  # dropped or silent: reconnect below
            yield Close(handle)
            if parser.retry is not None:
                retry = parser.retry / 1000
        if ended is not None:
            final = yield Call("GET", f"/v1/jobs/{job_id}")
            if on_update is not None:
                on_update(final)
            return Followed(final, seq)
        failures += 1
        if failures >= MAX_FAILURES:
            return Followed(None, seq)
        _check(deadline, timeout, job)
        yield Sleep(min(MAX_BACKOFF, retry * failures))


def poll_events(job_id: str, *, after: int = 0, interval: float = 1.0) -> Flow:
    """Emit the job's events after seq ``after`` by paging ``GET /v1/jobs/{id}/events`` every
    ``interval`` s until the job is finished; returns the final job object."""
    cursor: str | None = None
    count = 0
    while True:
        job = yield Call("GET", f"/v1/jobs/{job_id}")  # first: events written with its status are seen
        while True:
            page = yield Call("GET", f"/v1/jobs/{job_id}/events", params={"limit": 1000, "after": cursor})
            for event in page["data"]:
                count += 1
                if count > after:
                    yield Emit(event)
                cursor = str(event["id"])
            if not page.get("has_more"):
                break
        if job["status"] in TERMINAL:
            return job
        yield Sleep(interval)
