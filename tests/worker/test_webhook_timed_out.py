"""``job.timed_out``: a job stopped at its max_runtime_seconds sends the event, signed, to a real
receiver, with the job object exactly as ``GET /v1/jobs/{id}`` answers it."""

from __future__ import annotations

import json
from typing import Any

import worker_support as ws
from fastapi.testclient import TestClient
from sqlalchemy import update
from test_webhooks import Receiver, pump, verify

from mergetune.common import webhooks
from mergetune.common.db import session_scope
from mergetune.common.models import Job, Project, WebhookEndpoint
from mergetune.worker import pipeline


def test_a_timed_out_job_sends_job_timed_out(wsettings: Any, store: Any, rows: Any) -> None:
    settings = wsettings.model_copy(update={"WEBHOOKS_ALLOW_PRIVATE": True, "WEBHOOK_RETRY_SCHEDULE": "1"})
    url = settings.DATABASE_URL
    project, ck, ds = rows
    receiver = Receiver().start()
    try:
        with session_scope(url) as s:
            ep = WebhookEndpoint(
                project_id=project,
                url=receiver.url,
                events=["job.timed_out"],
                secret=webhooks.new_secret(),
                enabled=True,
            )
            s.add(ep)
            s.flush()
            secret = ep.secret
        job_id = ws.make_job(url, project, ck, ds, epochs=40, batch_size=1)
        with session_scope(url) as s:
            s.execute(update(Job).where(Job.id == job_id).values(max_runtime_seconds=2))
        assert pipeline.run_job(job_id, settings=settings, hostname="wh@test", store=store) == "timed_out"
        pump(settings, lambda: len(receiver.requests) >= 1)
    finally:
        receiver.stop()
    (req,) = receiver.requests
    assert verify(secret, req["headers"], req["body"])
    event = json.loads(req["body"])
    assert event["type"] == "job.timed_out"
    assert (event["data"]["id"], event["data"]["status"], event["data"]["error"]["code"]) == (
        job_id,
        "timed_out",
        "timed_out",
    )

    from mergetune.api.main import create_app
    from mergetune.common import repositories as repo

    with session_scope(url) as s:
        _, token = repo.create_token(s, s.get(Project, project))
    with TestClient(create_app(settings)) as client:
        got = client.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}).json()
    assert event["data"] == got
