"""The event stream's keep-alive comments and its cost, against the app served by a real uvicorn in this
process (so the heartbeat interval can be shortened and the SQL it sends counted) on Postgres."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import free_port, new_token

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

import worker_support as ws  # noqa: E402


@contextmanager
def served(settings: Any) -> Iterator[str]:
    import uvicorn

    from mergetune.api.main import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    ws.wait_for(lambda: server.started, 20, 0.05, "uvicorn to start")
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _jobs(settings: Any, token: str, n: int) -> list[str]:
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.storage import get_store

    with session_scope(settings.DATABASE_URL) as s:
        project_id = repo.find_token(s, token)[0].project_id  # type: ignore[index]
    url = settings.DATABASE_URL
    ckpt = ws.make_checkpoint(url, get_store(settings), project_id, ws.tiny_ctx())
    ds = ws.make_dataset(url, settings, project_id)
    return [ws.make_job(url, project_id, ckpt, ds, status="running") for _ in range(n)]


def test_a_quiet_stream_sends_keep_alive_comments(settings: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from mergetune.api.services import event_stream

    monkeypatch.setattr(event_stream, "HEARTBEAT_SECONDS", 0.4)
    token = new_token(settings.DATABASE_URL)
    (job_id,) = _jobs(settings, token, 1)
    with (
        served(settings) as base,
        httpx.stream(
            "GET",
            f"{base}/v1/jobs/{job_id}/events/stream",
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        ) as r,
    ):
        raw, started = b"", time.monotonic()
        for chunk in r.iter_bytes():
            raw += chunk
            if raw.count(b": keep-alive\n\n") >= 3 or time.monotonic() - started > 5:
                break
    text = raw.decode()
    assert text.startswith("retry: 2000\n\n") and "event: job\n" in text
    assert text.count(": keep-alive\n\n") >= 3, text


def test_idle_streams_share_one_look_at_the_database(settings: Any) -> None:
    """Six idle streams on five jobs: the process sends the SQL of one look (two queries) per 0.5 s,
    not six; an event of one job is read by that job's streams only."""
    from sqlalchemy import event

    from mergetune.common.db import get_engine
    from mergetune.worker.jobdb import add_event

    token = new_token(settings.DATABASE_URL)
    jobs = _jobs(settings, token, 5)
    statements: list[str] = []
    engine = get_engine(settings.DATABASE_URL)

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if threading.current_thread() is not threading.main_thread():  # the server's, not this test's
            statements.append(statement)

    auth = {"Authorization": f"Bearer {token}"}
    with served(settings) as base, ExitStack() as held:
        streams = []
        for job_id in [*jobs, jobs[0]]:
            r = held.enter_context(
                httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events/stream", headers=auth)
            )
            chunks = r.iter_bytes()
            while b"event: job" not in next(chunks):
                pass
            streams.append(chunks)
        time.sleep(1.0)  # every stream past its first reads
        event.listen(engine, "before_cursor_execute", count)
        try:
            time.sleep(2.0)
            idle = list(statements)
            add_event(settings.DATABASE_URL, jobs[2], "log", "only job 3 changed")
            assert b"only job 3 changed" in next(streams[2])
            time.sleep(0.2)
        finally:
            event.remove(engine, "before_cursor_execute", count)
    looks = [s for s in idle if "GROUP BY job_events.job_id" in s]
    assert 2 <= len(looks) <= 6, idle  # one look per 0.5 s for all six streams
    assert len(idle) <= 2 * len(looks) + 2, idle  # and nothing else while idle
    reads = [s for s in statements[len(idle) :] if "FROM job_events" in s and "GROUP BY" not in s]
    assert 1 <= len(reads) <= 2, reads  # the one stream of job 3 read its new row
