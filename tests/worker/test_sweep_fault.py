"""A sweep's jobs are ordinary jobs: a worker killed with SIGKILL in the middle of one of them does not
lose it. The node restarts, the job resumes from its last epoch state, and the sweep finishes with every
cell succeeded (real Celery worker processes, Redis and Postgres; the tiny backbone)."""

from __future__ import annotations

import pytest
import worker_support as ws

from mergetune.api.schemas import SweepCreate
from mergetune.api.services.sweeps import create_sweep, sweep_read
from mergetune.common import repositories as repo
from mergetune.common.db import get_sessionmaker

pytestmark = pytest.mark.slow


def test_sweep_survives_a_killed_worker(tmp_path, wsettings, store, rows):
    url = wsettings.DATABASE_URL
    project, ck, ds = rows
    body = SweepCreate(
        cells=[{"checkpoint_id": ck, "dataset_id": ds, "seed": s} for s in (1, 2)],
        backbone=ws.TINY_BACKBONE,
        hyperparameters={"epochs": 6, "batch_size": 2, "shots": 4},
    )
    session = get_sessionmaker(url)()
    try:
        sweep, created = create_sweep(
            session, wsettings, store, project, body, archive=None, idempotency_key=None
        )
        assert created
        sweep_id, job_ids = sweep.id, [j.id for j in repo.sweep_jobs(session, sweep.id)]
    finally:
        session.close()
    env = ws.settings_env(wsettings)
    w1 = ws.WorkerProcess(env, tmp_path / "w1.log", nodename="gpu0@test").start()

    def running_job():
        for jid in job_ids:
            row = ws.job_row(url, jid)
            if row["status"] == "running" and (row["progress"] or {}).get("epoch", 0) >= 2:
                return jid
        return None

    victim = ws.wait_for(running_job, 90, 0.05, "a sweep job at epoch 2")
    w1.kill()
    assert ws.job_row(url, victim)["status"] == "running"

    w2 = ws.WorkerProcess(env, tmp_path / "w2.log", nodename="gpu0@test").start()  # the node restarts
    try:

        def finished():
            s = get_sessionmaker(url)()
            try:
                read = sweep_read(s, repo.get_sweep(s, project, sweep_id))
                return read if read.status in ("succeeded", "failed", "cancelled") else None
            finally:
                s.close()

        read = ws.wait_for(finished, 180, 0.5, "the sweep to finish")
        assert read.status == "succeeded", w2.log()[-3000:]
        assert read.progress.succeeded == 2 and read.progress.fraction == 1.0
        assert ws.job_row(url, victim)["attempts"] == 2
        assert [e["type"] for e in ws.events(url, victim)].count("resume") == 1
    finally:
        w2.stop()
