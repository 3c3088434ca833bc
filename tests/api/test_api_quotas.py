"""Quotas: a hard stored-bytes cap on uploads (403 naming it; nothing stored), device seconds per UTC
day (429 with Retry-After until midnight for new jobs and sweeps; queued jobs wait, their queue reason
quota_exceeded, and the scheduler passes the project over). All off by default."""

from __future__ import annotations

from api_support import upload
from sqlalchemy import update

from mergetune.common import scheduling
from mergetune.common.db import session_scope
from mergetune.common.models import DeviceUsage, Job, Project, utcnow


def _project(settings, job_or_ckpt_model, obj_id):
    with session_scope(settings.DATABASE_URL) as s:
        return s.get(job_or_ckpt_model, obj_id).project_id


def _set(settings, project_id, **values):
    with session_scope(settings.DATABASE_URL) as s:
        s.execute(update(Project).where(Project.id == project_id).values(**values))


def test_stored_bytes_is_a_hard_cap_on_uploads(client, auth, checkpoint, ctx_and_bytes, settings):
    from mergetune.common.models import Checkpoint

    project = _project(settings, Checkpoint, checkpoint["id"])
    used = client.get("/v1/usage", headers=auth).json()["stored_bytes"]["total"]
    _set(settings, project, quota_stored_bytes=used + 10)
    r = upload(client, auth, ctx_and_bytes[1])
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded" and err["param"] == "file"
    assert err["message"].startswith(
        f"quota_stored_bytes: the project stores {used} of its {used + 10} bytes"
    )
    assert len(client.get("/v1/checkpoints", headers=auth).json()["data"]) == 1  # nothing stored
    assert client.get("/v1/usage", headers=auth).json()["stored_bytes"]["total"] == used
    _set(settings, project, quota_stored_bytes=None)  # off again
    assert upload(client, auth, ctx_and_bytes[1]).status_code == 201


def test_device_seconds_per_day_refuses_new_jobs_and_holds_queued_ones(client, auth, job_body, settings):
    with session_scope(settings.DATABASE_URL) as s:  # earlier tests' queued jobs stand aside
        s.execute(update(Job).where(Job.status == "queued").values(status="cancelled", finished_at=utcnow()))
    queued = client.post("/v1/jobs", headers=auth, json=job_body).json()
    project = _project(settings, Job, queued["id"])
    with session_scope(settings.DATABASE_URL) as s:
        s.add(
            DeviceUsage(
                project_id=project, job_id="job_earlier", day=utcnow().date().isoformat(), seconds=120.0
            )
        )
    _set(settings, project, quota_device_seconds_per_day=100.0)

    r = client.post("/v1/jobs", headers=auth, json=job_body)
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["code"] == "quota_exceeded"
    assert err["message"].startswith(
        "quota_device_seconds_per_day: the project used 120 of its 100 device seconds"
    )
    assert 0 < int(r.headers["retry-after"]) <= 86401
    body = {"cells": [{"checkpoint_id": job_body["checkpoint_id"], "dataset_id": job_body["dataset_id"]}]}
    assert client.post("/v1/sweeps", headers=auth, json=body).status_code == 429
    assert len(client.get("/v1/jobs", headers=auth).json()["data"]) == 1  # nothing created

    # the job queued before waits: its queue says why, and no worker picks it today
    q = client.get(f"/v1/jobs/{queued['id']}", headers=auth).json()
    assert q["status"] == "queued" and q["queue"]["reason"] == "quota_exceeded"
    with session_scope(settings.DATABASE_URL) as s:
        assert scheduling.pick_next(s, utcnow(), 3600).job is None
    _set(settings, project, quota_device_seconds_per_day=500.0)
    assert client.post("/v1/jobs", headers=auth, json=job_body).status_code == 202
    assert (
        client.get(f"/v1/jobs/{queued['id']}", headers=auth).json()["queue"]["reason"] == "waiting_for_worker"
    )
    with session_scope(settings.DATABASE_URL) as s:
        assert scheduling.pick_next(s, utcnow(), 3600).job.id == queued["id"]
