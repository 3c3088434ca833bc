"""The job page follows the job's event stream (``/ui/jobs/{id}/events/stream``, an EventSource under the
login cookie) in a real headless Chromium against the real stack: an idle job costs no reads of
``/live``; an event the worker writes shows in the event log within 2 s, read once because the stream
said so; the end of the job reloads the page. Refused the stream, the page polls as before."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import pytest
from browser_support import Stack

pytestmark = [pytest.mark.browser]


def _running_job(stack: Stack, worker: str) -> str:
    """A running job with one event, its (pretend) worker alive so that nothing requeues it."""
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job, WorkerHeartbeat, new_id, utcnow

    with session_scope(stack.database_url) as s:
        job = Job(
            id=new_id("job"), project_id=stack.project_id, checkpoint_id=stack.checkpoint_id,
            dataset_id=stack.dataset_id, job_type="prompt", backbone={"model": "tiny-test", "pretrained": "random"},
            hyperparameters={"epochs": 3}, status="running", started_at=utcnow(), worker_host=worker,
            progress={"epoch": 1, "epochs": 3, "step": 1, "steps": 6}, metadata_={"name": "live-stream"},
        )  # fmt: skip
        s.add(job)
        beat = s.get(WorkerHeartbeat, worker) or WorkerHeartbeat(hostname=worker)
        beat.current_job_id, beat.last_seen = job.id, utcnow() + timedelta(hours=1)
        s.add(beat)
        s.flush()
        repo.add_event(s, job.id, "status", f"Job started on {worker}", data={"status": "running"})
        return job.id


def _finish(stack: Stack, job_id: str, worker: str) -> None:
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job, JobEvent, WorkerHeartbeat, utcnow

    with session_scope(stack.database_url) as s:
        job = s.get(Job, job_id)
        job.status, job.finished_at = "failed", utcnow()
        job.error = {"code": "internal", "message": "stopped by the test", "user_error": False}
        s.add(JobEvent(job_id=job_id, type="status", message="Job failed", data={"status": "failed"}))
        beat = s.get(WorkerHeartbeat, worker)
        if beat is not None:
            beat.current_job_id = None


def _log_has(page: Any, text: str, timeout: float) -> None:
    page.wait_for_function(
        "t => [...document.querySelectorAll('#events tbody tr')].some(tr => tr.textContent.includes(t))",
        arg=text,
        timeout=timeout,
    )


def _watch(page: Any, part: str) -> list[float]:
    seen: list[float] = []
    page.on("request", lambda r: seen.append(time.monotonic()) if part in r.url else None)
    return seen


def test_the_job_page_updates_from_the_event_stream(stack: Stack, logged_in: Any) -> None:
    from mergetune.worker.jobdb import add_event

    page = logged_in
    job_id = _running_job(stack, "stream-page@test")
    live, streams = _watch(page, f"/ui/jobs/{job_id}/live"), _watch(page, f"/ui/jobs/{job_id}/events/stream")
    page.goto(f"{stack.url}/jobs/{job_id}")
    page.wait_for_function("document.getElementById('job').dataset.liveMode === 'stream'")
    page.wait_for_timeout(1500)  # the stream is open and its first messages were read once
    assert len(streams) == 1
    reads = len(live)
    page.wait_for_timeout(2500)  # idle: polling would have read /live twice by now
    assert len(live) == reads

    add_event(stack.database_url, job_id, "log", "written while the page watches")
    written = time.monotonic()
    _log_has(page, "written while the page watches", timeout=2000)
    assert time.monotonic() - written < 2.0
    assert 1 <= len(live) - reads <= 2 and all(t > written for t in live[reads:])

    _finish(stack, job_id, "stream-page@test")  # the end event: one last read, then the page reloads
    page.wait_for_function(
        "document.getElementById('job').dataset.status === 'failed'"
        " && document.getElementById('job').dataset.terminal === 'true'",
        timeout=10_000,
    )
    assert len(streams) == 1  # no reconnect after the end


def test_the_job_page_polls_when_the_stream_is_refused(stack: Stack, logged_in: Any) -> None:
    from mergetune.worker.jobdb import add_event

    page = logged_in
    job_id = _running_job(stack, "poll-page@test")
    page.route("**/events/stream", lambda route: route.abort())  # the connection fails every time
    live = _watch(page, f"/ui/jobs/{job_id}/live")
    page.goto(f"{stack.url}/jobs/{job_id}")
    page.wait_for_function("document.getElementById('job').dataset.liveMode === 'poll'", timeout=15_000)
    add_event(stack.database_url, job_id, "log", "seen by polling")
    _log_has(page, "seen by polling", timeout=5000)
    assert len(live) >= 1
    _finish(stack, job_id, "poll-page@test")
