"""The webhook dispatcher against a real HTTP receiver (http.server in a thread): signatures checked
with the standard library, retries with one webhook-id, a receiver down for a while, a dispatcher
killed with SIGKILL mid-delivery, and the address check at delivery time."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest


@dataclass
class Receiver:
    """Answers each POST with the next code of ``codes`` (then 200); records every request."""

    codes: list[int] = field(default_factory=list)
    hold: threading.Event | None = None  # when set: requests wait for it before answering
    requests: list[dict[str, Any]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)
    server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def start(self, port: int = 0) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests.append(
                    {"headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
                )
                receiver.arrived.set()
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                code = receiver.codes.pop(0) if receiver.codes else 200
                self.send_response(code)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver().start()
    yield r
    r.stop()


def verify(secret: str, headers: dict[str, str], body: bytes) -> bool:
    """A receiver's check, with the standard library only (Standard Webhooks)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in headers["webhook-signature"].split(" ") if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, g) for g in given)


@pytest.fixture
def hook_settings(wsettings: Any) -> Any:
    return wsettings.model_copy(
        update={"WEBHOOKS_ALLOW_PRIVATE": True, "WEBHOOK_RETRY_SCHEDULE": "1,2,4", "WEBHOOK_TIMEOUT": 5.0}
    )


@pytest.fixture
def make_event(hook_settings: Any) -> Callable[..., tuple[str, str]]:
    """An endpoint for ``url`` in a fresh project with one pending job.succeeded delivery:
    (endpoint id, secret)."""
    from mergetune.common import webhooks
    from mergetune.common.db import session_scope
    from mergetune.common.models import Project, WebhookEndpoint, new_id, utcnow

    def _make(url: str, data: dict[str, Any] | None = None) -> tuple[str, str]:
        with session_scope(hook_settings.DATABASE_URL) as s:
            project = Project(name=new_id("whtest"))
            s.add(project)
            s.flush()
            ep = WebhookEndpoint(
                project_id=project.id,
                url=url,
                events=list(webhooks.EVENT_TYPES),
                secret=webhooks.new_secret(),
                enabled=True,
            )
            s.add(ep)
            s.flush()
            webhooks.enqueue_event(
                s, [ep], "job.succeeded", data or {"id": "job_1", "status": "succeeded"}, utcnow()
            )
            return ep.id, ep.secret

    return _make


def deliveries(settings: Any, endpoint_id: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from mergetune.common.db import session_scope
    from mergetune.common.models import WebhookAttempt, WebhookDelivery

    with session_scope(settings.DATABASE_URL) as s:
        out = []
        for d in s.scalars(select(WebhookDelivery).where(WebhookDelivery.endpoint_id == endpoint_id)):
            attempts = s.scalars(
                select(WebhookAttempt).where(WebhookAttempt.delivery_id == d.id).order_by(WebhookAttempt.id)
            )
            out.append(
                {
                    "id": d.id,
                    "status": d.status,
                    "tries": d.tries,
                    "attempts": [(a.status_code, a.error, a.success) for a in attempts],
                }
            )
        return out


def pump(settings: Any, until: Callable[[], bool], timeout: float = 30.0) -> None:
    from mergetune.worker.webhooks import dispatch_once

    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        if dispatch_once(settings) == 0:
            time.sleep(0.2)


def test_signature_verifies_with_the_standard_library(hook_settings, make_event, receiver):
    ep_id, secret = make_event(receiver.url, {"id": "job_sig", "status": "succeeded"})
    pump(hook_settings, lambda: len(receiver.requests) >= 1)
    req = receiver.requests[0]
    h = req["headers"]
    assert h["webhook-id"].startswith("msg_")
    assert abs(int(h["webhook-timestamp"]) - time.time()) < 30
    assert h["content-type"] == "application/json"
    assert verify(secret, h, req["body"])
    assert not verify("whsec_" + base64.b64encode(b"x" * 32).decode(), h, req["body"])
    body = json.loads(req["body"])
    assert body["type"] == "job.succeeded"
    assert body["data"] == {"id": "job_sig", "status": "succeeded"}
    assert body["timestamp"].endswith("Z")
    assert deliveries(hook_settings, ep_id)[0]["status"] == "succeeded"


def test_500_500_200_is_three_attempts_with_one_webhook_id(hook_settings, make_event, receiver):
    receiver.codes = [500, 500, 200]
    ep_id, secret = make_event(receiver.url)
    pump(hook_settings, lambda: deliveries(hook_settings, ep_id)[0]["status"] != "pending")
    assert len(receiver.requests) == 3
    assert len({r["headers"]["webhook-id"] for r in receiver.requests}) == 1
    assert len({r["body"] for r in receiver.requests}) == 1
    assert all(verify(secret, r["headers"], r["body"]) for r in receiver.requests)
    (d,) = deliveries(hook_settings, ep_id)
    assert d["status"] == "succeeded"
    assert d["attempts"] == [(500, None, False), (500, None, False), (200, None, True)]


def test_receiver_down_gets_the_event_later(hook_settings, make_event):
    from mergetune.worker.webhooks import dispatch_once

    # a port with nothing listening: the receiver starts there after three refused attempts
    probe = Receiver().start()
    port = probe.server.server_address[1]  # type: ignore[union-attr]
    probe.stop()
    ep_id, _secret = make_event(f"http://127.0.0.1:{port}/hook")
    settings = hook_settings.model_copy(update={"WEBHOOK_RETRY_SCHEDULE": "1,1,1,2,2,2,2"})
    pump(settings, lambda: deliveries(settings, ep_id)[0]["tries"] >= 3)
    (d,) = deliveries(settings, ep_id)
    assert d["status"] == "pending"
    assert all(code is None and err and not ok for code, err, ok in d["attempts"])
    late = Receiver().start(port)
    try:
        pump(settings, lambda: deliveries(settings, ep_id)[0]["status"] == "succeeded")
        assert len(late.requests) == 1
        assert dispatch_once(settings) == 0
    finally:
        late.stop()


def test_retries_run_out_then_failed(hook_settings, make_event, receiver):
    receiver.codes = [500] * 10
    settings = hook_settings.model_copy(update={"WEBHOOK_RETRY_SCHEDULE": "0,0"})
    ep_id, _ = make_event(receiver.url)
    pump(settings, lambda: deliveries(settings, ep_id)[0]["status"] != "pending")
    (d,) = deliveries(settings, ep_id)
    assert d["status"] == "failed" and d["tries"] == 3 and len(receiver.requests) == 3


def test_redirects_are_not_followed(hook_settings, make_event, receiver):
    receiver.codes = [302]
    settings = hook_settings.model_copy(update={"WEBHOOK_RETRY_SCHEDULE": ""})
    ep_id, _ = make_event(receiver.url)
    pump(settings, lambda: deliveries(settings, ep_id)[0]["status"] != "pending")
    (d,) = deliveries(settings, ep_id)
    assert d["status"] == "failed"
    assert d["attempts"][0][0] == 302 and "not followed" in d["attempts"][0][1]


def test_private_target_is_refused_at_delivery(wsettings, make_event, receiver):
    settings = wsettings.model_copy(update={"WEBHOOKS_ALLOW_PRIVATE": False, "WEBHOOK_RETRY_SCHEDULE": ""})
    ep_id, _ = make_event(receiver.url)  # registered while allowed, say; refused when sent
    pump(settings, lambda: deliveries(settings, ep_id)[0]["status"] != "pending")
    (d,) = deliveries(settings, ep_id)
    assert d["status"] == "failed"
    assert d["attempts"][0][0] is None and "private" in d["attempts"][0][1]
    assert receiver.requests == []


def test_endpoint_failing_too_long_is_disabled(hook_settings, make_event, receiver):
    from mergetune.common.db import session_scope
    from mergetune.common.models import WebhookEndpoint

    receiver.codes = [500] * 10
    settings = hook_settings.model_copy(
        update={"WEBHOOK_RETRY_SCHEDULE": "0.4,0.4,0.4,0.4", "WEBHOOK_DISABLE_AFTER_SECONDS": 0.5}
    )
    ep_id, _ = make_event(receiver.url)

    def disabled() -> bool:
        with session_scope(settings.DATABASE_URL) as s:
            ep = s.get(WebhookEndpoint, ep_id)
            return ep is not None and not ep.enabled

    pump(settings, disabled)
    with session_scope(settings.DATABASE_URL) as s:
        ep = s.get(WebhookEndpoint, ep_id)
        assert ep is not None and ep.disabled_at is not None
        assert "no successful delivery since" in (ep.disabled_reason or "")
    # its pending event waits: nothing more is sent while it is disabled
    sent = len(receiver.requests)
    from mergetune.worker.webhooks import dispatch_once

    assert dispatch_once(settings) == 0 and len(receiver.requests) == sent


def _dispatcher(settings: Any) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "MERGETUNE_HOME": str(settings.HOME),
            "MERGETUNE_DATABASE_URL": settings.DATABASE_URL,
            "MERGETUNE_BROKER_URL": settings.BROKER_URL,
            "MERGETUNE_WEBHOOKS_ALLOW_PRIVATE": "true",
            "MERGETUNE_WEBHOOK_RETRY_SCHEDULE": "1,2,4",
            "MERGETUNE_WEBHOOK_POLL_INTERVAL": "0.2",
        }
    )
    return subprocess.Popen([sys.executable, "-m", "mergetune.worker.webhooks"], env=env)


def test_dispatcher_killed_mid_delivery_still_delivers(hook_settings, make_event, receiver):
    receiver.hold = threading.Event()  # the first request is held open until the sender is dead
    ep_id, secret = make_event(receiver.url)
    first = _dispatcher(hook_settings)
    try:
        assert receiver.arrived.wait(30), "the first dispatcher never sent"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    receiver.hold.set()
    receiver.hold = None
    assert deliveries(hook_settings, ep_id)[0]["status"] == "pending"  # the killed send left no trace
    second = _dispatcher(hook_settings)
    try:
        deadline = time.monotonic() + 30
        while deliveries(hook_settings, ep_id)[0]["status"] == "pending":
            assert time.monotonic() < deadline, "the second dispatcher never delivered"
            time.sleep(0.2)
    finally:
        second.send_signal(signal.SIGINT)
        try:
            second.wait(10)
        except subprocess.TimeoutExpired:
            second.kill()
    assert len(receiver.requests) == 2
    assert receiver.requests[0]["headers"]["webhook-id"] == receiver.requests[1]["headers"]["webhook-id"]
    assert all(verify(secret, r["headers"], r["body"]) for r in receiver.requests)
    (d,) = deliveries(hook_settings, ep_id)
    assert d["status"] == "succeeded" and d["attempts"] == [(200, None, True)]


def test_two_dispatchers_never_send_one_delivery_twice(hook_settings, make_event, receiver):
    from mergetune.worker.webhooks import dispatch_once

    ids = [make_event(receiver.url)[0] for _ in range(6)]
    threads = [threading.Thread(target=dispatch_once, args=(hook_settings,)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(deliveries(hook_settings, i)[0]["status"] == "succeeded" for i in ids)
    assert len(receiver.requests) == 6
    assert len({r["headers"]["webhook-id"] for r in receiver.requests}) == 6
