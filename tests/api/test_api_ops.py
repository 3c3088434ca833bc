from __future__ import annotations

from datetime import timedelta

import pytest
from api_support import upload
from fastapi.testclient import TestClient

from mergetune.common.db import DatabaseNotMigrated, session_scope
from mergetune.common.models import Job, utcnow


def test_healthz_and_readyz(client):
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok", "storage": "ok"}}


def test_readyz_503_when_broker_is_down(make_client):
    c = make_client(BROKER_URL="redis://127.0.0.1:1/0")
    r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "not_ready"
    assert "broker" in r.json()["error"]["message"]


def test_metrics(client, auth, job_body, settings, ctx_and_bytes):
    job = client.post("/v1/jobs", headers=auth, json=job_body).json()
    with session_scope(settings.DATABASE_URL) as s:
        row = s.get(Job, job["id"])
        row.status = "succeeded"
        row.started_at = utcnow() - timedelta(seconds=45)
        row.finished_at = row.started_at + timedelta(seconds=45)
    upload(client, auth, ctx_and_bytes[1])
    text = client.get("/metrics").text
    assert 'mergetune_jobs{status="succeeded"}' in text
    assert 'mergetune_jobs{status="queued"}' in text
    assert "mergetune_queue_depth " in text
    assert 'mergetune_job_duration_seconds_bucket{le="60.0",status="succeeded"}' in text
    assert 'mergetune_job_duration_seconds_bucket{le="30.0",status="succeeded"}' in text
    # this test's upload plus the fixture's
    line = next(ln for ln in text.splitlines() if ln.startswith("mergetune_upload_bytes_total "))
    assert float(line.split()[1]) == 2 * len(ctx_and_bytes[1])
    assert (
        'mergetune_http_request_duration_seconds_count{method="POST",route="/v1/jobs",status="202"} 1.0'
        in text
    )


def test_openapi_documents_errors(client):
    spec = client.get("/openapi.json").json()
    assert "ErrorResponse" in spec["components"]["schemas"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    for path, ops in spec["paths"].items():
        if not path.startswith("/v1/"):
            continue
        for method, op in ops.items():
            assert "401" in op["responses"], (method, path)
            for code, resp in op["responses"].items():
                if code.startswith(("4", "5")):
                    ref = resp["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/ErrorResponse"), (method, path, code)
    upload_op = spec["paths"]["/v1/checkpoints"]["post"]
    assert "413" in upload_op["responses"]
    assert "multipart/form-data" in upload_op["requestBody"]["content"]


def test_404_and_405_use_the_error_body(client, auth):
    r = client.get("/v1/nothing", headers=auth)
    assert r.status_code == 404
    assert r.json() == {"error": {"code": "not_found", "message": "Not Found", "param": None}}
    r = client.put("/v1/jobs", headers=auth)
    assert r.status_code == 405
    assert r.json()["error"]["code"] == "method_not_allowed"


def test_unmigrated_database_is_refused(settings, tmp_path):
    from mergetune.api.main import create_app

    s = settings.model_copy(update={"DATABASE_URL": f"sqlite:///{tmp_path / 'empty.db'}"})
    with pytest.raises(
        DatabaseNotMigrated, match=r"at migration \(none\) but this code needs .*mergetune migrate"
    ):
        with TestClient(create_app(s)):
            pass


def test_a_job_created_while_the_broker_is_down_stays_queued_and_the_reconciler_sends_it(
    make_client, settings, auth, job_body, redis_client
):
    from mergetune.worker.reconcile import broker_job_ids, reconcile_once

    # earlier tests' messages for jobs that no longer wait would be wake-ups that start this job
    redis_client.flushdb()
    down = make_client(BROKER_URL="redis://127.0.0.1:1/0")
    r = down.post("/v1/jobs", headers=auth, json=job_body)
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["error"] is None
    events = down.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()["data"]
    warning = [e for e in events if e["type"] == "broker"]
    assert len(warning) == 1 and warning[0]["level"] == "warning"
    assert "stays queued" in warning[0]["message"]
    assert job["id"] not in (broker_job_ids(settings) or set())

    # the broker answers again: one reconciler pass sends it, once
    live = settings.model_copy(update={"RECONCILE_QUEUE_GRACE": 0.0})
    report = reconcile_once(live)
    assert job["id"] in report.lost
    assert job["id"] in (broker_job_ids(settings) or set())
    assert job["id"] not in reconcile_once(settings).lost  # its message is there now
    assert down.get(f"/v1/jobs/{job['id']}", headers=auth).json()["status"] == "queued"
