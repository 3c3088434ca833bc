"""Read-only SQL that several dashboard pages share, always scoped to the viewer's project: a job,
its artifacts and per-epoch training series, the project's checkpoints and datasets."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mergetune.api.dashboard.auth import Viewer
from mergetune.common.models import Artifact, Checkpoint, Dataset, Job, JobEvent

PAGE_SIZE = 20
REPORT_MAX_BYTES = 64 * 2**20  # a report.json larger than this is not read for the pages' charts
EPOCH_KEYS = ("loss", "ce", "zs", "lmc", "val_acc")


def project_job(session: Session, viewer: Viewer, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.project_id == viewer.project_id))


def job_artifacts(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def project_checkpoints(session: Session, viewer: Viewer) -> list[Checkpoint]:
    query = (
        select(Checkpoint)
        .where(Checkpoint.project_id == viewer.project_id, Checkpoint.deleted_at.is_(None))
        .order_by(Checkpoint.id.desc())
    )
    return list(session.scalars(query))


def project_datasets(session: Session, viewer: Viewer) -> list[Dataset]:
    query = select(Dataset).where(Dataset.project_id == viewer.project_id).order_by(Dataset.id.desc())
    return list(session.scalars(query))


def epoch_series(session: Session, job_id: str) -> list[dict[str, Any]]:
    """Per-epoch means from the job's "epoch" events (loss parts, validation accuracy), by epoch; a
    resumed job's repeated epoch keeps its last record. What the live chart draws."""
    query = (
        select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "epoch").order_by(JobEvent.id)
    )
    by_epoch: dict[int, dict[str, Any]] = {}
    for data in session.scalars(query.limit(5000)):
        if not isinstance(data, dict) or not isinstance(data.get("epoch"), int):
            continue
        raw = data.get("record")
        record: dict[str, Any] = raw if isinstance(raw, dict) else {}
        row: dict[str, Any] = {"epoch": data["epoch"]}
        for key in EPOCH_KEYS:
            value = record.get(key, data.get(key) if key == "loss" else None)
            if isinstance(value, int | float) and math.isfinite(value):
                row[key] = float(value)
        by_epoch[data["epoch"]] = row
    return [by_epoch[k] for k in sorted(by_epoch)]
