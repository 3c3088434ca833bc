"""DELETE frees the store: a real job's files (artifacts, epoch state) and a checkpoint's upload and
tensors leave the local directory or the S3 bucket (moto's server over HTTP), the answer counts the
bytes the store held, and whatever an unfinished job uses is refused with 409."""

from __future__ import annotations

import pytest
import worker_support as ws
from fastapi.testclient import TestClient

from mergetune.common.db import session_scope
from mergetune.common.models import Project
from mergetune.common.storage import get_store
from mergetune.worker import pipeline


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
