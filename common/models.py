"""SQLAlchemy 2 ORM models: the record of truth shared by the API and the workers.

Portable types only (``JSON`` not ``JSONB``, string ids, timezone-aware timestamps stored via
:class:`UTCDateTime`) so that the same models and Alembic migrations run on Postgres and on SQLite
(the embedded mode).

Ids are ``<prefix>_<12 hex ms timestamp><12 hex random>``: they sort by creation time, which the
cursor pagination relies on (``ORDER BY id DESC``, ``after`` = last id seen).
"""

from __future__ import annotations

import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id(prefix: str) -> str:
    """Time-ordered id: ``prefix_`` + 12 hex digits of epoch milliseconds + 12 random hex digits."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(6)}"


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite drops the offset; we put it back)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class JobStatus(StrEnum):
    validating = "validating"
    queued = "queued"
    running = "running"
    evaluating = "evaluating"
    succeeded = "succeeded"
    failed = "failed"
    cancelling = "cancelling"
    cancelled = "cancelled"
    #: Stopped at its ``max_runtime_seconds``; its last epoch state is kept (a clone resumes from it).
    timed_out = "timed_out"
    #: A finished job past its project's retention: the record stays, its stored files are gone.
    expired = "expired"


TERMINAL_STATUSES = frozenset(
    {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled, JobStatus.timed_out, JobStatus.expired}
)
ACTIVE_STATUSES = frozenset({JobStatus.running, JobStatus.evaluating, JobStatus.cancelling})


class Priority(StrEnum):
    """Order of a project's queued jobs (then oldest first); between projects, fair share decides."""

    low = "low"
    normal = "normal"
    high = "high"


class CheckpointStatus(StrEnum):
    ready = "ready"
    rejected = "rejected"


class JobType(StrEnum):
    prompt = "prompt"
    linear_head = "linear_head"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {datetime: UTCDateTime(), dict[str, Any]: JSON, list[Any]: JSON}


class Project(Base):
    __tablename__ = "projects"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("proj"))
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Fair share (operator-set, ``mergetune project set``): the project's recent device time is divided
    #: by its weight when workers choose whose job runs next; at most ``max_running_jobs`` of its jobs
    #: run at once (None: no limit).
    weight: Mapped[float] = mapped_column(Float, default=1.0, server_default="1")
    max_running_jobs: Mapped[int | None] = mapped_column(Integer, default=None)
    #: MLflow tracking (operator-set, ``mergetune project set``): where this project's jobs log their
    #: runs (None: nowhere), unless a job names its own.
    mlflow_tracking_uri: Mapped[str | None] = mapped_column(String(1024), default=None)
    mlflow_experiment: Mapped[str | None] = mapped_column(String(255), default=None)
    #: ``max_runtime_seconds`` of the project's jobs that do not give one (None: no deadline).
    default_max_runtime_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    #: Retention: the reconciler removes the stored files of the project's jobs finished more than this
    #: many days ago and marks them ``expired`` (None: kept until deleted).
    retention_days: Mapped[int | None] = mapped_column(Integer, default=None)
    #: Quotas (operator-set; None: off). Stored bytes is a hard cap on uploads (403); device seconds
    #: per UTC day refuses new jobs (429 until midnight) and holds queued ones (they wait).
    quota_stored_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    quota_device_seconds_per_day: Mapped[float | None] = mapped_column(Float, default=None)


class ApiToken(Base):
    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("tok"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the secret
    prefix: Mapped[str] = mapped_column(String(16))  # first characters, to recognise a token in lists
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(default=None)
    expires_at: Mapped[datetime | None] = mapped_column(default=None)  # None: never expires
    revoked_at: Mapped[datetime | None] = mapped_column(default=None)

    project: Mapped[Project] = relationship(lazy="joined")


class Checkpoint(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (Index("ix_checkpoints_project_id_id", "project_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ckpt"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str | None] = mapped_column(String(32), default=None)  # dassl|state_dict|safetensors
    method: Mapped[str | None] = mapped_column(String(32), default=None)  # mergetune.core.config.Method value
    status: Mapped[str] = mapped_column(String(16))  # CheckpointStatus
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # {code, message, param}
    n_ctx: Mapped[int | None] = mapped_column(default=None)
    ctx_dim: Mapped[int | None] = mapped_column(default=None)
    csc: Mapped[bool | None] = mapped_column(Boolean, default=None)
    n_cls: Mapped[int | None] = mapped_column(default=None)
    #: CoOp's class-token position (end|middle|front) given at upload; None: not given (jobs use ``end``).
    class_token_position: Mapped[str | None] = mapped_column(String(8), default=None)
    #: Extra facts from ingestion (epoch, unknown_globals, head shape ...).
    #: Deferred: loaded only when read (list endpoints never load it).
    info: Mapped[dict[str, Any] | None] = mapped_column(default=None, deferred=True)
    original_key: Mapped[str | None] = mapped_column(String(512), default=None)  # the upload, for audit
    tensors_key: Mapped[str | None] = mapped_column(String(512), default=None)  # extracted safetensors
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(default=None)


class UploadedWeights(Base):
    """Backbone weights uploaded once to the service (``POST /v1/weights``) and named by jobs as
    ``backbone.pretrained = "weights:<id>"`` or ``"sha256:<hex>"``: one record per project and content
    (sha256); the file lies in the artifact store under ``storage_key`` (content-addressed)."""

    __tablename__ = "weights"
    __table_args__ = (
        Index("ix_weights_project_id_id", "project_id", "id"),
        UniqueConstraint("project_id", "sha256", name="uq_weights_project_id_sha256"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wgt"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    filename: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    format: Mapped[str] = mapped_column(String(32))  # safetensors | state_dict
    storage_key: Mapped[str] = mapped_column(String(512))
    #: What the validation found: tensor count, parameters, dtypes, layout and the widths it could read.
    summary: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (Index("ix_datasets_project_id_id", "project_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("ds"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    kind: Mapped[str] = mapped_column(String(32))  # mergetune.core.config.DatasetKind value
    path: Mapped[str | None] = mapped_column(String(1024), default=None)  # relative to DATA_ROOT
    coop_name: Mapped[str | None] = mapped_column(String(64), default=None)
    options: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    num_classes: Mapped[int] = mapped_column(Integer)
    classnames: Mapped[list[Any]] = mapped_column()
    base_classes: Mapped[list[Any]] = mapped_column()
    novel_classes: Mapped[list[Any]] = mapped_column()
    split_sizes: Mapped[dict[str, Any]] = mapped_column()
    template: Mapped[str] = mapped_column(Text)
    sha256_of_split: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The dataset's own object-store credentials as a Fernet token (mergetune.common.secrets), and the
    #: masked access key id shown in answers; both null when the service's identity reads the bucket.
    credentials_sealed: Mapped[str | None] = mapped_column(Text, default=None)
    credentials_hint: Mapped[str | None] = mapped_column(String(64), default=None)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_project_id_id", "project_id", "id"),
        Index("ix_jobs_status_queued_at", "status", "queued_at"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("job"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    checkpoint_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id"), index=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    job_type: Mapped[str] = mapped_column(String(16))  # JobType
    backbone: Mapped[dict[str, Any]] = mapped_column()  # mergetune.core.config.BackboneSpec dump
    hyperparameters: Mapped[dict[str, Any]] = mapped_column()  # resolved (defaults filled in)
    metadata_: Mapped[dict[str, Any]] = mapped_column("metadata", default=dict)
    #: Extra datasets (ids, same project) the result is evaluated on (cross-dataset / shift); None = none.
    eval_dataset_ids: Mapped[list[Any] | None] = mapped_column(default=None)
    #: mergetune.core.config.Protocol value: which classes the checkpoint was trained on (base2novel | all).
    protocol: Mapped[str] = mapped_column(String(16), default="base2novel", server_default="base2novel")
    #: Resolved prompt assembly ({"class_token_position": ...}) for prompt jobs; None for linear heads.
    prompt: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.validating.value)
    #: Priority value: order among the project's queued jobs.
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")
    progress: Mapped[dict[str, Any] | None] = mapped_column(
        default=None
    )  # {epoch, epochs, step, steps, loss}
    metrics: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # {zero_shot, fine_tuned, recovered}
    verdict: Mapped[dict[str, Any] | None] = mapped_column(
        default=None
    )  # mergetune.core.evaluation.result.Verdict dump
    error: Mapped[dict[str, Any] | None] = mapped_column(default=None)  # {code, message, user_error}
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_host: Mapped[str | None] = mapped_column(String(255), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[datetime | None] = mapped_column(default=None)
    started_at: Mapped[datetime | None] = mapped_column(default=None)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    #: Progress stamp: written by the owning worker at every stage, progress write and epoch end. An
    #: active job whose stamp is older than RECONCILE_STALL_TIMEOUT is requeued by the reconciler.
    progress_at: Mapped[datetime | None] = mapped_column(default=None)
    #: When a run message was last sent to the broker for this job (API, reaper or reconciler).
    enqueued_at: Mapped[datetime | None] = mapped_column(default=None)
    #: Start of the current attempt, and the run time of the earlier ones (reports count all attempts).
    attempt_started_at: Mapped[datetime | None] = mapped_column(default=None)
    run_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: Seconds the worker's device (GPU, or CPU) spent training this job, all attempts (usage).
    device_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    #: Deadline: the job's run time (all attempts) after which it stops and ends ``timed_out``.
    max_runtime_seconds: Mapped[int | None] = mapped_column(Integer, default=None)
    #: A timed-out job of the project whose last epoch state this job starts from.
    resume_from_job_id: Mapped[str | None] = mapped_column(String(40), default=None)
    #: The sweep this job is a cell (x grid point) of; None for jobs created on their own.
    sweep_id: Mapped[str | None] = mapped_column(ForeignKey("sweeps.id"), index=True, default=None)
    #: Labels and notes people give a job (PATCH /v1/jobs/{id}, the dashboard); not used by the run.
    tags: Mapped[list[Any] | None] = mapped_column(default=None)
    notes: Mapped[str | None] = mapped_column(Text, default=None)
    #: MLflow: {tracking_uri, experiment} resolved at creation (the job's or its project's), then the
    #: worker adds {experiment_id, run_id, run_url}; None: the job logs to no tracking server.
    mlflow: Mapped[dict[str, Any] | None] = mapped_column(default=None)

    checkpoint: Mapped[Checkpoint] = relationship(lazy="select")
    dataset: Mapped[Dataset] = relationship(lazy="select")


class Sweep(Base):
    """A set of jobs created together: cells (checkpoint, dataset, seed) x grid points, shared settings.

    ``spec`` is the resolved request (backbone, protocol, prompt, hyperparameters, grid, selection) and
    ``cells`` the list of ``{checkpoint_id, dataset_id, dataset, seed, source}``; each job carries the
    sweep's id and its cell / grid-point indices in its metadata (``sweep_cell``, ``sweep_point``)."""

    __tablename__ = "sweeps"
    __table_args__ = (Index("ix_sweeps_project_id_id", "project_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("swp"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    spec: Mapped[dict[str, Any]] = mapped_column()
    cells: Mapped[list[Any]] = mapped_column()
    #: Where the cells came from: None (listed in the request) or {filename, bytes, sha256, checkpoints}.
    source: Mapped[dict[str, Any] | None] = mapped_column(default=None)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: Priority value given to every job of the sweep.
    priority: Mapped[str] = mapped_column(String(8), default="normal", server_default="normal")
    #: When every job of the sweep had finished, set once (with the ``sweep.finished`` webhook event).
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class JobEvent(Base):
    __tablename__ = "job_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    level: Mapped[str] = mapped_column(String(16), default="info")  # debug|info|warning|error
    type: Mapped[str] = mapped_column(String(64))  # e.g. status, progress, epoch, artifact, error
    message: Mapped[str] = mapped_column(Text, default="")
    data: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class Artifact(Base):
    __tablename__ = "artifacts"
    __table_args__ = (UniqueConstraint("job_id", "name"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("art"))
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    bytes: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    media_type: Mapped[str] = mapped_column(String(128))
    key: Mapped[str] = mapped_column(String(512))  # artifact-store key, jobs/<job_id>/<name>
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class IdempotencyKey(Base):
    """One row per (project, Idempotency-Key). ``request_hash`` covers method, path and body; the
    created object is ``job_id`` for jobs or ``resource_id`` for other POSTs."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("project_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), default=None)
    resource_id: Mapped[str | None] = mapped_column(String(40), default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DeviceUsage(Base):
    """Device time used, one row per measurement (a job's training in one attempt), by UTC day: the
    usage ledger (``GET /v1/usage``, the daily device-time quota). Kept when the job is deleted."""

    __tablename__ = "device_usage"
    __table_args__ = (Index("ix_device_usage_project_id_day", "project_id", "day"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    job_id: Mapped[str] = mapped_column(String(40))
    day: Mapped[str] = mapped_column(String(10))  # YYYY-MM-DD (UTC)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WorkerHeartbeat(Base):
    __tablename__ = "worker_heartbeats"

    hostname: Mapped[str] = mapped_column(String(255), primary_key=True)
    last_seen: Mapped[datetime] = mapped_column(default=utcnow)
    current_job_id: Mapped[str | None] = mapped_column(String(40), default=None)
    info: Mapped[dict[str, Any] | None] = mapped_column(default=None)


class WebhookEndpoint(Base):
    """A URL of a project that receives signed event notifications (``/v1/webhooks``).

    The secret is stored as given to the user (``whsec_`` + base64): an HMAC key must be known to sign.
    After a rotation the previous secret still signs (a second signature) until
    ``previous_secret_expires_at``."""

    __tablename__ = "webhook_endpoints"
    __table_args__ = (Index("ix_webhook_endpoints_project_id_id", "project_id", "id"),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("wh"))
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[Any]] = mapped_column()
    description: Mapped[str | None] = mapped_column(Text, default=None)
    secret: Mapped[str] = mapped_column(String(128))
    previous_secret: Mapped[str | None] = mapped_column(String(128), default=None)
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(default=None)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    #: Start of the current run of failed attempts (None after a success); disabled after too long.
    failing_since: Mapped[datetime | None] = mapped_column(default=None)
    disabled_at: Mapped[datetime | None] = mapped_column(default=None)
    disabled_reason: Mapped[str | None] = mapped_column(Text, default=None)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    secret_rotated_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookDelivery(Base):
    """One event for one endpoint: the outbox row, written in the transaction that made the event
    happen, sent (and retried) by the dispatcher. ``event_id`` is the ``webhook-id`` header, the same on
    every attempt; ``payload`` the exact body sent every time."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id"),
        Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_webhook_deliveries_endpoint_id_id", "endpoint_id", "id"),
    )

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=lambda: new_id("whd"))
    endpoint_id: Mapped[str] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[str] = mapped_column(String(40))
    event_type: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending|succeeded|failed
    #: Attempts made since the delivery was created or last redelivered (indexes the retry schedule).
    tries: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(default=utcnow)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(default=None)


class WebhookAttempt(Base):
    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    delivery_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    status_code: Mapped[int | None] = mapped_column(Integer, default=None)
    error: Mapped[str | None] = mapped_column(Text, default=None)
    duration_ms: Mapped[float] = mapped_column(Float, default=0.0)
    success: Mapped[bool] = mapped_column(Boolean, default=False)
