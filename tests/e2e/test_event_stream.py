"""``GET /v1/jobs/{id}/events/stream`` (server-sent events) against real API processes on one Postgres
database: ``a`` (at most 2 open streams), ``b`` (the defaults) and ``old``, a server without the
stream route (as before it existed). Events are written as the worker writes them
(:func:`mergetune.worker.jobdb.add_event`, its own connection), so whichever process serves a stream
reads them from Postgres; ``mergetune job wait`` and the client follow the stream, or poll where
there is none."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

import worker_support as ws  # noqa: E402

from mergetune._sse import ServerSentEvent, SSEParser  # noqa: E402

pytestmark = pytest.mark.slow

STREAM_LIMIT = 2

#: An API process as it was before the stream route: the same app, answering its path as an unknown
#: route (404 {"detail": "Not Found"}).
OLD_SERVER = """
import sys, uvicorn
from mergetune.api.main import create_app

inner = create_app()

async def app(scope, receive, send):
    if scope["type"] == "http" and scope["path"].endswith("/events/stream"):
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": 404, "headers": headers})
        await send({"type": "http.response.body", "body": b'{"detail":"Not Found"}'})
        return
    await inner(scope, receive, send)

uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


class OldApi(ws.ApiProcess):
    def start(self, wait_ready: float = 60.0, *, wait: bool = True) -> OldApi:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", OLD_SERVER, str(self.port)],
            cwd=ws.REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.wait_ready(wait_ready) if wait else self


class Stack:
    def __init__(
        self, url: str, apis: dict[str, ws.ApiProcess], secrets: dict[str, str], env: dict[str, str]
    ):
        self.url, self.apis, self.secrets, self.env = url, apis, secrets, env
        self.project_id = ""
        self.checkpoint_id = ""
        self.dataset_id = ""

    def auth(self, project: str = "p1") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secrets[project]}"}

    def job(self, status: str = "running", events: int = 0) -> str:
        job_id = ws.make_job(self.url, self.project_id, self.checkpoint_id, self.dataset_id, status=status)
        for i in range(events):
            self.event(job_id, f"event {i + 1}")
        return job_id

    def event(self, job_id: str, message: str, type_: str = "log", **data: Any) -> None:
        from mergetune.worker.jobdb import add_event

        add_event(self.url, job_id, type_, message, **data)

    def finish(self, job_id: str, status: str = "succeeded") -> None:
        """What the worker does at the end: the status and its event in one transaction."""
        from mergetune.common.db import session_scope
        from mergetune.common.models import Job, JobEvent, utcnow

        with session_scope(self.url) as s:
            job = s.get(Job, job_id)
            job.status, job.finished_at = status, utcnow()
            s.add(JobEvent(job_id=job_id, type="status", message=f"Job {status}", data={"status": status}))

    def metric(self, api: str, name: str, **labels: str) -> float:
        text = httpx.get(f"{self.apis[api].url}/metrics", timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in labels.items())
        pattern = re.escape(name + (f"{{{want}}}" if want else "")) + r" (\S+)"
        found = re.search(r"^" + pattern + "$", text, re.M)
        return float(found.group(1)) if found else 0.0

    def open_streams(self, api: str) -> float:
        return self.metric(api, "mergetune_event_streams_open")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.storage import get_store

    root = tmp_path_factory.mktemp("stream")
    with ws.fresh_database("mt_stream") as url:
        settings = ws.make_settings(root / "home", url, f"{ws.REDIS_URL}/{ws.E2E_REDIS_DB}")
        env = ws.settings_env(settings)
        apis: dict[str, ws.ApiProcess] = {
            "a": ws.ApiProcess({**env, "MERGETUNE_MAX_EVENT_STREAMS": str(STREAM_LIMIT)}, root / "a.log"),
            "b": ws.ApiProcess(env, root / "b.log"),
            "old": OldApi(env, root / "old.log"),
        }
        for api in apis.values():
            api.start(wait=False)
        secrets = {}
        with session_scope(url) as s:
            for name in ("p1", "p2"):
                _, secrets[name] = repo.create_token(s, repo.get_or_create_project(s, name))
            project_id = repo.get_or_create_project(s, "p1").id
        st = Stack(url, apis, secrets, env)
        st.project_id = project_id
        st.checkpoint_id = ws.make_checkpoint(url, get_store(settings), project_id, ws.tiny_ctx())
        st.dataset_id = ws.make_dataset(url, settings, project_id)
        try:
            for api in apis.values():
                api.wait_ready(90)
            yield st
        finally:
            for api in apis.values():
                api.stop()


def read_stream(
    base: str, job_id: str, headers: dict[str, str], *, until_end: bool = True, count: int | None = None
) -> tuple[httpx.Headers, str, list[ServerSentEvent]]:
    """Read the stream until its ``end`` event (or ``count`` job events); the headers, the raw text
    and the events."""
    parser, raw, events = SSEParser(), [], []
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events/stream", headers=headers, timeout=30) as r:
        assert r.status_code == 200, r.read()
        for chunk in r.iter_bytes():
            raw.append(chunk)
            events.extend(parser.feed(chunk))
            rows = [e for e in events if e.event not in ("job", "end")]
            if (until_end and events and events[-1].event == "end") or (
                count is not None and len(rows) >= count
            ):
                return r.headers, b"".join(raw).decode(), events
    raise AssertionError(f"the stream ended without its end event: {b''.join(raw)!r}")


def rows(events: list[ServerSentEvent]) -> list[dict[str, Any]]:
    return [json.loads(e.data) for e in events if e.event not in ("job", "end")]


def all_events(st: Stack, job_id: str, api: str = "b") -> list[dict[str, Any]]:
    r = httpx.get(f"{st.apis[api].url}/v1/jobs/{job_id}/events", params={"limit": 1000}, headers=st.auth())
    r.raise_for_status()
    return r.json()["data"]


# ---------------------------------------------------------------------------------------------- the route


def test_events_arrive_in_seq_order_across_processes_and_the_stream_ends(stack):
    """Connected to process a: events the worker writes and a cancel made through process b arrive in
    order, each with id = seq and the object GET /events gives; the end event carries the status."""
    job_id = stack.job(events=2)
    got: dict[str, Any] = {}

    def reader() -> None:
        got["headers"], got["raw"], got["events"] = read_stream(stack.apis["a"].url, job_id, stack.auth())

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    ws.wait_for(lambda: stack.open_streams("a") == 1, 10, what="the stream to be open on a")
    time.sleep(0.7)  # the first two went out; the next ones are written while it is connected
    for i in range(3):
        stack.event(job_id, f"epoch {i + 1}", "epoch", epoch=i + 1)
    r = httpx.post(f"{stack.apis['b'].url}/v1/jobs/{job_id}/cancel", headers=stack.auth())
    assert r.status_code == 200 and r.json()["status"] == "cancelling"
    stack.event(job_id, "stopping at the next step")
    stack.finish(job_id, "cancelled")
    thread.join(15)
    assert not thread.is_alive(), "the stream did not end at the terminal status"

    headers, raw, events = got["headers"], got["raw"], got["events"]
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["cache-control"] == "no-cache" and headers["x-accel-buffering"] == "no"
    assert "content-encoding" not in headers and raw.startswith("retry: ")
    expected = all_events(stack, job_id)
    assert [e["message"] for e in expected] == [
        "event 1", "event 2", "epoch 1", "epoch 2", "epoch 3",
        "cancellation requested", "stopping at the next step", "Job cancelled",
    ]  # fmt: skip
    assert rows(events) == expected
    row_events = [e for e in events if e.event not in ("job", "end")]
    assert [int(e.id) for e in row_events] == [e["seq"] for e in expected] == list(range(1, 9))
    assert [e.event for e in row_events][:3] == ["log", "log", "epoch"]
    assert f"id: 3\nevent: epoch\ndata: {json.dumps(expected[2], separators=(',', ':'))}\n\n" in raw
    statuses = [json.loads(e.data)["status"] for e in events if e.event == "job"]
    assert statuses[0] == "running" and statuses[-1] == "cancelled"  # cancelling too, if a poll saw it
    assert set(statuses) <= {"running", "cancelling", "cancelled"} and len(set(statuses)) == len(statuses)
    assert events[-1].event == "end" and json.loads(events[-1].data) == {"id": job_id, "status": "cancelled"}
    ws.wait_for(lambda: stack.open_streams("a") == 0, 5, what="the finished stream's slot back")


def test_last_event_id_resumes_on_the_other_process_without_duplicates_or_gaps(stack):
    job_id = stack.job(events=7)
    stack.finish(job_id)
    _, _, first = read_stream(stack.apis["a"].url, job_id, stack.auth(), until_end=False, count=3)
    seen = rows(first)[:3]
    last = [e for e in first if e.event not in ("job", "end")][2].id
    _, _, rest = read_stream(stack.apis["b"].url, job_id, {**stack.auth(), "Last-Event-ID": last})
    assert [e["seq"] for e in seen + rows(rest)] == list(range(1, 9))
    assert seen + rows(rest) == all_events(stack, job_id)
    _, _, tail = read_stream(f"{stack.apis['b'].url}", job_id, stack.auth() | {"Last-Event-ID": "8"})
    assert rows(tail) == [] and json.loads(tail[-1].data)["status"] == "succeeded"
    query = httpx.get(
        f"{stack.apis['b'].url}/v1/jobs/{job_id}/events/stream", params={"after": "6"}, headers=stack.auth()
    )
    assert [int(m) for m in re.findall(r"^id: (\d+)$", query.text, re.M)] == [7, 8]


def test_refusals_name_the_problem(stack):
    job_id = stack.job(events=1)
    base = f"{stack.apis['b'].url}/v1/jobs/{job_id}/events/stream"
    r = httpx.get(base)
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
    r = httpx.get(base, headers=stack.auth("p2"))
    assert r.status_code == 404 and r.json()["error"]["param"] == "id"
    r = httpx.get(base, headers={**stack.auth(), "Last-Event-ID": "seven"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "Last-Event-ID"
    stack.finish(job_id)


def test_the_stream_limit_answers_503_and_a_disconnect_frees_its_slot(stack):
    job_id = stack.job(events=1)
    url = f"{stack.apis['a'].url}/v1/jobs/{job_id}/events/stream"
    with contextlib.ExitStack() as held:
        first, second = (
            held.enter_context(httpx.stream("GET", url, headers=stack.auth(), timeout=10)) for _ in range(2)
        )
        assert first.status_code == second.status_code == 200
        chunks = second.iter_bytes()  # kept: dropping a started iterator closes its response
        assert next(chunks).startswith(b"retry: ")
        assert stack.open_streams("a") == STREAM_LIMIT
        refused = httpx.get(url, headers=stack.auth())
        assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
        assert refused.json()["error"]["code"] == "too_many_streams"
        first.close()  # the client goes away: its slot is free within a poll
        started = time.monotonic()
        ws.wait_for(lambda: stack.open_streams("a") == 1, 5, 0.05, "the closed stream's slot back")
        freed_after = time.monotonic() - started
        with httpx.stream("GET", url, headers=stack.auth(), timeout=10) as again:
            assert again.status_code == 200
    ws.wait_for(lambda: stack.open_streams("a") == 0, 5, 0.05, "every slot back")
    assert freed_after < 2.0
    stack.finish(job_id)


# ------------------------------------------------------------------------------------------ the client


def _wait_cli(stack: Stack, api: str, job_id: str) -> subprocess.Popen[str]:
    env = {**stack.env, "MERGETUNE_URL": stack.apis[api].url, "MERGETUNE_TOKEN": stack.secrets["p1"]}
    return subprocess.Popen(
        [sys.executable, "-m", "mergetune.cli", "job", "wait", job_id, "--quiet"],
        cwd=ws.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_job_wait_follows_the_stream(stack):
    route = {"method": "GET", "route": "/v1/jobs/{job_id}/events/stream", "status": "200"}
    before = stack.metric("a", "mergetune_http_request_duration_seconds_count", **route)
    job_id = stack.job(events=1)
    proc = _wait_cli(stack, "a", job_id)
    ws.wait_for(lambda: stack.open_streams("a") == 1, 30, what="mergetune job wait to open the stream")
    stack.event(job_id, "epoch 1", "epoch", epoch=1)
    stack.finish(job_id)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert json.loads(out)["status"] == "succeeded"
    assert stack.metric("a", "mergetune_http_request_duration_seconds_count", **route) == before + 1


def test_job_wait_polls_a_server_without_the_stream(stack):
    job_id = stack.job(events=1)
    r = httpx.get(f"{stack.apis['old'].url}/v1/jobs/{job_id}/events/stream", headers=stack.auth())
    assert r.status_code == 404
    proc = _wait_cli(stack, "old", job_id)
    time.sleep(2)
    stack.finish(job_id, "failed")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1 and json.loads(out)["status"] == "failed"


def test_stream_job_events_sync_async_resumed_and_polled(stack):
    from mergetune import AsyncClient, Client

    job_id = stack.job(events=3)
    got: list[dict[str, Any]] = []

    def follow() -> None:
        with Client(stack.apis["a"].url, stack.secrets["p1"]) as c:
            for event in c.stream_job_events(job_id):
                got.append(event)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    ws.wait_for(lambda: len(got) == 3, 10, what="the first events")
    stack.event(job_id, "late")
    stack.finish(job_id)
    thread.join(10)
    expected = all_events(stack, job_id)
    assert got == expected and len(expected) == 5

    with Client(stack.apis["b"].url, stack.secrets["p1"]) as c:
        assert list(c.stream_job_events(job_id, after=2)) == expected[2:]
    with Client(stack.apis["old"].url, stack.secrets["p1"]) as c:  # no stream there: paged instead
        assert list(c.stream_job_events(job_id, after=1)) == expected[1:]

    async def follow_async() -> list[dict[str, Any]]:
        async with AsyncClient(stack.apis["b"].url, stack.secrets["p1"]) as c:
            return [e async for e in c.stream_job_events(job_id, after=3)]

    assert asyncio.run(follow_async()) == expected[3:]


class DroppingProxy:
    """A TCP proxy to ``target_port`` that cuts the first connection whose response holds ``marker``
    just after it (a network drop in the middle of a stream); later connections pass whole."""

    def __init__(self, target_port: int, marker: bytes) -> None:
        self.target_port, self.marker = target_port, marker
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.cuts = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            marker = self.marker if self.cuts == 0 else None
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(target=self._pipe, args=(client, upstream, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, marker), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, marker: bytes | None) -> None:
        seen = b""
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if marker is not None:
                    seen += data
                    at = seen.find(marker)
                    if at >= 0:
                        keep = at + len(marker) - (len(seen) - len(data))
                        dst.sendall(data[:keep])
                        self.cuts += 1
                        break
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def close(self) -> None:
        self.sock.close()


def test_a_dropped_connection_resumes_with_last_event_id(stack):
    from mergetune import Client

    job_id = stack.job(events=6)
    stack.finish(job_id)
    expected = all_events(stack, job_id)
    proxy = DroppingProxy(stack.apis["b"].port, b"id: 4\n")  # the fourth event is cut after its id
    try:
        with Client(f"http://127.0.0.1:{proxy.port}", stack.secrets["p1"]) as c:
            got = list(c.stream_job_events(job_id))
    finally:
        proxy.close()
    assert proxy.cuts == 1 and proxy.connections >= 2
    assert got == expected


def test_job_events_follow_prints_one_event_a_line(stack):
    job_id = stack.job(events=4)
    env = {**stack.env, "MERGETUNE_URL": stack.apis["b"].url, "MERGETUNE_TOKEN": stack.secrets["p1"]}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mergetune.cli", "job", "events", job_id, "--follow", "--after", "2"],
        cwd=ws.REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    first = json.loads(proc.stdout.readline())  # printed while the job still runs
    assert first["seq"] == 3 and proc.poll() is None
    stack.finish(job_id)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    printed = [first] + [json.loads(line) for line in out.splitlines()]
    assert printed == all_events(stack, job_id)[2:] and [e["seq"] for e in printed] == [3, 4, 5]


def test_wait_job_gives_up_at_its_timeout_on_a_quiet_stream(stack):
    from mergetune import Client

    job_id = stack.job(events=1)
    started = time.monotonic()
    with Client(stack.apis["b"].url, stack.secrets["p1"]) as c, pytest.raises(TimeoutError) as exc:
        c.wait_job(job_id, timeout=1.5)
    assert 1.5 <= time.monotonic() - started < 4.0
    assert str(exc.value) == f"job {job_id} still running after 1.5 s"
    stack.finish(job_id)
