"""GET /v1/jobs/{id}, the most polled request, on the real Postgres: one SQL statement per request once
warm (the token, the queue plan and a queued job's estimate are reused for a few seconds per process);
a revocation or a change of the queue made in this process shows at once, one made by another process
(written here on a connection of its own, as a worker or `mergetune token revoke` elsewhere would) within
the documented time; the answer carries an ETag and If-None-Match with it answers 304."""

from __future__ import annotations

import time
from datetime import timedelta

import psycopg
import pytest
from sqlalchemy import event, update

from mergetune.api import deps
from mergetune.api.services import jobs as job_service
from mergetune.common import repositories as repo
from mergetune.common import scheduling
from mergetune.common.db import get_engine, session_scope
from mergetune.common.models import Job, utcnow


@pytest.fixture
def quiet_queue(settings):
    """API tests share one database: earlier tests' queued jobs would stand in this one's queue."""
    with session_scope(settings.DATABASE_URL) as s:
        s.execute(
            update(Job)
            .where(Job.status.in_(["queued", "validating", "running", "evaluating", "cancelling"]))
            .values(status="cancelled", finished_at=utcnow())
        )


def _elsewhere(settings, sql: str, *params: object) -> None:
    """A write by another process: its own connection, unseen by this process's sessions."""
    with psycopg.connect(settings.DATABASE_URL.replace("+psycopg", ""), autocommit=True) as c:
        c.execute(sql, params)


def _position(client, auth, job_id):
    body = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    return body["queue"]["position"] if body["queue"] else None


def test_one_statement_per_get_once_warm(client, auth, job_body, settings, quiet_queue, monkeypatch):
    # Long enough that a slow box cannot expire the entries during the ten counted requests.
    monkeypatch.setattr(deps._principals, "ttl", 60.0)
    monkeypatch.setattr(scheduling._plans, "ttl", 60.0)
    monkeypatch.setattr(job_service._queued_etas, "ttl", 60.0)
    running, queued = (client.post("/v1/jobs", headers=auth, json=job_body).json()["id"] for _ in range(2))
    third = client.post("/v1/jobs", headers=auth, json=job_body).json()["id"]
    with session_scope(settings.DATABASE_URL) as s:
        s.execute(
            update(Job)
            .where(Job.id == running)
            .values(
                status="running",
                worker_host="w@hot",
                started_at=utcnow() - timedelta(seconds=60),
                attempt_started_at=utcnow() - timedelta(seconds=60),
                progress={"epoch": 1, "epochs": 2, "step": 5, "steps": 10, "loss": 1.5},
                progress_at=utcnow(),
            )
        )
    for job_id in (running, queued, third):  # warm: the token, the plan, the estimate
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200

    statements: list[str] = []

    def count(_conn, _cursor, statement, *_args):
        statements.append(statement)

    engine = get_engine(settings.DATABASE_URL)
    event.listen(engine, "before_cursor_execute", count)
    try:
        for job_id, status, position in (
            (running, "running", None),
            (queued, "queued", 1),
            (third, "queued", 2),
        ):
            statements.clear()
            for _ in range(10):
                r = client.get(f"/v1/jobs/{job_id}", headers=auth)
                assert r.status_code == 200
                body = r.json()
                assert (body["id"], body["status"], body["queue_position"]) == (job_id, status, position)
            assert len(statements) == 10, statements  # one SELECT of the job per request, nothing else
            assert all("FROM jobs" in s for s in statements)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    body = client.get(f"/v1/jobs/{running}", headers=auth).json()
    assert body["progress"]["step"] == 5 and body["estimated_finish"] is not None


def test_revocation_here_at_once_elsewhere_within_the_cache_time(
    client, auth, job_body, settings, monkeypatch
):
    job_id = client.post("/v1/jobs", headers=auth, json=job_body).json()["id"]
    secret = auth["Authorization"].split()[1]
    assert client.get(f"/v1/jobs/{job_id}", headers=auth).status_code == 200

    # Revoked by this process (as `mergetune token revoke` run here): refused by the very next request.
    with session_scope(settings.DATABASE_URL) as s:
        token, _ = repo.find_token(s, secret)
        repo.revoke_token(s, token)
    r = client.get(f"/v1/jobs/{job_id}", headers=auth)
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_revoked"

    # Revoked by another process: this one still knows the token for at most AUTH_CACHE_SECONDS.
    assert deps.AUTH_CACHE_SECONDS == 5.0
    monkeypatch.setattr(deps._principals, "ttl", 1.0)
    other = {"Authorization": f"Bearer {_fresh_token_of(settings, secret)}"}
    for _ in range(2):  # the first use records last_used_at (a write here); the second is remembered
        assert client.get(f"/v1/jobs/{job_id}", headers=other).status_code == 200
    _elsewhere(
        settings,
        "UPDATE api_tokens SET revoked_at = now() WHERE token_hash = %s",
        repo.hash_token(other["Authorization"].split()[1]),
    )
    revoked_at = time.monotonic()
    assert client.get(f"/v1/jobs/{job_id}", headers=other).status_code == 200  # known for a while longer
    while (r := client.get(f"/v1/jobs/{job_id}", headers=other)).status_code == 200:
        assert time.monotonic() - revoked_at < 1.0 + 0.5, "still accepted past the cache time"
        time.sleep(0.05)
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_revoked"


def _fresh_token_of(settings, secret: str) -> str:
    """A second token of the same project as ``secret``."""
    with session_scope(settings.DATABASE_URL) as s:
        token, _ = repo.find_token(s, secret)
        _, new_secret = repo.create_token(s, token.project)
    return new_secret


def test_cached_queue_plan_follows_the_queue(client, auth, job_body, settings, quiet_queue):
    a, b, c = (client.post("/v1/jobs", headers=auth, json=job_body).json()["id"] for _ in range(3))
    assert [_position(client, auth, j) for j in (a, b, c)] == [1, 2, 3]

    # A worker (another process) takes the first job: the others move up within PLAN_CACHE_SECONDS.
    _elsewhere(
        settings,
        "UPDATE jobs SET status = 'running', worker_host = 'w@plan', started_at = now(), "
        "attempt_started_at = now() WHERE id = %s",
        a,
    )
    taken = time.monotonic()
    while _position(client, auth, b) != 1:
        assert time.monotonic() - taken < scheduling.PLAN_CACHE_SECONDS + 1.0, "stale queue plan"
        time.sleep(0.05)
    assert _position(client, auth, c) == 2
    assert client.get(f"/v1/jobs/{a}", headers=auth).json()["queue"] is None

    # The job ahead ends elsewhere and a new one is queued through this process: seen at once.
    _elsewhere(settings, "UPDATE jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", a)
    assert client.post(f"/v1/jobs/{b}/cancel", headers=auth).status_code == 200  # a write here
    assert _position(client, auth, c) == 1
    d = client.post("/v1/jobs", headers=auth, json=job_body).json()["id"]
    assert _position(client, auth, d) == 2


def test_etag_answers_304_while_unchanged(client, auth, job_body, settings):
    job_id = client.post("/v1/jobs", headers=auth, json=job_body).json()["id"]
    client.post(f"/v1/jobs/{job_id}/cancel", headers=auth)  # finished: the object no longer moves
    first = client.get(f"/v1/jobs/{job_id}", headers=auth)
    etag = first.headers["ETag"]
    assert first.status_code == 200 and first.json()["status"] == "cancelled"
    again = client.get(f"/v1/jobs/{job_id}", headers={**auth, "If-None-Match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["ETag"] == etag
    assert client.get(f"/v1/jobs/{job_id}", headers={**auth, "If-None-Match": '"other"'}).status_code == 200
    # A change gives another ETag.
    client.patch(f"/v1/jobs/{job_id}", headers=auth, json={"notes": "looked at"})
    changed = client.get(f"/v1/jobs/{job_id}", headers={**auth, "If-None-Match": etag})
    assert changed.status_code == 200 and changed.json()["notes"] == "looked at"
    assert changed.headers["ETag"] != etag
    # Unknown jobs stay 404 naming id; a missing or unknown token 401.
    missing = client.get("/v1/jobs/job_nope", headers=auth)
    assert missing.status_code == 404 and missing.json()["error"]["param"] == "id"
    r = client.get(f"/v1/jobs/{job_id}")
    assert r.status_code == 401 and r.json()["error"]["code"] == "missing_token"
    r = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": "Bearer mt_unknown"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
