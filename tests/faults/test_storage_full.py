"""The artifact store's disk fills up in the middle of a job run by a real Celery worker (the store on
a small tmpfs mounted for the test, filled to the last byte after epoch 2; skipped where mounting is
not allowed). The job is handed back to the broker, not failed, and once space returns it resumes from
its last epoch state: it succeeds with every epoch reported once and one set of artifacts, like a job
that rode out a database outage (test_database_outage.py)."""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import pytest
import worker_support as ws

pytestmark = pytest.mark.slow

EPOCHS = 12


def _fill(folder: Path) -> Path:
    filler = folder / f"filler-{uuid.uuid4().hex[:6]}"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError:
                pass
    return filler


def test_a_full_disk_hands_the_job_back_and_it_resumes_when_space_returns(
    fault_settings, fault_env, tmp_path
):
    from mergetune.common.queue import enqueue_job
    from mergetune.common.storage import LocalStore

    disk = tmp_path / "disk"
    disk.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(disk)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    worker = None
    try:
        settings = fault_settings.model_copy(update={"ARTIFACT_URL": str(disk / "artifacts")})
        url = settings.DATABASE_URL
        store = LocalStore(settings.ARTIFACT_URL)
        project = ws.make_project(url)
        ck = ws.make_checkpoint(url, store, project, ws.tiny_ctx())
        ds = ws.make_dataset(url, settings, project)
        env = {**fault_env, "MERGETUNE_ARTIFACT_URL": settings.ARTIFACT_URL}
        worker = ws.WorkerProcess(env, tmp_path / "worker.log", nodename="disk-w1@test").start(120)
        job_id = ws.make_job(url, project, ck, ds, epochs=EPOCHS, batch_size=1)
        enqueue_job(settings, job_id)

        ws.wait_for(
            lambda: (ws.job_row(url, job_id)["progress"] or {}).get("epoch", 0) >= 2, 120, 0.05, "epoch 2"
        )
        filler = _fill(disk)
        full = ws.wait_for(
            lambda: [e for e in ws.events(url, job_id) if e["type"] == "storage_full"],
            60,
            0.2,
            "storage_full",
        )
        assert full[0]["level"] == "warning"
        row = ws.job_row(url, job_id)
        assert row["status"] == "running" and row["error"] is None  # handed back, not failed
        time.sleep(3)  # the disk stays full a while: the job waits, nothing fails
        assert ws.job_row(url, job_id)["status"] in ("running", "queued")
        filler.unlink()

        def finished() -> dict | None:
            r = ws.job_row(url, job_id)
            return r if r["status"] in ("succeeded", "failed") else None

        row = ws.wait_for(finished, 180, 0.3, "the job to finish once space returned")
        assert row["status"] == "succeeded", (row["error"], worker.log()[-4000:])
        events = ws.events(url, job_id)
        assert [e["data"]["epoch"] for e in events if e["type"] == "epoch"] == list(range(1, EPOCHS + 1))
        assert [e for e in events if e["type"] == "resume"]  # from the epoch state, not from scratch
        assert row["attempts"] >= 2
        arts = ws.artifacts(url, job_id)
        assert len(arts) == len({a["name"] for a in arts}) and "prompts.safetensors" in {
            a["name"] for a in arts
        }
        assert "handed back to the broker: storage full" in worker.log()
        assert not store.exists(f"jobs/{job_id}/state/epoch.pt")
    finally:
        if worker is not None:
            worker.stop()
        subprocess.run(["umount", "-l", str(disk)], check=False)
