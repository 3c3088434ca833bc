"""Usage per project: device time (the ledger the workers write, :class:`DeviceUsage`), jobs, and the
bytes the project keeps in the artifact store (checkpoints not deleted, job artifacts), per UTC day.

Read by ``GET /v1/usage``, the dashboard's usage page and the Prometheus collector."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from mergetune.common.models import Artifact, Checkpoint, DeviceUsage, Job, UploadedWeights


def stored_bytes(s: Any, project_id: str | None = None) -> dict[str, dict[str, int]]:
    """{project_id: {checkpoints, artifacts, weights, total}}: the bytes each project keeps in the store."""
    ck = select(Checkpoint.project_id, func.coalesce(func.sum(Checkpoint.bytes), 0)).where(
        Checkpoint.deleted_at.is_(None)
    )
    art = select(Job.project_id, func.coalesce(func.sum(Artifact.bytes), 0)).join(
        Job, Job.id == Artifact.job_id
    )
    wgt = select(UploadedWeights.project_id, func.coalesce(func.sum(UploadedWeights.bytes), 0))
    if project_id is not None:
        ck, art = ck.where(Checkpoint.project_id == project_id), art.where(Job.project_id == project_id)
        wgt = wgt.where(UploadedWeights.project_id == project_id)
    out: dict[str, dict[str, int]] = {}
    empty = {"checkpoints": 0, "artifacts": 0, "weights": 0}
    for pid, n in s.execute(ck.group_by(Checkpoint.project_id)):
        out.setdefault(pid, dict(empty))["checkpoints"] = int(n)
    for pid, n in s.execute(art.group_by(Job.project_id)):
        out.setdefault(pid, dict(empty))["artifacts"] = int(n)
    for pid, n in s.execute(wgt.group_by(UploadedWeights.project_id)):
        out.setdefault(pid, dict(empty))["weights"] = int(n)
    for v in out.values():
        v["total"] = v["checkpoints"] + v["artifacts"] + v["weights"]
    if project_id is not None and project_id not in out:
        out[project_id] = {**empty, "total": 0}
    return out


def device_seconds(s: Any, project_id: str | None = None, *, day: date | None = None) -> dict[str, float]:
    """{project_id: device seconds} over all time, or on one UTC day."""
    q = select(DeviceUsage.project_id, func.sum(DeviceUsage.seconds))
    if project_id is not None:
        q = q.where(DeviceUsage.project_id == project_id)
    if day is not None:
        q = q.where(DeviceUsage.day == day.isoformat())
    return {pid: float(n or 0.0) for pid, n in s.execute(q.group_by(DeviceUsage.project_id))}


def daily(s: Any, project_id: str, *, days: int, now: datetime) -> list[dict[str, Any]]:
    """The last ``days`` UTC days, oldest first: device seconds, jobs created, jobs finished, and bytes
    added to the store (checkpoints uploaded, artifacts written) that day."""
    first = now.date() - timedelta(days=days - 1)
    since = datetime.combine(first, datetime.min.time(), tzinfo=now.tzinfo)
    rows: dict[str, dict[str, Any]] = {
        (first + timedelta(days=i)).isoformat(): {
            "day": (first + timedelta(days=i)).isoformat(),
            "device_seconds": 0.0,
            "jobs_created": 0,
            "jobs_finished": 0,
            "bytes_added": 0,
        }
        for i in range(days)
    }

    def bump(when: datetime | None, field: str, by: float = 1) -> None:
        if when is not None and (row := rows.get(when.date().isoformat())) is not None:
            row[field] += by

    for day, seconds in s.execute(
        select(DeviceUsage.day, func.sum(DeviceUsage.seconds))
        .where(DeviceUsage.project_id == project_id, DeviceUsage.day >= first.isoformat())
        .group_by(DeviceUsage.day)
    ):
        if day in rows:
            rows[day]["device_seconds"] = round(float(seconds or 0.0), 3)
    for created, finished in s.execute(
        select(Job.created_at, Job.finished_at).where(
            Job.project_id == project_id, (Job.created_at >= since) | (Job.finished_at >= since)
        )
    ):
        bump(created, "jobs_created")
        bump(finished, "jobs_finished")
    for created, n in s.execute(
        select(Checkpoint.created_at, Checkpoint.bytes).where(
            Checkpoint.project_id == project_id, Checkpoint.created_at >= since
        )
    ):
        bump(created, "bytes_added", int(n or 0))
    for created, n in s.execute(
        select(UploadedWeights.created_at, UploadedWeights.bytes).where(
            UploadedWeights.project_id == project_id, UploadedWeights.created_at >= since
        )
    ):
        bump(created, "bytes_added", int(n or 0))
    for created, n in s.execute(
        select(Artifact.created_at, Artifact.bytes)
        .join(Job, Job.id == Artifact.job_id)
        .where(Job.project_id == project_id, Artifact.created_at >= since)
    ):
        bump(created, "bytes_added", int(n or 0))
    return list(rows.values())


def project_usage(s: Any, project_id: str, *, days: int, now: datetime) -> dict[str, Any]:
    """What ``GET /v1/usage`` answers for one project."""
    jobs = int(s.scalar(select(func.count()).select_from(Job).where(Job.project_id == project_id)) or 0)
    return {
        "object": "usage",
        "project_id": project_id,
        "device_seconds": round(device_seconds(s, project_id).get(project_id, 0.0), 3),
        "jobs": jobs,
        "stored_bytes": stored_bytes(s, project_id)[project_id],
        "days": daily(s, project_id, days=days, now=now),
    }
