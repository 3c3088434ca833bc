"""Honest job pages (HTTP, no browser; real Postgres): failed and cancelled pages say what happened,
the error box names the field, events carry per-job numbers, the status history comes from the server,
and the estimates use measured epoch, evaluation and job times."""

from __future__ import annotations

import html
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


def test_the_job_page_shows_the_estimate_as_a_range_from_the_jobs_own_epochs(
    app_client: TestClient, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetune.api.services import estimates

    estimates.clear()
    monkeypatch.setattr(estimates, "HISTORY_TTL", 0.0)  # read the finished jobs on every request
    url = settings.DATABASE_URL
    project, secret = new_project(url)
    now = datetime.now(UTC)
    t0 = now - timedelta(seconds=200)
    hp = {"epochs": 4, "feature_mode": "none"}  # cached features: no other test finishes such a job
    # finished: 4 epochs of 8 s after a 9 s first one, then 20 s of evaluation after its last epoch
    rows = make_rows(url, project, jobs=[
        {"status": "succeeded", "started_at": t0, "finished_at": t0 + timedelta(seconds=60),
         "progress": {"epoch": 4, "epochs": 4, "epoch_seconds": [9.0, 8.0, 8.0, 8.0], "epochs_measured": 4,
                      "epochs_done": 4, "epoch_done_at": (t0 + timedelta(seconds=40)).isoformat()}},
        {"status": "running", "started_at": now - timedelta(seconds=40),
         "progress": {"epoch": 5, "epochs": 10, "step": 1, "steps": 4, "epoch_seconds": [12.0, 8.0, 8.0, 8.0],
                      "epochs_measured": 4, "epochs_done": 4,
                      "epoch_done_at": (now - timedelta(seconds=2)).isoformat()}},
    ])  # fmt: skip
    running = rows["job_ids"][1]
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job

    with session_scope(url) as s:
        s.get(Job, rows["job_ids"][0]).hyperparameters = hp
        s.get(Job, running).hyperparameters = {**hp, "epochs": 10}
    login(app_client, secret)
    # 6 epochs of 8 s after the last one's end (2 s ago), then 20 s of evaluation: ~66 s from now
    likely = now + timedelta(seconds=-2 + 6 * 8 + 20)
    pattern = (
        r"(\d\d:\d\d:\d\d) – (\d\d:\d\d:\d\d) UTC \(likely (\d\d:\d\d:\d\d); from this job's 4 measured "
        r"epochs; evaluation time from similar jobs\)"
    )
    page = app_client.get(f"/jobs/{running}").text
    shown = re.search(r'<span id="job-eta">([^<]*)</span>', page)
    assert shown and re.fullmatch(pattern, html.unescape(shown.group(1))), shown and shown.group(1)
    live = app_client.get(f"/ui/jobs/{running}/live").json()
    match = re.fullmatch(pattern, live["eta_text"])
    assert match, live["eta_text"]
    earliest, latest, at = (
        datetime.combine(now.date(), datetime.strptime(t, "%H:%M:%S").time(), UTC) for t in match.groups()
    )
    assert (
        abs((at - likely).total_seconds()) <= 2
        and earliest < at < latest
        and earliest >= now.replace(microsecond=0)
    )
    assert live["estimated_finish"] == at.strftime("%Y-%m-%d %H:%M:%S")
    done = app_client.get(f"/ui/jobs/{rows['job_ids'][0]}/live").json()
    assert done["eta_text"] == "—" and done["estimated_finish"] == "—"


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
