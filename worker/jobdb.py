"""Worker-side queries on the jobs tables. Each public function is one short transaction of its own
(``session_scope``): the training loop never holds a transaction open, and progress/events written
mid-run are visible to the API at once.

Ownership rule (what makes redelivery safe): a job in an active status belongs to the worker node named
in ``jobs.worker_host`` while that node's heartbeat row is fresh *and* says it is running that job.
Claiming a job and setting the node's ``current_job_id`` happen in the same transaction; so do finishing
it and clearing ``current_job_id``.

The lease: the owner is ``jobs.worker_host`` for attempt ``jobs.attempts`` while the job is active; the
claim takes it with a conditional UPDATE (status and attempt as read), so two workers never both win. The
owner stamps ``jobs.progress_at`` at every stage and progress write; the reconciler (``mergetune.worker.reconcile``)
requeues an active job whose owner died or whose stamp is older than the stall timeout, which ends the
lease: the old owner sees it at its next check and stops without writing.

Database outages: every function here retries on a lost connection (:func:`retrying`, exponential backoff
up to ``RETRY_SECONDS``) and then raises :class:`mergetune.common.db.DatabaseUnavailable`; the Celery task hands
the message back to the broker on it. Retried writes are idempotent (epoch events are written once per
epoch; finishing a job this node already finished returns True).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import or_, select, update

from mergetune.common import webhooks
from mergetune.common.db import DatabaseUnavailable, is_unavailable, rowcount, session_scope
from mergetune.common.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    Artifact,
    Dataset,
    DeviceUsage,
    Job,
    JobEvent,
    JobStatus,
    Project,
    WorkerHeartbeat,
    utcnow,
)
from mergetune.common.scheduling import pick_next, scheduler_lock

logger = logging.getLogger(__name__)

#: A node whose heartbeat is older than this is considered dead (heartbeats come every HEARTBEAT_INTERVAL).
HEARTBEAT_INTERVAL = 5.0
STALE_AFTER = 30.0

_ACTIVE = [s.value for s in ACTIVE_STATUSES]
_TERMINAL = [s.value for s in TERMINAL_STATUSES]
_STARTABLE = [JobStatus.validating.value, JobStatus.queued.value]

#: How long a worker keeps retrying a database call that fails for want of a connection (settings:
#: ``MERGETUNE_DB_RETRY_SECONDS``, set by the pipeline); then DatabaseUnavailable.
RETRY_SECONDS = 120.0
RETRY_FIRST_DELAY = 0.25
RETRY_MAX_DELAY = 2.0

_F = TypeVar("_F", bound=Callable[..., Any])


def retrying(fn: _F) -> _F:
    """Run ``fn`` again (a new transaction each time) while the database is unreachable, backing off
    exponentially, for up to RETRY_SECONDS; then raise DatabaseUnavailable."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + RETRY_SECONDS
        delay, tries = RETRY_FIRST_DELAY, 0
        while True:
            try:
                return fn(*args, **kwargs)
            except DatabaseUnavailable:
                raise
            except Exception as exc:
                if not is_unavailable(exc):
                    raise
                tries += 1
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DatabaseUnavailable(
                        f"database unreachable for {RETRY_SECONDS:.0f} s ({fn.__name__}, {tries} tries): "
                        f"{type(exc).__name__}"
                    ) from exc
                log = logger.warning if tries == 1 else logger.info
                log(
                    "%s: database unreachable (%s); retrying in %.2f s",
                    fn.__name__,
                    type(exc).__name__,
                    delay,
                )
                time.sleep(min(delay, left))
                delay = min(delay * 2, RETRY_MAX_DELAY)

    return wrapper  # type: ignore[return-value]


@dataclass(frozen=True)
class Claim:
    """Outcome of :func:`claim_job`. ``action`` is run | skip | cancelled."""

    action: str
    reason: str
    attempt: int = 0
    resumed: bool = False
    #: Run time of the earlier attempts (seconds), so the finished job reports the total.
    previous_seconds: float = 0.0
    #: The job this claim is about (a wake-up may run another job than the one its message names).
    job_id: str = ""


def _event(session: Any, job_id: str, type_: str, message: str, level: str = "info", **data: Any) -> None:
    session.add(JobEvent(job_id=job_id, type=type_, message=message, level=level, data=data or None))


@retrying
def add_event(url: str, job_id: str, type_: str, message: str, level: str = "info", **data: Any) -> None:
    """Append one event. An ``epoch`` event is written once per epoch number: a write retried after a
    connection lost during its commit (or a backfill) does not add a second one."""
    with session_scope(url) as s:
        if type_ == "epoch" and "epoch" in data and int(data["epoch"]) in _logged_epochs(s, job_id):
            return
        _event(s, job_id, type_, message, level, **data)


def _logged_epochs(s: Any, job_id: str) -> set[int]:
    rows = s.scalars(select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "epoch"))
    return {int(d["epoch"]) for d in rows if isinstance(d, dict) and "epoch" in d}


@retrying
def logged_epochs(url: str, job_id: str) -> set[int]:
    """Epoch numbers that already have an ``epoch`` event."""
    with session_scope(url) as s:
        return _logged_epochs(s, job_id)


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


@retrying
def claim_job(
    url: str,
    job_id: str,
    hostname: str,
    info: dict[str, Any] | None = None,
    *,
    window: float = 3600.0,
) -> Claim:
    """Decide which job this node runs now, and take it (one transaction).

    A message is a wake-up: ``job_id`` names the job it was sent for. That job is resumed if it is
    active and its owner is gone (a killed worker's job), and cancelled if a cancel is pending;
    otherwise this node takes the job fair share picks (:func:`pick_next`), which may be another one
    (the message's own job when it is of the picked project and priority).
    ``Claim.job_id`` says which; ``skip`` when nothing can run now."""
    now = utcnow()
    with session_scope(url) as s:
        scheduler_lock(s)
        job = _locked_job(s, job_id)
        why = "unknown job" if job is None else None
        if job is not None:
            status = job.status
            if status in _TERMINAL:
                why = f"already {status}"
            elif status in _ACTIVE and job.worker_host != hostname and _owner_alive(s, job, now):
                why = f"running on live worker {job.worker_host}"
            elif job.cancel_requested:
                job.status = JobStatus.cancelled.value
                job.finished_at = now
                job.worker_host = job.worker_host or hostname
                _event(s, job.id, "status", "Job cancelled before it started", status="cancelled")
                webhooks.enqueue_job_finished(s, job, now)
                return Claim("cancelled", "cancel requested before start", job_id=job.id)
            elif status in _ACTIVE:
                return _take(s, job, hostname, info, now)  # its owner died: resume it here
            elif status not in _STARTABLE:
                why = f"unexpected status {status}"
        pick = pick_next(s, now, window)
        if pick.job is None:
            reason = "nothing to run" if why is None else f"{why}; nothing else to run"
            blocked = [
                p
                for p, (_u, running, limit) in pick.projects.items()
                if limit is not None and running >= limit
            ]
            if blocked:
                reason += f" ({len(blocked)} project(s) at their running limit)"
            return Claim("skip", reason, job_id=job_id)
        chosen = pick.job
        if (
            job is not None
            and why is None
            and job.status in _STARTABLE
            and job.project_id == chosen.project_id
            and (job.priority or "normal") == (chosen.priority or "normal")
        ):
            chosen = job  # as fair as the pick: the message's own job keeps its message
        return _take(s, chosen, hostname, info, now)


def _take(s: Any, job: Job, hostname: str, info: dict[str, Any] | None, now: datetime) -> Claim:
    """Take the lease of a locked, startable (or orphaned active) job for this node."""
    status = job.status
    resumed = job.attempts > 0
    previous_host = job.worker_host
    previous_seconds = float(job.run_seconds or 0.0)
    if job.attempt_started_at is not None and job.progress_at is not None:
        # the last attempt ran from its start to its last progress stamp
        previous_seconds += max(0.0, (job.progress_at - job.attempt_started_at).total_seconds())
    # The lease, taken with a compare-and-set on what was read: a concurrent claim changed status or
    # attempts, so at most one of two claimers matches a row.
    won = rowcount(
        s.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == status, Job.attempts == job.attempts)
            .values(
                attempts=(job.attempts or 0) + 1,
                status=JobStatus.running.value,
                worker_host=hostname,
                started_at=job.started_at or now,
                error=None,
                progress_at=now,
                attempt_started_at=now,
                run_seconds=previous_seconds,
                updated_at=now,
            )
            .execution_options(synchronize_session="fetch")
        )
    )
    if not won:
        return Claim("skip", "claimed concurrently by another worker", job_id=job.id)
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
    return Claim(
        "run",
        "claimed",
        attempt=job.attempts,
        resumed=resumed,
        previous_seconds=previous_seconds,
        job_id=job.id,
    )


@retrying
def wake_needed(url: str, job_id: str) -> str | None:
    """After ``job_id`` ended: a queued job of its project to send a wake-up for, when the project has a
    running limit (a wake-up that found the project at its limit took no job)."""
    with session_scope(url) as s:
        row = s.execute(
            select(Job.project_id, Project.max_running_jobs)
            .join(Project, Project.id == Job.project_id)
            .where(Job.id == job_id)
        ).first()
        if row is None or row[1] is None:
            return None
        project_id = row[0]
        return s.scalar(
            select(Job.id)
            .where(Job.project_id == project_id, Job.status.in_(_STARTABLE), Job.cancel_requested.is_(False))
            .order_by(Job.queued_at)
            .limit(1)
        )


@retrying
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


@retrying
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


@retrying
def stop_flags(url: str, job_id: str, attempt: int | None = None) -> tuple[bool, str | None]:
    """(cancel_requested, owner) in one cheap primary-key read. The owner is ``worker_host`` while the
    job is active (and, given ``attempt``, still in that attempt); None once the lease ended (the job was
    requeued by the reconciler, or finished)."""
    with session_scope(url) as s:
        row = s.execute(
            select(Job.cancel_requested, Job.worker_host, Job.status, Job.attempts).where(Job.id == job_id)
        ).first()
        if row is None:
            return True, None
        owned = row[2] in _ACTIVE and (attempt is None or row[3] == attempt)
        return bool(row[0]), row[1] if owned else None


@retrying
def write_progress(url: str, job_id: str, progress: dict[str, Any], hostname: str | None = None) -> None:
    """Store the progress and stamp ``progress_at`` (only while ``hostname``, if given, owns the job)."""
    now = utcnow()
    stmt = update(Job).where(Job.id == job_id)
    if hostname is not None:
        stmt = stmt.where(Job.worker_host == hostname)
    with session_scope(url) as s:
        s.execute(stmt.values(progress=progress, progress_at=now, updated_at=now))


@retrying
def stamp(url: str, job_id: str, hostname: str) -> None:
    """The progress stamp alone (stage boundaries): proves the owner is still getting somewhere."""
    now = utcnow()
    with session_scope(url) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.worker_host == hostname, Job.status.in_(_ACTIVE))
            .values(progress_at=now, updated_at=now)
        )


@retrying
def set_evaluating(url: str, job_id: str) -> None:
    with session_scope(url) as s:
        now = utcnow()
        n = rowcount(
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == JobStatus.running.value)
                .values(status=JobStatus.evaluating.value, progress_at=now, updated_at=now)
            )
        )
        if n:
            _event(s, job_id, "status", "Training done; evaluating", status="evaluating")


@retrying
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
    attempt: int | None = None,
    run_seconds: float | None = None,
) -> bool:
    """Move an owned job to a terminal status, replacing its artifact rows (one transaction).

    Returns False (and changes nothing) when this node no longer owns the job (given ``attempt``: in
    that attempt). Returns True when this node already finished it so (a retried call whose first
    commit went through before the connection dropped)."""
    now = utcnow()
    with session_scope(url) as s:
        job = _locked_job(s, job_id)
        if (
            job is not None
            and job.worker_host == hostname
            and job.status == status.value
            and (attempt is None or job.attempts == attempt)
        ):
            return True
        if (
            job is None
            or job.worker_host != hostname
            or job.status not in _ACTIVE
            or (attempt is not None and job.attempts != attempt)
        ):
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
        job.progress_at = now
        if run_seconds is not None:
            job.run_seconds = run_seconds
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
        webhooks.enqueue_job_finished(s, job, now)
        return True


def _heartbeat(s: Any, hostname: str, job_id: str | None, info: dict[str, Any] | None, now: datetime) -> None:
    hb = s.get(WorkerHeartbeat, hostname)
    if hb is None:
        s.add(WorkerHeartbeat(hostname=hostname, last_seen=now, current_job_id=job_id, info=info))
    else:
        hb.last_seen = now
        hb.current_job_id = job_id
        if info is not None:  # the weights inventory stays until the heartbeat thread refreshes it
            kept = hb.info.get("weights") if isinstance(hb.info, dict) else None
            hb.info = {**({"weights": kept} if kept is not None else {}), **info}


#: Jobs this process handed back to the broker while the database was down: {job_id: attempt}. The
#: heartbeat thread releases them (clears current_job_id) once the database answers, unless the job was
#: claimed again meanwhile, so that any worker, not only this one, may take the requeued message.
HANDED_BACK: dict[str, int] = {}


def heartbeat(
    url: str,
    hostname: str,
    info: dict[str, Any] | None = None,
    *,
    reset_job: bool = False,
    release: dict[str, int] | None = None,
) -> None:
    """Touch this node's heartbeat row (``reset_job`` clears current_job_id: a fresh worker process;
    ``release`` {job_id: attempt} clears it if it names that job still in that attempt)."""
    now = utcnow()
    with session_scope(url) as s:
        if release:
            # lock the job rows first, in the claim's order (job, then heartbeat): a concurrent claim
            # either commits before (attempts moved on: keep) or waits for this transaction
            current = s.scalar(
                select(WorkerHeartbeat.current_job_id).where(WorkerHeartbeat.hostname == hostname)
            )
            if current in release:
                job = _locked_job(s, current)
                if job is not None and job.attempts == release[current]:
                    s.execute(
                        update(WorkerHeartbeat)
                        .where(
                            WorkerHeartbeat.hostname == hostname, WorkerHeartbeat.current_job_id == current
                        )
                        .values(current_job_id=None)
                    )
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
                    .values(status=new_status, queued_at=now, enqueued_at=now, updated_at=now)
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


@retrying
def requeue_stalled(url: str, stall_timeout: float, *, now: datetime | None = None) -> list[str]:
    """Active jobs whose progress stamp is older than ``stall_timeout`` seconds, whatever their worker's
    heartbeat says (a live worker may be stuck, or may have given the job up while the database was
    down), are put back to ``queued`` (``cancelling`` stays ``cancelling``) and returned for the caller
    to enqueue. This ends the old owner's lease: its next check sees the job is no longer its own. The
    UPDATE is conditional on the status, owner, attempt and stamp read, so concurrent reconcilers and a
    worker stamping at that moment are harmless."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=stall_timeout)
    out: list[str] = []
    with session_scope(url) as s:
        rows = s.execute(
            select(Job.id, Job.worker_host, Job.status, Job.attempts, Job.progress_at, Job.updated_at).where(
                Job.status.in_(_ACTIVE),
                or_(Job.progress_at < cutoff, Job.progress_at.is_(None) & (Job.updated_at < cutoff)),
            )
        ).all()
        for job_id, host, status, attempts, stamp_at, _updated in rows:
            new_status = status if status == JobStatus.cancelling.value else JobStatus.queued.value
            stmt = update(Job).where(
                Job.id == job_id, Job.status == status, Job.attempts == attempts, Job.worker_host == host
            )
            stmt = stmt.where(Job.progress_at == stamp_at) if stamp_at is not None else stmt
            n = rowcount(
                s.execute(stmt.values(status=new_status, queued_at=now, enqueued_at=now, updated_at=now))
            )
            if n:
                idle = (now - stamp_at).total_seconds() if stamp_at is not None else None
                _event(
                    s,
                    job_id,
                    "status",
                    f"No progress from worker {host} for "
                    + (f"{idle:.0f} s" if idle is not None else "too long")
                    + f" (stall timeout {stall_timeout:.0f} s); job requeued",
                    level="warning",
                    status=new_status,
                    previous_worker=host,
                    stalled_seconds=idle,
                )
                out.append(job_id)
    return out


@retrying
def queued_jobs(url: str, *, enqueued_before: datetime) -> list[str]:
    """``queued`` jobs whose last message was sent before ``enqueued_before`` (oldest first)."""
    with session_scope(url) as s:
        sent = Job.enqueued_at
        rows = s.execute(
            select(Job.id)
            .where(
                Job.status == JobStatus.queued.value,
                or_(sent < enqueued_before, sent.is_(None) & (Job.queued_at < enqueued_before)),
            )
            .order_by(Job.queued_at)
        ).all()
        return [r[0] for r in rows]


@retrying
def mark_enqueued(url: str, job_ids: list[str], *, reason: str | None = None) -> None:
    """Record that a message was just sent for these jobs (and, with ``reason``, an event saying why)."""
    if not job_ids:
        return
    now = utcnow()
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id.in_(job_ids)).values(enqueued_at=now))
        if reason:
            for job_id in job_ids:
                _event(s, job_id, "status", reason, level="warning", status=JobStatus.queued.value)


@retrying
def job_states(url: str, job_ids: list[str]) -> dict[str, tuple[str, datetime | None]]:
    """{job_id: (status, enqueued_at)} for the jobs that exist."""
    if not job_ids:
        return {}
    with session_scope(url) as s:
        rows = s.execute(select(Job.id, Job.status, Job.enqueued_at).where(Job.id.in_(job_ids))).all()
        return {r[0]: (r[1], r[2]) for r in rows}


@retrying
def storage_full_since(url: str, job_id: str) -> datetime | None:
    """When this job first found the disk full, counting only hand-backs with no epoch finished
    since (progress restarts the clock); None when it is not waiting for space."""
    with session_scope(url) as s:
        last = s.execute(
            select(JobEvent.id, JobEvent.data)
            .where(JobEvent.job_id == job_id, JobEvent.type == "storage_full")
            .order_by(JobEvent.id.desc())
            .limit(1)
        ).first()
        if last is None:
            return None
        progressed = s.scalar(
            select(JobEvent.id)
            .where(JobEvent.job_id == job_id, JobEvent.type == "epoch", JobEvent.id > last[0])
            .limit(1)
        )
        since = last[1].get("since") if isinstance(last[1], dict) else None
        if progressed is not None or not isinstance(since, str):
            return None
        try:
            parsed = datetime.fromisoformat(since)
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=utcnow().tzinfo)


@retrying
def add_device_seconds(url: str, job_id: str, seconds: float, *, now: datetime | None = None) -> None:
    """Count ``seconds`` of device time (training, one attempt) to the job and the usage ledger."""
    now = now or utcnow()
    seconds = max(0.0, float(seconds))
    with session_scope(url) as s:
        project_id = s.scalar(select(Job.project_id).where(Job.id == job_id))
        if project_id is None:
            return
        s.execute(update(Job).where(Job.id == job_id).values(device_seconds=Job.device_seconds + seconds))
        s.add(
            DeviceUsage(
                project_id=project_id,
                job_id=job_id,
                day=now.date().isoformat(),
                seconds=seconds,
                created_at=now,
            )
        )
