"""Deadlines: a job that reaches its max_runtime_seconds stops at its next step, keeps its last epoch
state in the store and ends ``timed_out``; a clone (``resume_from``) continues from that state to the
end, every epoch logged once; the project's default applies to jobs that give none."""

from __future__ import annotations

import time

import torch
import worker_support as ws
from fastapi.testclient import TestClient
from sqlalchemy import update

from mergetune.common.db import session_scope
from mergetune.common.models import Job, Project
from mergetune.worker import pipeline
from mergetune.worker.pipeline import state_key

HOST = "deadline@test"
EPOCHS = 40


def _epochs(url, job_id):
    return [e["data"]["epoch"] for e in ws.events(url, job_id) if e["type"] == "epoch"]


def test_a_job_times_out_keeps_its_state_and_a_clone_resumes_from_it(
    wsettings, store, rows, ctx_ft, monkeypatch
):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds, epochs=EPOCHS, batch_size=1)
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(max_runtime_seconds=4))
    # Each step takes at least 20 ms, so the 40 epochs take longer than the deadline however warm the
    # process's caches are (earlier tests in this process can make the tiny job finish within 4 s).
    on_progress = pipeline.JobCallbacks.on_progress

    def paced(self, *args, **kwargs):
        time.sleep(0.02)
        return on_progress(self, *args, **kwargs)

    monkeypatch.setattr(pipeline.JobCallbacks, "on_progress", paced)
    t0 = time.monotonic()
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "timed_out"
    monkeypatch.undo()
    took = time.monotonic() - t0
    job = ws.job_row(url, job_id)
    assert job["status"] == "timed_out" and job["error"]["code"] == "timed_out"
    assert 4.0 <= job["run_seconds"] < 4.0 + 2.0 and took < 4.0 + 5.0  # stops at the next step
    done = _epochs(url, job_id)
    assert done == list(range(1, len(done) + 1)) and 1 <= len(done) < EPOCHS
    # the store keeps the last epoch state (and nothing else: no artifacts were written)
    state = torch.load(store.local_path(state_key(job_id)), weights_only=True)
    assert int(state["epoch"]) == done[-1]
    assert ws.artifacts(url, job_id) == []
    last = [e for e in ws.events(url, job_id) if e["type"] == "status"][-1]
    assert last["message"].startswith("Job timed out: its run time reached max_runtime_seconds (4 s)")
    assert f"its epoch {done[-1]} state is kept" in last["message"]

    from mergetune.api.main import create_app
    from mergetune.common import repositories as repo

    with session_scope(url) as s:
        _, secret = repo.create_token(s, s.get(Project, project))
    auth = {"Authorization": f"Bearer {secret}"}
    body = {
        "checkpoint_id": ck,
        "dataset_id": ds,
        "backbone": dict(ws.TINY_BACKBONE),
        "hyperparameters": dict(job["hyperparameters"]),
        "resume_from": job_id,
    }
    with TestClient(create_app(wsettings)) as client:
        other = client.post(
            "/v1/jobs", headers=auth, json={**body, "hyperparameters": {**body["hyperparameters"], "lr": 0.5}}
        )
        assert other.status_code == 422, other.text
        err = other.json()["error"]
        assert (
            err["param"] == "resume_from"
            and err["code"] == "not_resumable"
            and "hyperparameters" in err["message"]
        )
        missing = client.post("/v1/jobs", headers=auth, json={**body, "resume_from": "job_nope"})
        assert missing.status_code == 404 and missing.json()["error"]["param"] == "resume_from"
        too_long = client.post("/v1/jobs", headers=auth, json={**body, "max_runtime_seconds": 0})
        assert too_long.status_code == 422 and too_long.json()["error"]["param"] == "max_runtime_seconds"
        r = client.post("/v1/jobs", headers=auth, json=body)
        assert r.status_code == 202, r.text
        clone = r.json()
        assert clone["resume_from"] == job_id and clone["max_runtime_seconds"] is None
        assert client.get(f"/v1/jobs/{job_id}", headers=auth).json()["status"] == "timed_out"

        # the project's default deadline applies to jobs that give none
        with session_scope(url) as s:
            s.execute(update(Project).where(Project.id == project).values(default_max_runtime_seconds=600))
        plain = client.post(
            "/v1/jobs", headers=auth, json={k: v for k, v in body.items() if k != "resume_from"}
        )
        assert plain.json()["max_runtime_seconds"] == 600
        own = client.post(
            "/v1/jobs", headers=auth, json={**body, "resume_from": None, "max_runtime_seconds": 30}
        )
        assert own.json()["max_runtime_seconds"] == 30
        with session_scope(url) as s:
            s.execute(
                update(Job)
                .where(Job.id.in_([plain.json()["id"], own.json()["id"]]))
                .values(status="cancelled")
            )

    assert pipeline.run_job(clone["id"], settings=wsettings, hostname=HOST, store=store) == "succeeded"
    row = ws.job_row(url, clone["id"])
    assert row["status"] == "succeeded", row["error"]
    resumed = [e for e in ws.events(url, clone["id"]) if e["type"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["data"] == {"epoch": done[-1], "source_job": job_id}
    assert _epochs(url, clone["id"]) == list(range(1, EPOCHS + 1))  # the source's epochs, then its own
    assert store.exists(state_key(job_id))  # the source keeps its state (another clone may start from it)
