"""Why a queued job waits: the job object's ``queue`` {position, reason, message}, the same on the
dashboard's job page and the JSON it polls (and so in ``mergetune job get``, which prints the object)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from api_support import TINY_DATASET, upload
from sqlalchemy import update

from mergetune.common.db import session_scope
from mergetune.common.models import Job, Project, utcnow


@pytest.fixture
def quiet_queue(settings):
    """API tests share one database: earlier tests' queued jobs would stand in this one's queue."""
    with session_scope(settings.DATABASE_URL) as s:
        s.execute(
            update(Job)
            .where(Job.status.in_(["queued", "validating", "running", "evaluating", "cancelling"]))
            .values(status="cancelled", finished_at=utcnow())
        )


def _queue(client, auth, job_id):
    body = client.get(f"/v1/jobs/{job_id}", headers=auth).json()
    return body["queue"], body["queue_position"]


def test_each_queued_job_says_why_it_waits(
    client, auth, other_auth, job_body, ctx_and_bytes, settings, quiet_queue
):
    url = settings.DATABASE_URL
    a = [client.post("/v1/jobs", headers=auth, json=job_body).json()["id"] for _ in range(3)]
    ck = upload(client, other_auth, ctx_and_bytes[1]).json()
    ds = client.post("/v1/datasets", headers=other_auth, json=TINY_DATASET).json()
    b = client.post("/v1/jobs", headers=other_auth, json={"checkpoint_id": ck["id"], "dataset_id": ds["id"]})
    b_id = b.json()["id"]
    # before anything runs: oldest first, each project's own turn
    q, pos = _queue(client, auth, a[0])
    assert pos == 1 and q["position"] == 1 and q["reason"] == "waiting_for_worker"

    with session_scope(url) as s:  # A's first job has been running for 30 s
        s.execute(
            update(Job)
            .where(Job.id == a[0])
            .values(
                status="running",
                worker_host="w1@q",
                started_at=utcnow(),
                attempt_started_at=utcnow() - timedelta(seconds=30),
            )
        )
    assert client.get(f"/v1/jobs/{a[0]}", headers=auth).json()["queue"] is None
    q, pos = _queue(client, other_auth, b_id)
    assert (pos, q["reason"]) == (1, "waiting_for_worker")
    assert q["message"] == "next to start when a worker is free"
    q1, pos1 = _queue(client, auth, a[1])
    q2, _ = _queue(client, auth, a[2])
    assert (q1["position"], q1["reason"]) == (2, "fair_share") and pos1 == 2
    assert (q2["position"], q2["reason"]) == (3, "fair_share")
    assert "this project used 30 s in the last 1 h" in q1["message"]

    with session_scope(url) as s:  # the operator limits A to one running job
        project_id = s.get(Job, a[0]).project_id
        s.execute(update(Project).where(Project.id == project_id).values(max_running_jobs=1))
    q1, _ = _queue(client, auth, a[1])
    assert q1["reason"] == "project_running_limit"
    assert q1["message"].startswith("its project runs 1 jobs, its limit of 1")
    assert _queue(client, other_auth, b_id)[0]["reason"] == "waiting_for_worker"

    # the dashboard's job page and the JSON it polls say the same
    client.post(
        "/login", data={"token": auth["Authorization"].split()[1], "next": "/"}, follow_redirects=False
    )
    live = client.get(f"/ui/jobs/{a[1]}/live").json()
    assert live["queue_reason"] == "project_running_limit" and live["queue_position"] == q1["position"]
    page = client.get(f"/jobs/{a[1]}").text
    assert '<code id="queue-reason">project_running_limit</code>' in page
    assert "its limit of 1" in page


def test_priority_moves_a_job_ahead_of_its_own_projects_older_jobs(client, auth, job_body, quiet_queue):
    older = client.post("/v1/jobs", headers=auth, json=job_body).json()["id"]
    urgent = client.post("/v1/jobs", headers=auth, json={**job_body, "priority": "high"}).json()["id"]
    assert _queue(client, auth, urgent)[0]["position"] == 1
    q, _ = _queue(client, auth, older)
    assert q["position"] == 2 and q["reason"] == "waiting_for_worker"
    assert q["message"] == "starts after 1 earlier job(s) of its own project, as workers free up"
