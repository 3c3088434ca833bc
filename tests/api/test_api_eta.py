"""GET /v1/jobs/{id}: estimated_finish and estimated_finish_range from real rows (Postgres)."""

from __future__ import annotations

from datetime import datetime, timedelta

from mergetune.api.services import estimates
from mergetune.common.db import session_scope
from mergetune.common.models import Job, utcnow

BANK = {"epochs": 10, "feature_mode": "bank"}  # ViT-B-16 prompt jobs in bank mode: no other test finishes one


def _at(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_queued_running_and_finished_jobs_show_their_estimate(client, auth, job_body, settings, monkeypatch):
    estimates.clear()
    monkeypatch.setattr(estimates, "HISTORY_TTL", 0.0)  # read the finished jobs on every request
    ids = []
    for _ in range(3):
        r = client.post("/v1/jobs", headers=auth, json={**job_body, "hyperparameters": BANK})
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    done, run, queued = ids
    now = utcnow()
    with session_scope(settings.DATABASE_URL) as s:
        # finished: 100 s; a 20 s first epoch, then 8 s each; its last epoch ended 15 s before its end
        j = s.get(Job, done)
        j.status, j.started_at, j.finished_at, j.run_seconds = (
            "succeeded",
            now - 200 * S,
            now - 100 * S,
            100.0,
        )
        j.progress = {
            "epoch": 10, "epochs": 10, "epoch_seconds": [20.0] + [8.0] * 9, "epochs_measured": 10,
            "epochs_done": 10, "epoch_done_at": (now - 115 * S).isoformat(),
        }  # fmt: skip
        # running: 3 epochs done (a 12 s warm-up, then 8 s each), the last one 4 s ago
        j = s.get(Job, run)
        j.status, j.started_at, j.worker_host = "running", now - 40 * S, "eta-test-host"
        j.progress = {
            "epoch": 4, "epochs": 10, "step": 1, "steps": 4, "loss": 1.0, "epoch_seconds": [12.0, 8.0, 8.0],
            "epochs_measured": 3, "epochs_done": 3, "epoch_done_at": (now - 4 * S).isoformat(),
        }  # fmt: skip

    got = client.get(f"/v1/jobs/{done}", headers=auth).json()
    assert got["status"] == "succeeded"
    assert got["estimated_finish"] is None and got["estimated_finish_range"] is None

    # 7 epochs of 8 s after the last one's end, then the finished job's 15 s of evaluation
    expected = now - 4 * S + (7 * 8 + 15) * S
    # this process showed the job queued (a guess from the default pace plus its wait behind whatever
    # else the database holds): now that it runs, its first answer is its own pace, not a step from there
    got = client.get(f"/v1/jobs/{run}", headers=auth).json()
    rng = got["estimated_finish_range"]
    assert abs((_at(got["estimated_finish"]) - expected).total_seconds()) < 2, (
        got["estimated_finish"],
        expected,
    )
    assert _at(rng["earliest"]) < _at(got["estimated_finish"]) < _at(rng["latest"])
    assert _at(rng["earliest"]) >= now
    assert rng["basis"] == "this job's 3 measured epochs; evaluation time from similar jobs"
    again = client.get(f"/v1/jobs/{run}", headers=auth).json()
    assert abs((_at(again["estimated_finish"]) - _at(got["estimated_finish"])).total_seconds()) < 1

    got = client.get(f"/v1/jobs/{queued}", headers=auth).json()
    rng = got["estimated_finish_range"]
    assert got["status"] == "queued"
    assert rng["basis"].startswith("1 similar finished job (ViT-B-16, prompt, feature bank, ")
    assert "starts in about" in rng["basis"]  # the running job (67 s left) runs first
    # its own 10 x 8 s + 20 s, after the running job's remaining time at least
    assert _at(got["estimated_finish"]) - now >= (100 + 60) * S
    assert now < _at(rng["earliest"]) < _at(got["estimated_finish"]) < _at(rng["latest"])

    # while it runs, its answers still do not swing: once its epochs take 30 s instead of 8 s, its
    # finish moves later over successive polls, by at most half the range each, not all at once
    shown = [_at(again["estimated_finish"])]
    with session_scope(settings.DATABASE_URL) as s:
        j = s.get(Job, run)
        j.progress = {
            **j.progress, "epoch": 7, "epoch_seconds": [30.0] * 6, "epochs_measured": 6, "epochs_done": 6,
            "epoch_done_at": utcnow().isoformat(),
        }  # fmt: skip
    for _ in range(3):
        got = client.get(f"/v1/jobs/{run}", headers=auth).json()
        rng = got["estimated_finish_range"]
        assert _at(rng["earliest"]) <= _at(got["estimated_finish"]) <= _at(rng["latest"])
        shown.append(_at(got["estimated_finish"]))
    steps = [(b - a).total_seconds() for a, b in zip(shown, shown[1:], strict=False)]
    assert steps[0] > 5 and steps[1] > 5, steps


S = timedelta(seconds=1)
