"""Data access shared by the API and the worker. Functions take a Session and never commit: the edge
(HTTP request or Celery task) owns the transaction. Project scoping is explicit: every ``get_*`` that
serves a user takes ``project_id`` so that another project's object reads as missing (404).
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

from sqlalchemy import Select, func, select, update
from sqlalchemy.orm import Session

from mergetune.common import webhooks
from mergetune.common.db import rowcount
from mergetune.common.models import (
    ACTIVE_STATUSES,
    ApiToken,
    Artifact,
    Checkpoint,
    Dataset,
    IdempotencyKey,
    Job,
    JobEvent,
    JobStatus,
    Project,
    Sweep,
    WorkerHeartbeat,
    utcnow,
)

T = TypeVar("T")

TOKEN_PREFIX = "mt_"


@dataclass
class Page(Generic[T]):
    items: list[T]
    has_more: bool

    @property
    def next_cursor(self) -> str | None:
        if not self.has_more or not self.items:
            return None
        return str(self.items[-1].id)  # type: ignore[attr-defined]


def paginate(
    session: Session, stmt: Select[Any], id_column: Any, *, limit: int, after: Any | None
) -> Page[Any]:
    """Newest first (ids are time-ordered); ``after`` is the last id of the previous page."""
    if after is not None:
        stmt = stmt.where(id_column < after)
    rows = list(session.scalars(stmt.order_by(id_column.desc()).limit(limit + 1)))
    return Page(items=rows[:limit], has_more=len(rows) > limit)


# -- projects and tokens ------------------------------------------------------------------------
def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def get_project_by_name(session: Session, name: str) -> Project | None:
    return session.scalar(select(Project).where(Project.name == name))


def get_or_create_project(session: Session, name: str) -> Project:
    project = get_project_by_name(session, name)
    if project is None:
        project = Project(name=name)
        session.add(project)
        session.flush()
    return project


def create_token(
    session: Session, project: Project, *, expires_at: datetime | None = None
) -> tuple[ApiToken, str]:
    """A new bearer token for ``project``; returns the row and the secret (shown once, stored hashed).
    ``expires_at`` None: the token never expires (it can still be revoked)."""
    secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(
        project_id=project.id, token_hash=hash_token(secret), prefix=secret[:10], expires_at=expires_at
    )
    session.add(token)
    session.flush()
    return token, secret


def token_refusal(token: ApiToken, now: datetime | None = None) -> str | None:
    """Why ``token`` may not be used now (``"token_revoked"``, ``"token_expired"``), None when it may."""
    now = now or utcnow()
    if token.revoked_at is not None:
        return "token_revoked"
    if token.expires_at is not None and token.expires_at <= now:
        return "token_expired"
    return None


def find_token(session: Session, secret: str) -> tuple[ApiToken, str] | None:
    """The token row for ``secret`` and its project's name, whatever its state (callers check
    :func:`token_refusal`). The secret is compared through its sha256 (an indexed equality lookup)."""
    row = session.execute(
        select(ApiToken, Project.name)
        .join(Project, Project.id == ApiToken.project_id)
        .where(ApiToken.token_hash == hash_token(secret))
    ).first()
    return (row[0], row[1]) if row is not None else None


def touch_token(session: Session, token_id: str, now: datetime, *, every: timedelta) -> bool:
    """Record a use of the token: one conditional UPDATE, skipped when the stored time is younger than
    ``every`` (so busy tokens cost at most one write per ``every``). True when a row was written."""
    res = session.execute(
        update(ApiToken)
        .where(
            ApiToken.id == token_id,
            (ApiToken.last_used_at.is_(None)) | (ApiToken.last_used_at < now - every),
        )
        .values(last_used_at=now)
        .execution_options(synchronize_session=False)
    )
    return rowcount(res) == 1


def authenticate(session: Session, secret: str) -> ApiToken | None:
    """The usable (not revoked, not expired) token row for ``secret``, touched; None otherwise."""
    found = find_token(session, secret)
    if found is None or token_refusal(found[0]) is not None:
        return None
    found[0].last_used_at = utcnow()
    return found[0]


def list_tokens(session: Session, project_name: str | None = None) -> list[tuple[ApiToken, str]]:
    """Every token (oldest first) with its project's name, optionally of one project."""
    stmt = select(ApiToken, Project.name).join(Project, Project.id == ApiToken.project_id)
    if project_name is not None:
        stmt = stmt.where(Project.name == project_name)
    return [(t, name) for t, name in session.execute(stmt.order_by(ApiToken.id)).all()]


class TokenLookupError(LookupError):
    """No token, or more than one, matches what the operator typed."""


def resolve_token(session: Session, prefix_or_id: str) -> ApiToken:
    """The one token whose id equals ``prefix_or_id`` or whose shown prefix starts with it.
    Raises :class:`TokenLookupError` when none or several match."""
    ref = prefix_or_id.strip()
    if not ref:
        raise TokenLookupError("give a token id (tok_...) or the token's prefix (mt_...)")
    by_id = session.get(ApiToken, ref)
    if by_id is not None:
        return by_id
    matches = list(session.scalars(select(ApiToken).where(ApiToken.prefix.startswith(ref, autoescape=True))))
    if not matches:
        raise TokenLookupError(f"no token matches {ref!r}")
    if len(matches) > 1:
        ids = ", ".join(t.id for t in matches)
        raise TokenLookupError(f"{ref!r} matches {len(matches)} tokens ({ids}); give the token id")
    return matches[0]


def revoke_token(session: Session, token: ApiToken, now: datetime | None = None) -> bool:
    """Revoke ``token`` from now on; False when it was already revoked (the first time is kept)."""
    if token.revoked_at is not None:
        return False
    token.revoked_at = now or utcnow()
    session.flush()
    return True


# -- checkpoints --------------------------------------------------------------------------------
def get_checkpoint(session: Session, project_id: str, checkpoint_id: str) -> Checkpoint | None:
    return session.scalar(
        select(Checkpoint).where(
            Checkpoint.id == checkpoint_id,
            Checkpoint.project_id == project_id,
            Checkpoint.deleted_at.is_(None),
        )
    )


def list_checkpoints(session: Session, project_id: str, *, limit: int, after: str | None) -> Page[Checkpoint]:
    stmt = select(Checkpoint).where(Checkpoint.project_id == project_id, Checkpoint.deleted_at.is_(None))
    return paginate(session, stmt, Checkpoint.id, limit=limit, after=after)


# -- datasets -----------------------------------------------------------------------------------
def get_dataset(session: Session, project_id: str, dataset_id: str) -> Dataset | None:
    return session.scalar(select(Dataset).where(Dataset.id == dataset_id, Dataset.project_id == project_id))


def list_datasets(session: Session, project_id: str, *, limit: int, after: str | None) -> Page[Dataset]:
    stmt = select(Dataset).where(Dataset.project_id == project_id)
    return paginate(session, stmt, Dataset.id, limit=limit, after=after)


# -- jobs ---------------------------------------------------------------------------------------
def get_job(session: Session, project_id: str, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.project_id == project_id))


def get_job_by_id(session: Session, job_id: str, *, for_update: bool = False) -> Job | None:
    """Unscoped lookup for the worker. ``for_update`` locks the row on Postgres (no-op on SQLite)."""
    stmt = select(Job).where(Job.id == job_id)
    if for_update:
        stmt = stmt.with_for_update()
    return session.scalar(stmt)


def list_jobs(
    session: Session,
    project_id: str,
    *,
    limit: int,
    after: str | None,
    status: str | None = None,
    dataset_id: str | None = None,
) -> Page[Job]:
    stmt = select(Job).where(Job.project_id == project_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)
    if dataset_id is not None:
        stmt = stmt.where(Job.dataset_id == dataset_id)
    return paginate(session, stmt, Job.id, limit=limit, after=after)


def queue_position(session: Session, job: Job) -> int | None:
    """1-based position among queued jobs of all projects (FIFO by queued_at), None unless queued."""
    if job.status != JobStatus.queued or job.queued_at is None:
        return None
    ahead = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.status == JobStatus.queued, Job.queued_at < job.queued_at, Job.id != job.id)
    )
    return int(ahead or 0) + 1


def count_jobs_by_status(session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = {s.value: 0 for s in JobStatus}
    counts.update({status: int(n) for status, n in rows})
    return counts


def count_active_jobs(session: Session) -> int:
    return int(
        session.scalar(select(func.count()).select_from(Job).where(Job.status.in_(list(ACTIVE_STATUSES))))
        or 0
    )


def request_cancel(session: Session, job: Job) -> None:
    """Queued/validating -> cancelled now; running/evaluating -> cancelling (the worker finishes it).
    The caller checks the job is not terminal. Uses a conditional UPDATE so that a worker picking the
    job up concurrently cannot be overwritten silently."""
    now = utcnow()
    if job.status in (JobStatus.queued, JobStatus.validating):
        res = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status.in_([JobStatus.queued, JobStatus.validating]))
            .values(status=JobStatus.cancelled, cancel_requested=True, finished_at=now, updated_at=now)
            .execution_options(synchronize_session=False)
        )
        if rowcount(res) == 1:
            session.refresh(job)
            add_event(
                session, job.id, "status", "job cancelled before it started", data={"status": "cancelled"}
            )
            webhooks.enqueue_job_finished(session, job, now)
            return
        session.refresh(job)
    if job.status in (JobStatus.running, JobStatus.evaluating, JobStatus.cancelling):
        job.cancel_requested = True
        job.status = JobStatus.cancelling
        job.updated_at = now
        add_event(session, job.id, "status", "cancellation requested", data={"status": "cancelling"})


def add_event(
    session: Session,
    job_id: str,
    type: str,
    message: str = "",
    *,
    level: str = "info",
    data: dict[str, Any] | None = None,
) -> JobEvent:
    event = JobEvent(job_id=job_id, type=type, message=message, level=level, data=data)
    session.add(event)
    session.flush()
    return event


def list_events(session: Session, job_id: str, *, limit: int, after: int | None) -> Page[JobEvent]:
    """Events oldest first (a log); ``after`` is the last event id seen, so polling tails the log."""
    stmt = select(JobEvent).where(JobEvent.job_id == job_id)
    if after is not None:
        stmt = stmt.where(JobEvent.id > after)
    rows = list(session.scalars(stmt.order_by(JobEvent.id.asc()).limit(limit + 1)))
    return Page(items=rows[:limit], has_more=len(rows) > limit)


# -- artifacts ----------------------------------------------------------------------------------
def list_artifacts(session: Session, job_id: str) -> Sequence[Artifact]:
    return session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)).all()


def get_artifact(session: Session, job_id: str, name: str) -> Artifact | None:
    return session.scalar(select(Artifact).where(Artifact.job_id == job_id, Artifact.name == name))


def upsert_artifact(
    session: Session, job_id: str, name: str, *, bytes: int, sha256: str, media_type: str, key: str
) -> Artifact:
    """Idempotent: a redelivered task that rewrites an artifact updates the one row."""
    art = get_artifact(session, job_id, name)
    if art is None:
        art = Artifact(job_id=job_id, name=name)
        session.add(art)
    art.bytes, art.sha256, art.media_type, art.key = bytes, sha256, media_type, key
    art.created_at = utcnow()
    session.flush()
    return art


# -- idempotency --------------------------------------------------------------------------------
def get_idempotency_key(session: Session, project_id: str, key: str) -> IdempotencyKey | None:
    return session.scalar(
        select(IdempotencyKey).where(IdempotencyKey.project_id == project_id, IdempotencyKey.key == key)
    )


def add_idempotency_key(
    session: Session,
    project_id: str,
    key: str,
    request_hash: str,
    *,
    job_id: str | None = None,
    resource_id: str | None = None,
) -> IdempotencyKey:
    """Not flushed here: on Postgres a concurrent request's INSERT of the same key waits for the first
    transaction and then fails; that must happen at the commit, where ``commit_or_replay`` turns it
    into a replay of the winner's object (a flush here would raise the IntegrityError outside it)."""
    row = IdempotencyKey(
        project_id=project_id, key=key, request_hash=request_hash, job_id=job_id, resource_id=resource_id
    )
    session.add(row)
    return row


# -- workers ------------------------------------------------------------------------------------
def heartbeat(
    session: Session, hostname: str, *, current_job_id: str | None, info: dict[str, Any] | None = None
) -> WorkerHeartbeat:
    hb = session.get(WorkerHeartbeat, hostname)
    if hb is None:
        hb = WorkerHeartbeat(hostname=hostname)
        session.add(hb)
    hb.last_seen = utcnow()
    hb.current_job_id = current_job_id
    if info is not None:
        hb.info = info
    session.flush()
    return hb


def live_workers(session: Session, since: datetime) -> Sequence[WorkerHeartbeat]:
    return session.scalars(select(WorkerHeartbeat).where(WorkerHeartbeat.last_seen >= since)).all()


# -- sweeps -------------------------------------------------------------------------------------
def get_sweep(session: Session, project_id: str, sweep_id: str) -> Sweep | None:
    sweep = session.get(Sweep, sweep_id)
    return sweep if sweep is not None and sweep.project_id == project_id else None


def list_sweeps(session: Session, project_id: str, *, limit: int, after: str | None) -> Page[Sweep]:
    return paginate(
        session, select(Sweep).where(Sweep.project_id == project_id), Sweep.id, limit=limit, after=after
    )


def sweep_jobs(session: Session, sweep_id: str) -> list[Job]:
    return list(session.scalars(select(Job).where(Job.sweep_id == sweep_id).order_by(Job.id)))


def datasets_named(session: Session, project_id: str, name: str) -> list[Dataset]:
    return list(
        session.scalars(select(Dataset).where(Dataset.project_id == project_id, Dataset.name == name))
    )
