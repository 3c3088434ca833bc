"""Worker-side queries on the jobs tables. Each public function is one short transaction of its own
(``session_scope``): the training loop never holds a transaction open, and progress/events written
mid-run are visible to the API at once.

Ownership rule (what makes redelivery safe): a job in an active status belongs to the worker node named
in ``jobs.worker_host`` while that node's heartbeat row is fresh *and* says it is running that job.
Claiming a job and setting the node's ``current_job_id`` happen in the same transaction; so do finishing
it and clearing ``current_job_id``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select, update

from common.db import rowcount, session_scope
from common.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Artifact,
    Dataset,
    Job,
    JobEvent,
    JobStatus,
    WorkerHeartbeat,
    utcnow,
)

logger = logging.getLogger(__name__)

#: A node whose heartbeat is older than this is considered dead (heartbeats come every HEARTBEAT_INTERVAL).
HEARTBEAT_INTERVAL = 5.0
STALE_AFTER = 30.0

_ACTIVE = [s.value for s in ACTIVE_STATUSES]
_TERMINAL = [s.value for s in TERMINAL_STATUSES]
_STARTABLE = [JobStatus.validating.value, JobStatus.queued.value]


@dataclass(frozen=True)
class Claim:
    """Outcome of :func:`claim_job`. ``action`` is run | skip | cancelled."""

    action: str
    reason: str
    attempt: int = 0
    resumed: bool = False


def _event(session: Any, job_id: str, type_: str, message: str, level: str = "info", **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, message=message, level=level, data=data or None))


def add_event(url: str, job_id: str, type_: str, message: str, level: str = "info", **data: Any) -> None:
    with session_scope(url) as s:
        _event(s, job_id, type_, message, level, **data)


def logged_epochs(url: str, job_id: str) -> set[int]:
    """Epoch numbers that already have an ``epoch`` event."""
    with session_scope(url) as s:
        rows = s.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "epoch"))
        return {int(d["epoch"]) for d in rows if isinstance(d, dict) and "epoch" in d}


def _owner_alive(session: Any, job: Job, now: datetime) -> bool:
    if not job.worker_host:
        return False
    hb = session.get(WorkerHeartbeat, job.worker_host)
    return bool(
        hb is not None
        and hb.current_job_id == job.id
        and hb.last_seen is not None
        and hb.last_seen >= now - timedelta(seconds=STALE_AFTER)
    )


def _locked_job(session: Any, job_id: str) -> Job | None:
    stmt = select(Job).where(Job.id == job_id)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    return session.execute(stmt).scalar_one_or_none()


def claim_job(url: str, job_id: str, hostname: str, info: dict[str, Any] | None = None) -> Claim:
    """Decide whether this node runs ``job_id`` now, and take it if so (one transaction)."""
    now = utcnow()
    with session_scope(url) as s:
        job = _locked_job(s, job_id)
        if job is None:
            return Claim("skip", "unknown job")
        status = job.status
        if status in _TERMINAL:
            return Claim("skip", f"already {status}")
        if status in _ACTIVE and job.worker_host != hostname and _owner_alive(s, job, now):
            return Claim("skip", f"running on live worker {job.worker_host}")
        if job.cancel_requested:
            job.status = JobStatus.cancelled.value
            job.finished_at = now
            job.worker_host = job.worker_host or hostname
            _event(s, job.id, "status", "Job cancelled before it started", status="cancelled")
            return Claim("cancelled", "cancel requested before start")
        if status not in _STARTABLE and status not in _ACTIVE:
            return Claim("skip", f"unexpected status {status}")
        resumed = job.attempts > 0
        previous_host = job.worker_host
        job.attempts = (job.attempts or 0) + 1
        job.status = JobStatus.running.value
        job.worker_host = hostname
        job.started_at = job.started_at or now
        job.error = None
        _heartbeat(s, hostname, job.id, info, now)
        if resumed:
            _event(
                s,
                job.id,
                "status",
                f"Job restarted on {hostname} (attempt {job.attempts}; previously on {previous_host})",
                status="running",
                attempt=job.attempts,
                worker=hostname,
                previous_worker=previous_host,
            )
        else:
            _event(s, job.id, "status", f"Job started on {hostname}", status="running", worker=hostname)
        return Claim("run", "claimed", attempt=job.attempts, resumed=resumed)


def load_job_inputs(url: str, job_id: str) -> dict[str, Any]:
    """Plain copies of the job, checkpoint and dataset rows (no ORM objects escape the session)."""
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        if job is None:
            raise LookupError(job_id)
        ck, ds = job.checkpoint, job.dataset

        def row(obj: Any) -> dict[str, Any]:
            return {c.key: getattr(obj, c.key) for c in obj.__mapper__.column_attrs}

        return {"job": row(job), "checkpoint": row(ck), "dataset": row(ds)}


def load_datasets(url: str, project_id: str, dataset_ids: list[str]) -> list[dict[str, Any] | None]:
    """Plain copies of the project's dataset rows with these ids, in that order (None: no such row)."""
    if not dataset_ids:
        return []
    with session_scope(url) as s:
        found = {
            d.id: {c.key: getattr(d, c.key) for c in d.__mapper__.column_attrs}
            for d in s.scalars(
                select(Dataset).where(Dataset.project_id == project_id, Dataset.id.in_(dataset_ids))
            )
        }
        return [found.get(i) for i in dataset_ids]


def cancel_requested(url: str, job_id: str) -> bool:
    return stop_flags(url, job_id)[0]


def stop_flags(url: str, job_id: str) -> tuple[bool, str | None]:
    """(cancel_requested, worker_host) in one cheap primary-key read."""
    with session_scope(url) as s:
        row = s.execute(select(Job.cancel_requested, Job.worker_host).where(Job.id == job_id)).first()
        return (bool(row[0]), row[1]) if row else (True, None)


def write_progress(url: str, job_id: str, progress: dict[str, Any]) -> None:
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(progress=progress, updated_at=utcnow()))


def set_evaluating(url: str, job_id: str) -> None:
    with session_scope(url) as s:
        n = rowcount(
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.running.value)
                .values(status=JobStatus.evaluating.value, updated_at=utcnow())
            )
        )
        if n:
            _event(s, job_id, "status", "Training done; evaluating", status="evaluating")


def finish_job(
    url: str,
    job_id: str,
    hostname: str,
    status: JobStatus,
    *,
    message: str,
    metrics: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    progress: dict[str, Any] | None = None,
    artifacts: list[dict[str, Any]] | None = None,
    level: str = "info",
    verdict: dict[str, Any] | None = None,
) -> bool:
    """Move an owned job to a terminal status, replacing its artifact rows (one transaction).

    Returns False (and changes nothing) when this node no longer owns the job."""
    now = utcnow()
    with session_scope(url) as s:
        job = _locked_job(s, job_id)
        if job is None or job.worker_host != hostname or job.status in _TERMINAL:
            logger.warning(
                "job %s: not finishing as %s; no longer owned by %s", job_id, status.value, hostname
            )
            return False
        if artifacts is not None:
            for old in s.execute(select(Artifact).where(Artifact.job_id == job_id)).scalars():
                s.delete(old)
            s.flush()
            for a in artifacts:
                s.add(Artifact(job_id=job_id, **a))
        job.status = status.value
        job.finished_at = now
        if metrics is not None:
            job.metrics = metrics
        if verdict is not None:
            job.verdict = verdict
        if progress is not None:
            job.progress = progress
        job.error = error
        hb = s.get(WorkerHeartbeat, hostname)
        if hb is not None and hb.current_job_id == job_id:
            hb.current_job_id = None
            hb.last_seen = now
        if verdict is not None:
            warnings = [w for w in verdict.get("warnings") or [] if isinstance(w, dict)]
            _event(
                s,
                job_id,
                "verdict",
                str(verdict.get("text", "")),
                level="warning" if warnings else "info",
                warnings=[w.get("code") for w in warnings],
            )
        _event(
            s,
            job_id,
            "status",
            message,
            level=level,
            status=status.value,
            **({"error": error} if error else {}),
        )
        return True


def _heartbeat(s: Any, hostname: str, job_id: str | None, info: dict[str, Any] | None, now: datetime) -> None:
    hb = s.get(WorkerHeartbeat, hostname)
    if hb is None:
        s.add(WorkerHeartbeat(hostname=hostname, last_seen=now, current_job_id=job_id, info=info))
    else:
        hb.last_seen = now
        hb.current_job_id = job_id
        if info is not None:
            hb.info = info


def heartbeat(
    url: str, hostname: str, info: dict[str, Any] | None = None, *, reset_job: bool = False
) -> None:
    """Touch this node's heartbeat row (``reset_job`` clears current_job_id: a fresh worker process)."""
    now = utcnow()
    with session_scope(url) as s:
        hb = s.get(WorkerHeartbeat, hostname)
        if hb is None:
            s.add(WorkerHeartbeat(hostname=hostname, last_seen=now, current_job_id=None, info=info))
            return
        hb.last_seen = now
        if reset_job:
            hb.current_job_id = None
        if info is not None:
            hb.info = info


def requeue_orphans(url: str, *, now: datetime | None = None) -> list[str]:
    """Active jobs whose owner node is dead (stale heartbeat) or no longer running them are put back
    to ``queued`` (``cancelling`` stays ``cancelling``) and returned, for the caller to enqueue after
    this transaction committed. The conditional UPDATE makes concurrent reapers harmless."""
    now = now or utcnow()
    out: list[str] = []
    with session_scope(url) as s:
        jobs = s.execute(select(Job.id, Job.worker_host, Job.status).where(Job.status.in_(_ACTIVE))).all()
        for job_id, host, status in jobs:
            hb = s.get(WorkerHeartbeat, host) if host else None
            alive = (
                hb is not None
                and hb.current_job_id == job_id
                and hb.last_seen >= now - timedelta(seconds=STALE_AFTER)
            )
            if alive:
                continue
            new_status = status if status == JobStatus.cancelling.value else JobStatus.queued.value
            n = rowcount(
                s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.worker_host == host, Job.status == status)
                    .values(status=new_status, queued_at=now, updated_at=now)
                )
            )
            if n:
                reason = (
                    "no heartbeat"
                    if hb is None
                    else ("stale heartbeat" if hb.current_job_id == job_id else "worker restarted")
                )
                _event(
                    s,
                    job_id,
                    "status",
                    f"Worker {host} lost ({reason}); job requeued",
                    level="warning",
                    status=new_status,
                    previous_worker=host,
                )
                out.append(job_id)
    return out
