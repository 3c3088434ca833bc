"""DELETE of jobs, checkpoints, datasets and sweeps: the rows go (a checkpoint that jobs refer to stays
as a deleted record) and so do their bytes in the artifact store; the answer says how much was freed.

Anything a job that has not finished uses is refused with 409 (``in_use``) and nothing is removed: a
queued or running job, a checkpoint or dataset such a job names, a sweep with such jobs."""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from mergetune.api.errors import Conflict, NotFound
from mergetune.api.schemas import FreedRead
from mergetune.common import repositories as repo
from mergetune.common.lifecycle import Freed, free_prefix
from mergetune.common.models import TERMINAL_STATUSES, Dataset, Job, Sweep, utcnow
from mergetune.common.storage import ArtifactStore

_TERMINAL = [s.value for s in TERMINAL_STATUSES]


def _answer(obj_id: str, kind: str, freed: Freed) -> FreedRead:
    return FreedRead(id=obj_id, object=kind, freed_bytes=freed.bytes, freed_files=freed.files)


def _unfinished(session: Session, *where: Any) -> list[str]:
    rows = session.scalars(
        select(Job.id).where(*where, Job.status.not_in(_TERMINAL)).order_by(Job.id).limit(5)
    )
    return list(rows)


def delete_job(session: Session, store: ArtifactStore, project_id: str, job_id: str) -> FreedRead:
    job = repo.get_job(session, project_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found", param="id")
    if job.status not in _TERMINAL:
        raise Conflict(f"job {job.id} is {job.status}; cancel it first", code="in_use", param="id")
    if job.sweep_id is not None:
        raise Conflict(
            f"job {job.id} is a cell of sweep {job.sweep_id}; delete the sweep", code="in_use", param="id"
        )
    freed = free_prefix(store, f"jobs/{job.id}/")
    session.execute(delete(Job).where(Job.id == job.id))
    session.commit()
    return _answer(job_id, "job", freed)


def delete_checkpoint(
    session: Session, store: ArtifactStore, project_id: str, checkpoint_id: str
) -> FreedRead:
    """The checkpoint's files go; its row stays as a deleted record when jobs refer to it."""
    ckpt = repo.get_checkpoint(session, project_id, checkpoint_id)
    if ckpt is None:
        raise NotFound(f"checkpoint {checkpoint_id!r} not found", param="id")
    busy = _unfinished(session, Job.checkpoint_id == ckpt.id)
    if busy:
        raise Conflict(
            f"checkpoint {ckpt.id} is used by unfinished job(s) {', '.join(busy)}", code="in_use", param="id"
        )
    freed = free_prefix(store, f"checkpoints/{ckpt.id}/")
    ckpt.deleted_at = utcnow()
    session.commit()
    return _answer(checkpoint_id, "checkpoint", freed)


def delete_dataset(session: Session, project_id: str, dataset_id: str) -> FreedRead:
    """A dataset is a reference (its data is not in the store): the row goes once no job names it."""
    ds = repo.get_dataset(session, project_id, dataset_id)
    if ds is None:
        raise NotFound(f"dataset {dataset_id!r} not found", param="id")
    busy = _unfinished(session, Job.dataset_id == ds.id)
    if busy:
        raise Conflict(
            f"dataset {ds.id} is used by unfinished job(s) {', '.join(busy)}", code="in_use", param="id"
        )
    kept = session.scalar(select(func.count()).select_from(Job).where(Job.dataset_id == ds.id)) or 0
    if kept:
        raise Conflict(
            f"dataset {ds.id} is the dataset of {kept} finished job(s); delete them first",
            code="in_use",
            param="id",
        )
    session.execute(delete(Dataset).where(Dataset.id == ds.id))
    session.commit()
    return _answer(dataset_id, "dataset", Freed())


def delete_sweep(session: Session, store: ArtifactStore, project_id: str, sweep_id: str) -> FreedRead:
    """The sweep, its jobs and all their files (and the sweep's own, e.g. its report)."""
    sweep = repo.get_sweep(session, project_id, sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id!r} not found", param="id")
    busy = _unfinished(session, Job.sweep_id == sweep.id)
    if busy:
        raise Conflict(
            f"sweep {sweep.id} has unfinished job(s) {', '.join(busy)}; cancel it first",
            code="in_use",
            param="id",
        )
    freed = Freed()
    job_ids = [j.id for j in repo.sweep_jobs(session, sweep.id)]
    for job_id in job_ids:
        freed.add(free_prefix(store, f"jobs/{job_id}/"))
    freed.add(free_prefix(store, f"sweeps/{sweep.id}/"))
    if job_ids:
        session.execute(delete(Job).where(Job.id.in_(job_ids)))
    session.execute(delete(Sweep).where(Sweep.id == sweep.id))
    session.commit()
    return _answer(sweep_id, "sweep", freed)
