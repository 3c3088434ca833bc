"""Freeing what the artifact store holds for a job, a checkpoint or a sweep, and saying how much went.

Used by the API's DELETE endpoints (:mod:`mergetune.api.services.lifecycle`); the bytes are counted from
the store itself (each key's size) just before its files are removed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from mergetune.common.storage import ArtifactStore


@dataclass
class Freed:
    bytes: int = 0
    files: int = 0

    def add(self, other: Freed) -> Freed:
        self.bytes += other.bytes
        self.files += other.files
        return self


def free_prefix(store: ArtifactStore, prefix: str) -> Freed:
    """Remove every file under ``prefix`` (a folder: ends with ``/``); their count and bytes."""
    assert prefix.endswith("/"), prefix
    keys = store.list(prefix)
    total = 0
    for key in keys:
        try:
            total += store.size(key)
        except FileNotFoundError:  # removed meanwhile
            continue
    store.delete_prefix(prefix)
    return Freed(total, len(keys))


def expire_jobs(url: str, store: ArtifactStore, *, now: Any = None, limit: int = 200) -> dict[str, Freed]:
    """Retention: the finished jobs of projects with ``retention_days`` that finished longer ago than
    that lose their stored files and artifact rows and become ``expired`` (the record, metrics, events
    and usage stay). At most ``limit`` jobs a call; {job_id: what was freed}."""
    from sqlalchemy import delete, select, update

    from mergetune.common.db import rowcount, session_scope
    from mergetune.common.models import Artifact, Job, JobEvent, JobStatus, Project, utcnow

    now = now or utcnow()
    done = [
        s.value for s in (JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.timed_out)
    ]
    with session_scope(url) as s:
        policies = s.execute(
            select(Project.id, Project.retention_days).where(Project.retention_days.is_not(None))
        )
        due: list[tuple[str, int]] = []
        for project_id, days in policies:
            if days is None:
                continue
            cutoff = now - timedelta(days=int(days))
            rows = s.execute(
                select(Job.id)
                .where(Job.project_id == project_id, Job.status.in_(done), Job.finished_at < cutoff)
                .order_by(Job.finished_at)
                .limit(limit - len(due))
            )
            due += [(r[0], int(days)) for r in rows]
            if len(due) >= limit:
                break
    out: dict[str, Freed] = {}
    for job_id, days in due:
        freed = free_prefix(store, f"jobs/{job_id}/")
        with session_scope(url) as s:
            n = rowcount(
                s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status.in_(done))
                    .values(status=JobStatus.expired.value, updated_at=now)
                )
            )
            if not n:
                continue
            s.execute(delete(Artifact).where(Artifact.job_id == job_id))
            s.add(
                JobEvent(
                    job_id=job_id,
                    type="status",
                    level="info",
                    message=f"Expired after the project's retention of {days} days: "
                    f"{freed.bytes} bytes in {freed.files} files removed from the store",
                    data={
                        "status": JobStatus.expired.value,
                        "freed_bytes": freed.bytes,
                        "freed_files": freed.files,
                    },
                )
            )
        out[job_id] = freed
    return out
