"""/v1/webhooks against the real app and Postgres: registration (secret shown once, SSRF refusals,
errors naming the field), per-project isolation, rotation, the events written with a job's or sweep's
terminal transition (the same JSON as GET), the delivery log and redelivery, sent to a real receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

EVENTS = ["job.succeeded", "job.failed", "job.cancelled", "job.warning", "sweep.finished"]


class Receiver:
    def __init__(self, codes: list[int] | None = None) -> None:
        self.codes = list(codes or [])
        self.requests: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.requests.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.codes.pop(0) if receiver.codes else 200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def hooks(make_client):
    """A client whose server accepts loopback targets (the test receiver), as an operator may allow."""
    return make_client(WEBHOOKS_ALLOW_PRIVATE=True, WEBHOOK_RETRY_SCHEDULE="0,0,0")


def signatures_valid(secret: str, headers: dict[str, str], body: bytes) -> list[bool]:
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    return [hmac.compare_digest(s, "v1," + expected) for s in headers["webhook-signature"].split(" ")]


def dispatch_all(client, until, timeout: float = 30.0) -> None:
    from mergetune.worker.webhooks import dispatch_once

    settings = client.app.state.settings
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "timed out"
        if dispatch_once(settings) == 0:
            time.sleep(0.1)


def test_register_read_list_delete_and_project_isolation(client, auth, other_auth):
    r = client.post(
        "/v1/webhooks",
        headers=auth,
        json={"url": "https://93.184.215.14/hooks", "events": ["job.failed"], "description": "pager"},
    )
    assert r.status_code == 201, r.text
    wh = r.json()
    assert re.fullmatch(r"wh_[0-9a-f]{24}", wh["id"])
    raw = base64.b64decode(wh["secret"].removeprefix("whsec_"), validate=True)
    assert wh["secret"].startswith("whsec_") and 24 <= len(raw) <= 64
    assert (wh["url"], wh["events"], wh["description"], wh["enabled"]) == (
        "https://93.184.215.14/hooks",
        ["job.failed"],
        "pager",
        True,
    )
    got = client.get(f"/v1/webhooks/{wh['id']}", headers=auth).json()
    assert "secret" not in got and got["id"] == wh["id"]
    listed = client.get("/v1/webhooks", headers=auth).json()
    assert [w["id"] for w in listed["data"]] == [wh["id"]] and "secret" not in listed["data"][0]
    # another project sees none of it
    assert client.get("/v1/webhooks", headers=other_auth).json()["data"] == []
    for method, path in [
        ("GET", ""),
        ("DELETE", ""),
        ("POST", "/rotate-secret"),
        ("GET", "/deliveries"),
        ("POST", "/deliveries/whd_x/redeliver"),
    ]:
        r = client.request(method, f"/v1/webhooks/{wh['id']}{path}", headers=other_auth)
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["param"] == "id"
    r = client.delete(f"/v1/webhooks/{wh['id']}", headers=auth)
    assert r.status_code == 200 and r.json() == {"id": wh["id"], "object": "webhook", "deleted": True}
    assert client.get(f"/v1/webhooks/{wh['id']}", headers=auth).status_code == 404


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8000/hook",
        "http://localhost/hook",
        "http://10.1.2.3/hook",
        "http://192.168.0.10/hook",
        "http://172.16.5.4/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.100.100.200/",
        "http://[::1]/hook",
        "http://[fd00::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
def test_private_targets_are_refused(client, auth, url):
    r = client.post("/v1/webhooks", headers=auth, json={"url": url, "events": EVENTS})
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("private_address", "url"), err
    assert client.get("/v1/webhooks", headers=auth).json()["data"] == []


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ({"url": "ftp://example.com/x", "events": ["job.failed"]}, "invalid_url", "url"),
        ({"url": "http:///nohost", "events": ["job.failed"]}, "invalid_url", "url"),
        (
            {"url": "https://93.184.215.14/", "events": ["job.failed", "job.exploded"]},
            "unknown_event",
            "events[1]",
        ),
        ({"url": "https://93.184.215.14/", "events": []}, None, "events"),
        ({"events": ["job.failed"]}, None, "url"),
        ({"url": "https://93.184.215.14/", "events": ["job.failed"], "secret": "mine"}, None, "secret"),
    ],
)
def test_bad_registrations_name_the_field(client, auth, body, code, param):
    r = client.post("/v1/webhooks", headers=auth, json=body)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == param
    if code:
        assert err["code"] == code


def test_cancelled_job_event_delivery_log_and_redeliver(hooks, auth, other_auth, job_body, receiver):
    wh = hooks.post(
        "/v1/webhooks", headers=auth, json={"url": receiver.url, "events": ["job.cancelled"]}
    ).json()
    job = hooks.post("/v1/jobs", headers=auth, json=job_body).json()
    r = hooks.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    page = hooks.get(f"/v1/webhooks/{wh['id']}/deliveries", headers=auth).json()
    (d,) = page["data"]
    assert (d["type"], d["status"], d["attempts"], d["webhook_id"]) == (
        "job.cancelled",
        "pending",
        [],
        wh["id"],
    )

    receiver.codes = [500, 500, 200]
    dispatch_all(hooks, lambda: len(receiver.requests) >= 3)
    log = hooks.get(f"/v1/webhooks/{wh['id']}/deliveries", headers=auth).json()["data"]
    print(json.dumps(log, indent=2))
    (d,) = log
    assert d["status"] == "succeeded" and d["finished_at"] is not None
    assert [(a["status_code"], a["error"], a["success"]) for a in d["attempts"]] == [
        (500, None, False),
        (500, None, False),
        (200, None, True),
    ]
    assert all(a["duration_ms"] >= 0 and a["at"] for a in d["attempts"])
    assert {h["webhook-id"] for h, _ in receiver.requests} == {d["event_id"]}
    headers, body = receiver.requests[-1]
    assert signatures_valid(wh["secret"], headers, body) == [True]
    event = json.loads(body)
    assert event["type"] == "job.cancelled"
    # the same object as GET /v1/jobs/{id}
    assert event["data"] == hooks.get(f"/v1/jobs/{job['id']}", headers=auth).json()

    # redeliver: same webhook-id and body, a fresh schedule
    assert (
        hooks.post(f"/v1/webhooks/{wh['id']}/deliveries/{d['id']}/redeliver", headers=other_auth).status_code
        == 404
    )
    r = hooks.post(f"/v1/webhooks/{wh['id']}/deliveries/{d['id']}/redeliver", headers=auth)
    assert r.status_code == 202 and r.json()["status"] == "pending", r.text
    r = hooks.post(f"/v1/webhooks/{wh['id']}/deliveries/{d['id']}/redeliver", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "delivery_pending"
    dispatch_all(hooks, lambda: len(receiver.requests) >= 4)
    assert receiver.requests[3][0]["webhook-id"] == d["event_id"] and receiver.requests[3][1] == body
    r = hooks.post(f"/v1/webhooks/{wh['id']}/deliveries/whd_nope/redeliver", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["param"] == "delivery_id"


def test_rotation_signs_with_both_secrets_during_the_grace_period(hooks, auth, job_body, receiver):
    wh = hooks.post("/v1/webhooks", headers=auth, json={"url": receiver.url, "events": EVENTS}).json()
    r = hooks.post(f"/v1/webhooks/{wh['id']}/rotate-secret", headers=auth)
    assert r.status_code == 200, r.text
    rotated = r.json()
    assert rotated["secret"] != wh["secret"] and rotated["secret"].startswith("whsec_")
    assert rotated["previous_secret_expires_at"] is not None
    job = hooks.post("/v1/jobs", headers=auth, json=job_body).json()
    hooks.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    dispatch_all(hooks, lambda: len(receiver.requests) >= 1)
    headers, body = receiver.requests[0]
    assert signatures_valid(rotated["secret"], headers, body) == [True, False]
    assert signatures_valid(wh["secret"], headers, body) == [False, True]


def test_finished_job_with_warnings_and_sweep_events(hooks, auth, checkpoint, dataset, settings):
    """job.succeeded + job.warning written by the worker's finish, in its transaction; sweep.finished when
    the last job of a sweep ends (here: a sweep cancelled while queued)."""
    from sqlalchemy import select, update

    from mergetune.common.db import session_scope
    from mergetune.common.models import Job, JobStatus, WebhookDelivery
    from mergetune.worker import jobdb

    wh = hooks.post(
        "/v1/webhooks", headers=auth, json={"url": "http://127.0.0.1:9/x", "events": EVENTS}
    ).json()
    job = hooks.post(
        "/v1/jobs", headers=auth, json={"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"]}
    ).json()
    with session_scope(settings.DATABASE_URL) as s:
        s.execute(
            update(Job).where(Job.id == job["id"]).values(status="running", worker_host="w1", attempts=1)
        )
    verdict = {
        "text": "Recovered HM 1.0",
        "ok": False,
        "warnings": [{"code": "below_zero_shot", "message": "m"}],
    }
    assert jobdb.finish_job(
        settings.DATABASE_URL,
        job["id"],
        "w1",
        JobStatus.succeeded,
        message="done",
        verdict=verdict,
        attempt=1,
    )
    sw = hooks.post(
        "/v1/sweeps",
        headers=auth,
        json={
            "cells": [
                {"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"], "seed": s} for s in (1, 2)
            ]
        },
    ).json()
    assert hooks.post(f"/v1/sweeps/{sw['id']}/cancel", headers=auth).status_code == 200
    with session_scope(settings.DATABASE_URL) as s:
        rows = list(
            s.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.endpoint_id == wh["id"])
                .order_by(WebhookDelivery.id)
            )
        )
        events = sorted(((d.event_type, json.loads(d.payload)) for d in rows), key=lambda e: e[0])
    assert [t for t, _ in events] == [
        "job.cancelled",
        "job.cancelled",
        "job.succeeded",
        "job.warning",
        "sweep.finished",
    ]
    job_now = hooks.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert events[2][1]["data"] == job_now and events[3][1]["data"] == job_now
    assert job_now["verdict"]["warnings"][0]["code"] == "below_zero_shot"
    sweep_now = hooks.get(f"/v1/sweeps/{sw['id']}", headers=auth).json()
    assert sweep_now["status"] == "cancelled"
    assert events[4][1]["data"] == sweep_now and events[4][1]["type"] == "sweep.finished"
    assert {e["data"]["id"] for _, e in events[:2]} == {j["id"] for j in sweep_now["jobs"]}
    # the dispatcher's catch-up pass finds nothing more to write
    from mergetune.common.webhooks import finish_sweeps

    with session_scope(settings.DATABASE_URL) as s:
        assert finish_sweeps(s) == 0
