"""The worker reports how long each epoch took (the finish estimate's pace) in progress and events."""

from __future__ import annotations

from datetime import datetime

import worker_support as ws

from mergetune.common.models import utcnow
from mergetune.worker import pipeline


def test_finished_epochs_report_their_seconds_in_progress_and_events(wsettings, store, rows):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    job_id = ws.make_job(url, project, ck, ds)
    now = [100.0]
    cb = pipeline.JobCallbacks(url, job_id, store, epochs=3, clock=lambda: now[0])
    before = utcnow()
    now[0] += 30.0  # setting up (features, model) before the first step: not an epoch
    for epoch, step_seconds in enumerate([2.5, 2.5, 2.625]):
        for step in range(4):
            now[0] += step_seconds
            cb.on_progress(epoch, step, 1.0, epochs=3, steps=4)
        # the first epoch is timed from its first reported step: 3 steps of 2.5 s, scaled to 4 steps
        cb.on_epoch_end({"epoch": epoch + 1, "history": [{"loss": 1.0}]})
        progress = ws.job_row(url, job_id)["progress"]
        assert progress["epoch_seconds"] == [10.0, 10.0, 10.5][: epoch + 1]
        assert progress["epochs_measured"] == progress["epochs_done"] == epoch + 1
        assert before <= datetime.fromisoformat(progress["epoch_done_at"]) <= utcnow()
    now[0] += 1.0
    cb.on_progress(2, 0, 0.5, epochs=3, steps=4)  # later steps keep the measurements
    assert ws.job_row(url, job_id)["progress"]["epoch_seconds"] == [10.0, 10.0, 10.5]
    epochs = [e["data"] for e in ws.events(url, job_id) if e["type"] == "epoch"]
    assert [(d["epoch"], d["seconds"]) for d in epochs] == [(1, 10.0), (2, 10.0), (3, 10.5)]
