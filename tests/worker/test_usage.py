"""Usage: the worker measures the device time of each job's training (every attempt, also a cancelled
one) into the job and the daily ledger; ``GET /v1/usage`` and the Prometheus counters add it up with
the project's jobs and the bytes it keeps in the store (checked against the store itself)."""

from __future__ import annotations

import time

import worker_support as ws
from fastapi.testclient import TestClient
from sqlalchemy import select, update

from mergetune.common.db import session_scope
from mergetune.common.models import DeviceUsage, Job, Project, utcnow
from mergetune.worker import pipeline

HOST = "usage@test"


def _ledger(url, job_id):
    with session_scope(url) as s:
        return [
            (r.day, r.seconds, r.project_id)
            for r in s.scalars(select(DeviceUsage).where(DeviceUsage.job_id == job_id))
        ]


def test_device_time_is_measured_and_reported_per_project_and_day(wsettings, store, rows):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds, epochs=2)
    t0 = time.monotonic()
    assert pipeline.run_job(job_id, settings=wsettings, hostname=HOST, store=store) == "succeeded"
    wall = time.monotonic() - t0
    job = ws.job_row(url, job_id)
    ledger = _ledger(url, job_id)
    assert len(ledger) == 1 and ledger[0][0] == utcnow().date().isoformat() and ledger[0][2] == project
    assert 0 < job["device_seconds"] == ledger[0][1] < wall  # the training, not the whole job

    # a second, cancelled job: its training time until the cancel counts too
    second = ws.make_job(url, project, ck, ds, epochs=50, batch_size=1)
    import threading

    def cancel_later():
        ws.wait_for(
            lambda: (ws.job_row(url, second)["progress"] or {}).get("epoch", 0) >= 1, 60, 0.05, "epoch 1"
        )
        with session_scope(url) as s:
            s.execute(update(Job).where(Job.id == second).values(cancel_requested=True, status="cancelling"))

    t = threading.Thread(target=cancel_later)
    t.start()
    assert pipeline.run_job(second, settings=wsettings, hostname=HOST, store=store) == "cancelled"
    t.join()
    cancelled_seconds = ws.job_row(url, second)["device_seconds"]
    assert cancelled_seconds > 0 and _ledger(url, second)[0][1] == cancelled_seconds

    from mergetune.api.main import create_app
    from mergetune.common import repositories as repo

    with session_scope(url) as s:
        proj = s.get(Project, project)
        _, secret = repo.create_token(s, proj)
    with TestClient(create_app(wsettings)) as client:
        r = client.get("/v1/usage", headers={"Authorization": f"Bearer {secret}"}, params={"days": 3})
        assert r.status_code == 200, r.text
        usage = r.json()
        total = job["device_seconds"] + cancelled_seconds
        assert usage["device_seconds"] == round(total, 3) and usage["jobs"] == 2
        today = usage["days"][-1]
        assert len(usage["days"]) == 3 and today["day"] == utcnow().date().isoformat()
        assert today["device_seconds"] == round(total, 3)
        assert today["jobs_created"] == 2 and today["jobs_finished"] == 2
        # stored bytes: what the store holds for this project (the checkpoint's upload + the job's files)
        ck_bytes = sum(len(store.get_bytes(k)) for k in store.list(f"checkpoints/{ck}/"))
        art_bytes = sum(len(store.get_bytes(k)) for k in store.list(f"jobs/{job_id}/") if "/state/" not in k)
        stored = usage["stored_bytes"]
        assert stored["artifacts"] == art_bytes > 0
        assert stored["total"] == stored["checkpoints"] + stored["artifacts"]
        assert today["bytes_added"] == stored["total"]
        assert ck_bytes > 0
        bad = client.get("/v1/usage", headers={"Authorization": f"Bearer {secret}"}, params={"days": 0})
        assert bad.status_code == 422 and bad.json()["error"]["param"] == "days"

        text = client.get("/metrics").text
        name = next(
            ln for ln in text.splitlines() if ln.startswith("mergetune_project_device_seconds_total{")
        )
        assert name  # at least one project's line; this project's value:
        with session_scope(url) as s:
            pname = s.get(Project, project).name
        line = next(
            ln
            for ln in text.splitlines()
            if ln.startswith(f'mergetune_project_device_seconds_total{{project="{pname}"}}')
        )
        assert abs(float(line.split()[1]) - total) < 1e-6
        assert f'mergetune_project_jobs_total{{project="{pname}"}} 2.0' in text
        assert f'mergetune_project_stored_bytes{{project="{pname}"}} {float(stored["total"])}' in text

        client.post("/login", data={"token": secret, "next": "/"}, follow_redirects=False)
        page = client.get("/usage").text
        assert 'id="usage-jobs">2<' in page and f"{total:.1f} s" in page
