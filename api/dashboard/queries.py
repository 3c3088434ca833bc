"""Read-only SQL that several dashboard pages share, always scoped to the viewer's project: a job,
its artifacts and per-epoch training series, the project's checkpoints and datasets; and the job
list's hyperparameter columns (which names exist, a job's value of one)."""

from __future__ import annotations

import math
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mergetune.api.dashboard.auth import Viewer
from mergetune.api.errors import did_you_mean
from mergetune.common.models import Artifact, Checkpoint, Dataset, Job, JobEvent
from mergetune.core.config import HeadHyperparameters, Hyperparameters, MMAHyperparameters

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


# ------------------------------------------------------------------------------ hyperparameter columns

COLUMNS_COOKIE = "mergetune_columns"  # the job list's chosen columns, "."-separated (cookie-safe)
#: What ``columns=`` may name: every job type's resolved hyperparameters, then the job's own fields.
HP_NAMES = tuple(
    sorted(
        set(Hyperparameters.model_fields)
        | set(HeadHyperparameters.model_fields)
        | set(MMAHyperparameters.model_fields)
    )
)
JOB_FIELDS = ("name", "backbone", "dataset")
KNOWN_COLUMNS = HP_NAMES + JOB_FIELDS
MAX_COLUMNS = 12


def parse_columns(raw: str) -> tuple[list[str], list[str], str | None]:
    """``"lr, w_lmc,nope"`` -> (known names in the given order, unknown names, the message naming the
    unknown ones with the closest known names, or None)."""
    names = list(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    known = [n for n in names if n in KNOWN_COLUMNS][:MAX_COLUMNS]
    unknown = [n[:64] for n in names if n not in KNOWN_COLUMNS]
    if not unknown:
        return known, [], None
    parts = [f"{n!r}{did_you_mean(n, KNOWN_COLUMNS)}" for n in unknown[:5]]
    problem = f"columns: no hyperparameter {', '.join(parts)}; the column picker lists the known names."
    return known, unknown, problem


def column_value(job: Job, name: str, dataset_names: dict[str, str]) -> Any:
    """The job's value for a list column: a resolved hyperparameter (None where its job type has
    none), its metadata name, "model / pretrained" or its dataset's name."""
    if name == "name":
        return str((job.metadata_ or {}).get("name") or "") or None
    if name == "backbone":
        bb = job.backbone or {}
        return f"{bb.get('model')} / {bb.get('pretrained')}"
    if name == "dataset":
        return dataset_names.get(job.dataset_id, job.dataset_id)
    return (job.hyperparameters or {}).get(name)


def column_sort_key(value: Any) -> tuple[int, Any] | None:
    """A key that orders one column's values of any JSON type: numbers (and booleans) numerically,
    then text case-insensitively; None (no value) stays None."""
    if value is None:
        return None
    if isinstance(value, bool | int | float):
        return (0, float(value))
    return (1, str(value).lower())
