"""A job whose disk fills up, for real: the artifact store on a small tmpfs mount (mounted for the
test; skipped where mounting is not allowed), filled after the job's second epoch. The job is handed
back with a ``storage_full`` warning and its epoch state kept; once space returns it resumes from that
state and ends like an uninterrupted run. Past STORAGE_FULL_WAIT_SECONDS it fails with
``storage_full`` and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import worker_support as ws

from mergetune.common.storage import LocalStore
from mergetune.worker import pipeline
from mergetune.worker.pipeline.run import StorageFull

HOST = "w-disk@local"


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    folder = tmp_path / "disk"
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Fill the filesystem of ``folder`` to the last byte."""
    filler = folder / f"filler-{uuid.uuid4().hex[:6]}"
    with open(filler, "wb", buffering=0) as out:  # unbuffered: nothing left to flush at close
        for size in (1 << 16, 4096, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError:
                pass
    st = os.statvfs(folder)
    assert st.f_bavail * st.f_frsize < 4096
    return filler


@pytest.fixture
def on_disk(wsettings: Any, disk: Path, ctx_ft: Any) -> tuple[Any, LocalStore, str, str, str]:
    settings = wsettings.model_copy(update={"ARTIFACT_URL": str(disk / "artifacts")})
    store = LocalStore(disk / "artifacts")
    url = settings.DATABASE_URL
    project = ws.make_project(url)
    return (
        settings,
        store,
        project,
        ws.make_checkpoint(url, store, project, ctx_ft),
        ws.make_dataset(url, settings, project),
    )


def _fill_after_epoch(monkeypatch: pytest.MonkeyPatch, disk: Path, epoch: int) -> list[Path]:
    real = pipeline.JobCallbacks.on_epoch_end
    fillers: list[Path] = []

    def then_fill(self: Any, state: dict[str, Any]) -> None:
        real(self, state)
        if state["epoch"] == epoch and not fillers:
            fillers.append(fill(disk))

    monkeypatch.setattr(pipeline.JobCallbacks, "on_epoch_end", then_fill)
    return fillers


def _ctx(store: LocalStore, url: str, job_id: str) -> Any:
    key = next(a["key"] for a in ws.artifacts(url, job_id) if a["name"] == "prompts.safetensors")
    return ws.load_safetensors_bytes(store.get_bytes(key))["ctx"]


def test_job_on_a_full_disk_is_handed_back_and_resumes_when_space_returns(on_disk, disk, monkeypatch):
    settings, store, project, ck, ds = on_disk
    url = settings.DATABASE_URL
    reference = ws.make_job(url, project, ck, ds, epochs=4)
    assert pipeline.run_job(reference, settings=settings, hostname=HOST, store=store) == "succeeded"

    job_id = ws.make_job(url, project, ck, ds, epochs=4)
    fillers = _fill_after_epoch(monkeypatch, disk, 2)
    with pytest.raises(StorageFull):
        pipeline.run_job(job_id, settings=settings, hostname=HOST, store=store)
    job = ws.job_row(url, job_id)
    assert job["status"] == "running" and job["error"] is None  # handed back, not failed
    full = [e for e in ws.events(url, job_id) if e["type"] == "storage_full"]
    assert len(full) == 1 and full[0]["level"] == "warning"
    assert "No space left" in full[0]["message"]
    assert store.exists(pipeline.state_key(job_id))  # epoch 2's state, kept for the resume

    with pytest.raises(StorageFull):  # redelivered while the disk is still full: handed back again
        pipeline.run_job(job_id, settings=settings, hostname=HOST, store=store)
    second = [e for e in ws.events(url, job_id) if e["type"] == "storage_full"][-1]
    assert second["data"]["since"] == full[0]["data"]["since"]  # the wait counts from the first

    fillers[0].unlink()  # space returns: the next delivery resumes at epoch 2 and finishes
    assert pipeline.run_job(job_id, settings=settings, hostname=HOST, store=store) == "succeeded"
    events = ws.events(url, job_id)
    assert [e["data"]["epoch"] for e in events if e["type"] == "resume"][-1] == 2
    assert [e["data"]["epoch"] for e in events if e["type"] == "epoch"] == [1, 2, 3, 4]
    assert not store.exists(pipeline.state_key(job_id))
    assert bool((_ctx(store, url, job_id) == _ctx(store, url, reference)).all())


def test_job_on_a_disk_that_stays_full_fails_with_storage_full_and_leaves_nothing(on_disk, disk, monkeypatch):
    settings, store, project, ck, ds = on_disk
    settings = settings.model_copy(update={"STORAGE_FULL_WAIT_SECONDS": 0.0})
    url = settings.DATABASE_URL
    job_id = ws.make_job(url, project, ck, ds, epochs=4)
    _fill_after_epoch(monkeypatch, disk, 2)
    assert pipeline.run_job(job_id, settings=settings, hostname=HOST, store=store) == "failed"
    job = ws.job_row(url, job_id)
    assert job["status"] == "failed"
    assert job["error"]["code"] == "storage_full" and job["error"]["user_error"] is False
    assert store.list(pipeline.job_prefix(job_id)) == []  # no epoch state, no partial artifacts
    assert ws.artifacts(url, job_id) == []
    assert not [p for p in Path("/tmp").glob(f"mergetune-{job_id}-*")]  # nor its work folder
