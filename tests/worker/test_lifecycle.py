"""DELETE frees the store: a real job's files (artifacts, epoch state) and a checkpoint's upload and
tensors leave the local directory or the S3 bucket (moto's server over HTTP), the answer counts the
bytes the store held, and whatever an unfinished job uses is refused with 409."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import worker_support as ws
from fastapi.testclient import TestClient

from mergetune.common.db import session_scope
from mergetune.common.models import Project
from mergetune.common.storage import get_store
from mergetune.worker import pipeline

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def _record(name: str, figures: dict) -> None:
    """The figures a run measured (bytes freed as the store saw them), in test-artifacts/<name>.json."""
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.json").write_text(json.dumps(figures, indent=1) + "\n")


def _held(store, prefix):
    keys = store.list(prefix)
    return sum(store.size(k) for k in keys), len(keys)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_delete_frees_the_store(request, tmp_path, worker_pg_url, ctx_ft, kind):
    extra = {}
    if kind == "s3":
        endpoint = request.getfixturevalue("s3_endpoint")
        request.getfixturevalue("s3_credentials")
        extra = {"ARTIFACT_URL": "s3://mergetune-delete/prod", "S3_ENDPOINT_URL": endpoint}
    ws.flush_redis(ws.WORKER_REDIS_DB)
    settings = ws.make_settings(tmp_path / "home", worker_pg_url, f"{ws.REDIS_URL}/{ws.WORKER_REDIS_DB}")
    if extra:
        settings = settings.model_copy(update=extra)
    store = get_store(settings)
    if kind == "s3":
        store.ensure_bucket()
    url = settings.DATABASE_URL
    project = ws.make_project(url)
    ck = ws.make_checkpoint(url, store, project, ctx_ft)
    ds = ws.make_dataset(url, settings, project)
    done = ws.make_job(url, project, ck, ds, epochs=1)
    assert pipeline.run_job(done, settings=settings, hostname="del@test", store=store) == "succeeded"
    waiting = ws.make_job(url, project, ck, ds, epochs=1)  # queued: uses the checkpoint and dataset

    from mergetune.api.main import create_app
    from mergetune.common import repositories as repo

    with session_scope(url) as s:
        _, secret = repo.create_token(s, s.get(Project, project))
    h = {"Authorization": f"Bearer {secret}"}
    job_bytes, job_files = _held(store, f"jobs/{done}/")
    ck_bytes, ck_files = _held(store, f"checkpoints/{ck}/")
    assert job_bytes > 0 and job_files >= 5 and ck_bytes > 0
    with TestClient(create_app(settings)) as client:
        for path in (f"/v1/checkpoints/{ck}", f"/v1/jobs/{waiting}", f"/v1/datasets/{ds}"):
            r = client.delete(path, headers=h)
            assert r.status_code == 409 and r.json()["error"]["code"] == "in_use", (path, r.text)
        assert waiting in client.delete(f"/v1/checkpoints/{ck}", headers=h).json()["error"]["message"]
        assert _held(store, f"checkpoints/{ck}/") == (ck_bytes, ck_files)  # nothing half-removed

        r = client.delete(f"/v1/jobs/{done}", headers=h)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "id": done,
            "object": "job",
            "deleted": True,
            "freed_bytes": job_bytes,
            "freed_files": job_files,
        }
        assert store.list(f"jobs/{done}/") == []
        if kind == "s3":
            listed = store.client.list_objects_v2(Bucket="mergetune-delete", Prefix=f"prod/jobs/{done}/")
            assert listed.get("KeyCount", 0) == 0
        else:
            assert not (tmp_path / "home" / "artifacts" / "jobs" / done).exists()
        assert client.get(f"/v1/jobs/{done}", headers=h).status_code == 404
        assert client.delete(f"/v1/jobs/{done}", headers=h).status_code == 404

        assert client.post(f"/v1/jobs/{waiting}/cancel", headers=h).json()["status"] == "cancelled"
        r = client.delete(f"/v1/checkpoints/{ck}", headers=h)
        assert r.status_code == 200 and (r.json()["freed_bytes"], r.json()["freed_files"]) == (
            ck_bytes,
            ck_files,
        )
        assert store.list(f"checkpoints/{ck}/") == []
        # the dataset: a cancelled job still names it, then none
        assert client.delete(f"/v1/datasets/{ds}", headers=h).status_code == 409
        assert client.delete(f"/v1/jobs/{waiting}", headers=h).json()["freed_bytes"] == 0
        r = client.delete(f"/v1/datasets/{ds}", headers=h)
        assert r.status_code == 200 and r.json()["freed_bytes"] == 0
        assert client.get(f"/v1/datasets/{ds}", headers=h).status_code == 404
        usage = client.get("/v1/usage", headers=h).json()
        assert usage["stored_bytes"]["total"] == 0 and usage["device_seconds"] > 0  # the ledger stays
    _record(f"delete_{kind}", {"job": [job_bytes, job_files], "checkpoint": [ck_bytes, ck_files]})


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_retention_expires_old_jobs_in_the_reconciler(request, tmp_path, worker_pg_url, ctx_ft, kind):
    from datetime import timedelta

    from sqlalchemy import update

    from mergetune.common.models import Job, utcnow
    from mergetune.worker.reconcile import reconcile_once

    extra = {}
    if kind == "s3":
        extra = {
            "ARTIFACT_URL": "s3://mergetune-retention/prod",
            "S3_ENDPOINT_URL": request.getfixturevalue("s3_endpoint"),
        }
        request.getfixturevalue("s3_credentials")
    settings = ws.make_settings(tmp_path / "home", worker_pg_url, f"{ws.REDIS_URL}/{ws.WORKER_REDIS_DB}")
    settings = settings.model_copy(update=extra)
    store = get_store(settings)
    if kind == "s3":
        store.ensure_bucket()
    url = settings.DATABASE_URL
    project = ws.make_project(url)
    ck = ws.make_checkpoint(url, store, project, ctx_ft)
    ds = ws.make_dataset(url, settings, project)
    old, recent = ws.make_job(url, project, ck, ds, epochs=1), ws.make_job(url, project, ck, ds, epochs=1)
    for job_id in (old, recent):
        assert pipeline.run_job(job_id, settings=settings, hostname="ret@test", store=store) == "succeeded"
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == old).values(finished_at=utcnow() - timedelta(days=8)))
        s.execute(update(Job).where(Job.id == recent).values(finished_at=utcnow() - timedelta(days=6)))
    held, files = _held(store, f"jobs/{old}/")
    assert held > 0 and ws.artifacts(url, old)

    assert reconcile_once(settings).expired == {}  # no retention set: everything stays
    with session_scope(url) as s:
        s.execute(update(Project).where(Project.id == project).values(retention_days=7))
    rep = reconcile_once(settings)
    assert list(rep.expired) == [old] and (rep.expired[old].bytes, rep.expired[old].files) == (held, files)
    row = ws.job_row(url, old)
    assert row["status"] == "expired" and row["metrics"] is not None  # the record stays
    assert store.list(f"jobs/{old}/") == [] and ws.artifacts(url, old) == []
    last = [e for e in ws.events(url, old) if e["type"] == "status"][-1]
    assert last["message"] == (
        f"Expired after the project's retention of 7 days: {held} bytes in {files} files removed from the store"
    )
    assert ws.job_row(url, recent)["status"] == "succeeded" and store.list(f"jobs/{recent}/")
    assert _held(store, f"checkpoints/{ck}/")[0] > 0  # inputs are not the retention's
    assert reconcile_once(settings).expired == {}  # once
    _record(f"retention_{kind}", {"expired_job": [held, files]})
