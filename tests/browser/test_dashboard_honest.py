"""Honest job pages (HTTP, no browser; real Postgres): failed and cancelled pages say what happened,
the error box names the field, events carry per-job numbers, the status history comes from the server,
and the estimates use measured epoch, evaluation and job times."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from browser_support import login, make_rows, new_project
from fastapi.testclient import TestClient


def _status_events(url: str, job_id: str, statuses: list[tuple[str, str]], start: datetime) -> None:
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    with session_scope(url) as s:
        for i, (status, message) in enumerate(statuses):
            e = repo.add_event(s, job_id, "status", message, data={"status": status})
            e.created_at = start + timedelta(seconds=10 * i)


def test_failed_and_cancelled_pages_say_what_happened(app_client: TestClient, settings: Any) -> None:
    url = settings.DATABASE_URL
    project, secret = new_project(url)
    t0 = datetime(2026, 11, 29, 12, 0, 0, tzinfo=UTC)
    error = {
        "code": "invalid_hyperparameter",
        "message": "must be at least 1",
        "param": "hyperparameters.shots",
    }
    rows = make_rows(url, project, jobs=[
        {"status": "failed", "error": error, "started_at": t0, "finished_at": t0 + timedelta(seconds=30)},
        {"status": "cancelled", "finished_at": t0 + timedelta(seconds=5)},
    ])  # fmt: skip
    failed, cancelled = rows["job_ids"]
    _status_events(url, failed, [("queued", "job queued"), ("running", "Job started on w1"),
                                 ("running", "again"), ("failed", "Job failed")], t0)  # fmt: skip
    _status_events(
        url, cancelled, [("queued", "job queued"), ("cancelled", "job cancelled before it started")], t0
    )
    login(app_client, secret)

    page = app_client.get(f"/jobs/{failed}").text
    assert "Metrics appear" not in page
    assert re.search(r'id="job-error"><strong>invalid_hyperparameter</strong> in <code id="job-error-param">'
                     r"hyperparameters.shots</code>: must be at least 1", page)  # fmt: skip
    assert "No metrics: the job failed at 2026-11-29 12:00:30 UTC" in page
    history = re.search(r'id="status-history"[^>]*>(.*?)</span></p>', page, re.S).group(1)
    assert re.sub(r"<[^>]+>", "", history) == "queued → running → failed"  # repeats folded, from the server

    page = app_client.get(f"/jobs/{cancelled}").text
    assert "Metrics appear" not in page
    assert "No metrics: the job was cancelled at 2026-11-29 12:00:05 UTC before it started" in page
    live = app_client.get(f"/ui/jobs/{cancelled}/live").json()
    assert [h["status"] for h in live["status_history"]] == ["queued", "cancelled"]


def test_events_are_numbered_per_job(app_client: TestClient, settings: Any) -> None:
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    url = settings.DATABASE_URL
    project, secret = new_project(url)
    a, b = make_rows(url, project, jobs=[{"status": "running"}, {"status": "running"}])["job_ids"]
    with session_scope(url) as s:
        for i in range(5):  # interleaved: job a's global ids are 1, 3, 5, ... apart
            repo.add_event(s, a, "epoch", f"a{i + 1}")
            repo.add_event(s, b, "epoch", f"b{i + 1}")
    headers = {"Authorization": f"Bearer {secret}"}
    page1 = app_client.get(f"/v1/jobs/{a}/events", params={"limit": 2}, headers=headers).json()
    assert [(e["seq"], e["message"]) for e in page1["data"]] == [(1, "a1"), (2, "a2")]
    page2 = app_client.get(f"/v1/jobs/{a}/events", params={"limit": 10, "after": page1["next_cursor"]},
                           headers=headers).json()  # fmt: skip
    assert [(e["seq"], e["message"]) for e in page2["data"]] == [(3, "a3"), (4, "a4"), (5, "a5")]
    ids = [e["id"] for e in page1["data"] + page2["data"]]
    assert ids[1] - ids[0] == 2  # the global ids skip: that is why the page shows seq

    login(app_client, secret)
    page = app_client.get(f"/jobs/{b}").text
    numbers = re.findall(r'<tr class="level-info" data-event-id="\d+"><td>(\d+)</td>', page)
    assert numbers == ["1", "2", "3", "4", "5"]
    live = app_client.get(f"/ui/jobs/{b}/live", params={"after": ids[2]}).json()  # after a's 3rd event
    assert [(e["seq"], e["message"]) for e in live["events"]] == [(3, "b3"), (4, "b4"), (5, "b5")]


def test_estimates_use_measured_epoch_evaluation_and_job_times(
    app_client: TestClient, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetune.api.services import jobs as job_service
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job

    job_service._measured_cache.clear()
    # the queue (and the database) is shared: measure on the latest finished job only, this one
    monkeypatch.setattr(job_service, "MEASURED_JOBS", 1)
    url = settings.DATABASE_URL
    project, secret = new_project(url)
    now = datetime.now(UTC)
    t0 = now - timedelta(seconds=101)
    # a finished 10-epoch job: 100 s in all, of which the last 20 s were evaluation -> 8 s/epoch, 20 s eval
    rows = make_rows(url, project, jobs=[
        {"status": "succeeded", "started_at": t0,
         "finished_at": t0 + timedelta(seconds=100)},
        {"status": "running", "started_at": now - timedelta(seconds=40),
         "progress": {"epoch": 3, "epochs": 10, "step": 0, "steps": 4}},
    ])  # fmt: skip
    done, running = rows["job_ids"]
    from mergetune.common import repositories as repo

    with session_scope(url) as s:
        for job_id in (done, running):
            s.get(Job, job_id).hyperparameters = {"epochs": 10}
        s.flush()
        e = repo.add_event(s, done, "status", "Training done; evaluating", data={"status": "evaluating"})
        e.created_at = t0 + timedelta(seconds=80)
        assert job_service.measured_pace(s) == (8.0, 20.0)
        job_service._measured_cache.clear()
        job = s.get(Job, running)
        # running: 20 % of training in 40 s -> training ends at start + 200 s, then 20 s of evaluation
        eta = job_service._estimate(s, settings, job, None)
        expected = job.started_at + timedelta(seconds=220)
        assert abs((eta - expected).total_seconds()) < 2, (eta, expected)
        # queued first in line: (running jobs ahead / live workers + 1) x (5 x 8 + 20) s
        job.status, job.hyperparameters = "queued", {"epochs": 5}
        s.flush()
        ahead = repo.count_active_jobs(s)  # the database is shared with this module's other tests
        workers = max(1, len(repo.live_workers(s, datetime.now(UTC) - timedelta(minutes=2))))
        eta = job_service._estimate(s, settings, job, 1)
        expected = (ahead / workers + 1) * 60
        assert abs((eta - datetime.now(UTC)).total_seconds() - expected) < 3, (eta, expected)
        s.rollback()


def test_per_epoch_curves_come_from_the_epoch_events(app_client: TestClient, settings: Any) -> None:
    import json

    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    url = settings.DATABASE_URL
    project, secret = new_project(url)
    (job_id,) = make_rows(url, project, jobs=[{"status": "running"}])["job_ids"]
    with session_scope(url) as s:
        for epoch, (loss, acc) in enumerate([(2.5, 40.0), (2.0, 45.5), (1.75, None)], start=1):
            record = {"loss": loss, "ce": loss - 0.5, "zs": 0.25, "lmc": 0.25, "val_acc": acc}
            repo.add_event(s, job_id, "epoch", f"Epoch {epoch}/3 done", data={"epoch": epoch, "epochs": 3,
                           "loss": loss, "record": record})  # fmt: skip
        # a resumed job logs epoch 3 again: the last record wins
        repo.add_event(s, job_id, "epoch", "Epoch 3/3 done", data={"epoch": 3, "epochs": 3, "loss": 1.5,
                       "record": {"loss": 1.5, "ce": 1.0, "zs": 0.25, "lmc": 0.25, "val_acc": 50.0}})  # fmt: skip
    login(app_client, secret)
    live = app_client.get(f"/ui/jobs/{job_id}/live").json()
    assert [(e["epoch"], e["loss"], e["ce"], e.get("val_acc")) for e in live["epochs"]] == [
        (1, 2.5, 2.0, 40.0), (2, 2.0, 1.5, 45.5), (3, 1.5, 1.0, 50.0),
    ]  # fmt: skip
    page = app_client.get(f"/jobs/{job_id}").text
    data = re.search(r'<script type="application/json" id="epoch-data">(.*?)</script>', page, re.S).group(1)
    assert json.loads(data) == live["epochs"]
    assert 'src="/static/charts.js"' in page and app_client.get("/static/charts.js").status_code == 200
