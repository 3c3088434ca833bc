"""The dashboard's webhooks pages over HTTP against the real app, Postgres and a real receiver:
registration (the secret shown once and signing what the receiver gets; errors naming the field and
creating nothing), CSRF on every form, the delivery log after a receiver answering 500, 500 and an
endpoint disabled for failing, enable, redeliver, rotate, delete, and other projects seeing none of it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import pytest
from test_api_webhooks import Receiver, dispatch_all, signatures_valid

SECRET = re.compile(r'id="webhook-secret">(whsec_[A-Za-z0-9+/=]+)<')


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()
    r.server.server_close()


@pytest.fixture
def hooks(make_client):
    # Loopback targets allowed (the test receiver); no wait between retries; an endpoint whose
    # failures span any time at all is disabled at its second failure.
    return make_client(
        WEBHOOKS_ALLOW_PRIVATE=True, WEBHOOK_RETRY_SCHEDULE="0,0,0", WEBHOOK_DISABLE_AFTER_SECONDS=0.001
    )


def login(client, auth: dict[str, str]) -> str:
    """Log the client in with the token of ``auth``; the CSRF token of its forms."""
    token = auth["Authorization"].removeprefix("Bearer ")
    r = client.post("/login", data={"token": token, "next": "/webhooks"}, follow_redirects=False)
    assert r.status_code == 303, r.text
    return csrf_of(client.get("/webhooks").text)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)


def rows(html: str, table: str) -> list[str]:
    body = html.split(f'id="{table}"', 1)[1].split("</table>", 1)[0]
    return re.findall(r"<tr data-id=\"[^\"]+\">.*?</tr>", body, flags=re.S)


def test_pages_need_a_login_and_csrf(hooks, auth) -> None:
    for path in ("/webhooks", "/webhooks/wh_x"):
        r = hooks.get(path, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login?next="), path
    csrf = login(hooks, auth)
    page = hooks.get("/webhooks").text
    assert '<a href="/webhooks" class="active" aria-current="page">Webhooks</a>' in page
    assert "No webhooks yet." in page
    body = {"url": "https://93.184.215.14/h", "events": "job.failed"}
    assert hooks.post("/webhooks", data=body).status_code == 403
    assert hooks.post("/webhooks", data={**body, "csrf": "0" * 64}).status_code == 403
    assert hooks.get("/v1/webhooks", headers=auth).json()["data"] == []
    r = hooks.post("/webhooks", data={**body, "csrf": csrf})
    assert r.status_code == 201
    wh_id = re.search(r'id="created-id">(wh_[0-9a-f]+)<', r.text).group(1)
    for action in ("rotate-secret", "enable", "delete", "deliveries/whd_x/redeliver"):
        for data in ({}, {"csrf": "0" * 64}):
            r = hooks.post(f"/webhooks/{wh_id}/{action}", data=data, follow_redirects=False)
            assert r.status_code == 403, (action, data)
    got = hooks.get(f"/v1/webhooks/{wh_id}", headers=auth).json()
    assert got["secret_rotated_at"] is None and got["enabled"] is True


@pytest.mark.parametrize(
    ("data", "param", "message"),
    [
        ({"url": "https://93.184.215.14/h"}, "events", "choose at least one event"),
        ({"url": "https://93.184.215.14/h", "events": "job.exploded"}, "events[0]", "unknown event"),
        ({"url": "ftp://93.184.215.14/h", "events": "job.failed"}, "url", ""),
        ({"url": "http://10.1.2.3/h", "events": "job.failed"}, "url", ""),
        ({"url": "", "events": "job.failed"}, "url", ""),
    ],
)
def test_registration_errors_name_the_field_and_create_nothing(client, auth, data, param, message) -> None:
    csrf = login(client, auth)
    r = client.post("/webhooks", data={**data, "csrf": csrf})
    assert r.status_code == 422, r.text
    assert f'<code id="register-error-param">{param}</code>' in r.text
    assert message in r.text.split('id="register-error"', 1)[1].split("</p>", 1)[0]
    # The form keeps what was typed; nothing was registered, no secret shown.
    assert f'value="{data["url"]}"' in r.text and "webhook-secret" not in r.text
    assert client.get("/v1/webhooks", headers=auth).json()["data"] == []


def test_register_deliver_disable_enable_redeliver_rotate_delete(hooks, auth, other_auth, job_body, receiver):
    csrf = login(hooks, auth)
    r = hooks.post(
        "/webhooks",
        data={
            "url": receiver.url,
            "events": ["job.cancelled", "job.failed"],
            "description": "ci",
            "csrf": csrf,
        },
    )
    assert r.status_code == 201, r.text
    secret = SECRET.search(r.text).group(1)
    wh_id = re.search(r'id="created-id">(wh_[0-9a-f]+)<', r.text).group(1)
    got = hooks.get(f"/v1/webhooks/{wh_id}", headers=auth).json()
    assert (got["url"], got["events"], got["description"]) == (
        receiver.url,
        ["job.cancelled", "job.failed"],
        "ci",
    )
    listed = hooks.get("/webhooks").text
    (row,) = rows(listed, "webhooks")
    assert wh_id in row and receiver.url in row and "job.cancelled, job.failed" in row and "enabled" in row
    assert secret not in listed  # shown once

    # An event; the receiver fails twice, so the endpoint is disabled with the event still pending.
    job = hooks.post("/v1/jobs", headers=auth, json=job_body).json()
    assert hooks.post(f"/v1/jobs/{job['id']}/cancel", headers=auth).json()["status"] == "cancelled"
    receiver.codes = [500, 500]
    dispatch_all(hooks, lambda: len(receiver.requests) >= 2)
    detail = hooks.get(f"/webhooks/{wh_id}").text
    assert re.search(r'id="webhook-state">disabled at .*no successful delivery since', detail)
    (drow,) = rows(detail, "deliveries")
    assert "job.cancelled" in drow and ">pending<" in drow.replace("<br>", "<")
    assert len(re.findall(r"HTTP 500 · \d+ ms", drow)) == 2
    assert "Redeliver" not in drow  # pending: nothing to redeliver
    (row,) = rows(hooks.get("/webhooks").text, "webhooks")
    assert "disabled" in row and "no successful delivery since" in row

    r = hooks.post(f"/webhooks/{wh_id}/enable", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303
    detail = hooks.get(r.headers["location"]).text
    assert 'id="webhook-state">enabled' in detail and 'id="webhook-notice"' in detail
    dispatch_all(hooks, lambda: len(receiver.requests) >= 3)
    (drow,) = rows(hooks.get(f"/webhooks/{wh_id}").text, "deliveries")
    assert re.findall(r"HTTP (\d+) · \d+ ms", drow) == ["500", "500", "200"]
    assert "succeeded" in drow and "Redeliver" in drow
    headers, body = receiver.requests[-1]
    assert signatures_valid(secret, headers, body) == [True]  # the secret the page showed signs
    assert json.loads(body)["data"]["id"] == job["id"]
    assert {h["webhook-id"] for h, _ in receiver.requests} == {headers["webhook-id"]}

    # Redeliver from the log: the same webhook-id again; while pending a second press is refused.
    d_id = re.search(r'data-id="(whd_[0-9a-f]+)"', drow).group(1)
    r = hooks.post(
        f"/webhooks/{wh_id}/deliveries/{d_id}/redeliver", data={"csrf": csrf}, follow_redirects=False
    )
    assert r.status_code == 303 and "notice=" in r.headers["location"]
    r = hooks.post(f"/webhooks/{wh_id}/deliveries/{d_id}/redeliver", data={"csrf": csrf})
    assert r.status_code == 200 and 'id="webhook-error">delivery' in r.text and "still pending" in r.text
    dispatch_all(hooks, lambda: len(receiver.requests) >= 4)
    assert receiver.requests[3][0]["webhook-id"] == headers["webhook-id"] and receiver.requests[3][1] == body

    # Other projects: 404 on every page and form; nothing changes.
    other = make_other(hooks)
    other_csrf = login(other, other_auth)
    assert wh_id not in other.get("/webhooks").text
    assert other.get(f"/webhooks/{wh_id}").status_code == 404
    for action in ("rotate-secret", "enable", "delete", f"deliveries/{d_id}/redeliver"):
        assert other.post(f"/webhooks/{wh_id}/{action}", data={"csrf": other_csrf}).status_code == 404, action

    # Rotate: a new secret shown once; both sign during the grace period.
    r = hooks.post(f"/webhooks/{wh_id}/rotate-secret", data={"csrf": csrf})
    assert r.status_code == 200
    new_secret = SECRET.search(r.text).group(1)
    assert new_secret != secret and "The previous secret also signs until" in r.text
    assert new_secret not in hooks.get(f"/webhooks/{wh_id}").text
    hooks.post(f"/webhooks/{wh_id}/deliveries/{d_id}/redeliver", data={"csrf": csrf})
    dispatch_all(hooks, lambda: len(receiver.requests) >= 5)
    h5, b5 = receiver.requests[4]
    assert signatures_valid(new_secret, h5, b5) == [True, False]
    assert signatures_valid(secret, h5, b5) == [False, True]

    # Delete: gone with its log.
    r = hooks.post(f"/webhooks/{wh_id}/delete", data={"csrf": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == f"/webhooks?deleted={wh_id}"
    assert f'id="webhook-deleted">Deleted <code>{wh_id}</code>' in hooks.get(r.headers["location"]).text
    assert hooks.get(f"/v1/webhooks/{wh_id}", headers=auth).status_code == 404
    assert hooks.get(f"/webhooks/{wh_id}").status_code == 404


def make_other(client: Any):
    from fastapi.testclient import TestClient

    other = TestClient(client.app)
    return other
