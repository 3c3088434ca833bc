"""Request/response schemas (``XCreate`` / ``XRead`` / ``XList``), separate from the ORM models."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from mergetune.common.models import Priority
from mergetune.core.config import BackboneSpec, DatasetKind, PromptOptions, Protocol

MAX_METADATA_KEYS = 32
MAX_METADATA_BYTES = 16 * 1024

T = TypeVar("T")


class _Read(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class ListResponse(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool
    next_cursor: str | None = Field(default=None, description="Pass as `after` to get the next page")


# -- checkpoints --------------------------------------------------------------------------------
class CheckpointError(BaseModel):
    code: str
    message: str
    param: str | None = None


class CheckpointRead(_Read):
    id: str
    object: str = "checkpoint"
    name: str
    filename: str
    bytes: int
    sha256: str
    format: str | None
    method: str | None
    status: str = Field(description="ready | rejected")
    error: CheckpointError | None = None
    n_ctx: int | None
    ctx_dim: int | None
    csc: bool | None
    n_cls: int | None
    class_token_position: str | None = Field(
        default=None, description="end | middle | front as given at upload; null: not given (jobs use end)"
    )
    created_at: datetime


class CheckpointList(ListResponse[CheckpointRead]):
    pass


class DeletedRead(BaseModel):
    id: str
    object: str
    deleted: bool = True


class FreedRead(DeletedRead):
    """A DELETE that removed files from the artifact store: how many, and their bytes."""

    freed_bytes: int = Field(default=0, description="bytes removed from the artifact store")
    freed_files: int = Field(default=0, description="files removed from the artifact store")


# -- datasets -----------------------------------------------------------------------------------
class DatasetCredentials(BaseModel):
    """A dataset's own object-store identity (s3:// paths only), stored sealed, never shown back."""

    model_config = ConfigDict(extra="forbid")

    access_key_id: str = Field(min_length=1, max_length=256)
    secret_access_key: SecretStr = Field(min_length=1, max_length=1024)
    session_token: SecretStr | None = Field(default=None, max_length=8192)
    endpoint_url: str | None = Field(
        default=None, max_length=1024, description="S3-compatible endpoint (default: the service's)"
    )
    region: str | None = Field(default=None, max_length=64)

    @field_validator("endpoint_url")
    @classmethod
    def _http(cls, v: str | None) -> str | None:
        if v is None:
            return v
        v = v.strip()
        if not v.startswith(("http://", "https://")) or len(v) <= len("https://"):
            raise ValueError("must be an http:// or https:// URL")
        return v.rstrip("/")

    def plain(self) -> dict[str, str]:
        """The values, secrets revealed (for sealing and for the store client only)."""
        return {
            "access_key_id": self.access_key_id.strip(),
            "secret_access_key": self.secret_access_key.get_secret_value(),
            "session_token": self.session_token.get_secret_value() if self.session_token else "",
            "endpoint_url": self.endpoint_url or "",
            "region": self.region or "",
        }


class CredentialsRead(BaseModel):
    access_key_id: str = Field(description="Masked: the first and last four characters")
    stored: bool = True


class DatasetCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=255)
    kind: DatasetKind
    path: str | None = Field(
        default=None,
        max_length=1024,
        description="Relative to the server's data root, or s3://bucket/prefix (not needed for builtin)",
    )
    coop_name: str | None = Field(default=None, max_length=64, description="CoOp layout name, e.g. eurosat")
    options: dict[str, Any] | None = Field(
        default=None, description="Kind-specific options (builtin: domain, seed)"
    )
    credentials: DatasetCredentials | None = Field(
        default=None,
        description="The bucket's own credentials (s3:// paths only; needs MERGETUNE_SECRET_KEY on the server)",
    )


class DatasetRead(_Read):
    id: str
    object: str = "dataset"
    name: str
    kind: str
    path: str | None
    coop_name: str | None
    options: dict[str, Any] | None
    num_classes: int
    classnames: list[str]
    base_classes: list[str]
    novel_classes: list[str]
    split_sizes: dict[str, int]
    template: str
    sha256_of_split: str
    created_at: datetime
    credentials: CredentialsRead | None = None

    @model_validator(mode="before")
    @classmethod
    def _credentials(cls, data: Any) -> Any:
        hint = getattr(data, "credentials_hint", None)
        if hint is not None or getattr(data, "credentials_sealed", None) is not None:
            fields = {
                k: getattr(data, k) for k in cls.model_fields if hasattr(data, k) and k != "credentials"
            }
            return {**fields, "credentials": {"access_key_id": hint or "", "stored": True}}
        return data


class DatasetList(ListResponse[DatasetRead]):
    pass


# -- jobs ---------------------------------------------------------------------------------------
#: Most extra evaluation datasets one job may name (each costs an encoding pass over its test split).
MAX_EVAL_DATASETS = 16


#: The longest deadline a job may have (30 days).
MAX_RUNTIME_SECONDS = 30 * 86400


class MlflowTarget(BaseModel):
    """Where a job logs its MLflow run (overrides the project's, set with ``mergetune project set``)."""

    model_config = ConfigDict(extra="forbid")

    tracking_uri: str = Field(min_length=1, max_length=1024, description="http(s) URL of the tracking server")
    experiment: str = Field(default="mergetune", min_length=1, max_length=255)

    @field_validator("tracking_uri")
    @classmethod
    def _http(cls, v: str) -> str:
        v = v.strip()
        if not v.startswith(("http://", "https://")) or len(v) <= len("https://"):
            raise ValueError("must be an http:// or https:// URL of an MLflow tracking server")
        return v.rstrip("/")


class JobCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint_id: str = Field(min_length=1, max_length=40)
    dataset_id: str = Field(min_length=1, max_length=40)
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    protocol: Protocol = Field(
        default=Protocol.base2novel,
        description="base2novel: the checkpoint was trained on the base half of the dataset's classes; "
        "all: on every class (evaluated on all classes and on any eval_dataset_ids)",
    )
    prompt: PromptOptions | None = Field(
        default=None,
        description="Prompt assembly of a prompt checkpoint: class_token_position end | middle | front "
        "(default: the value given at upload, else end)",
    )
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict,
        description="mergetune.core.config.Hyperparameters (prompt checkpoints) or HeadHyperparameters (linear_head); "
        "unset fields take the reference defaults and are echoed back resolved",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict,
        description=f"Free-form string labels: at most {MAX_METADATA_KEYS} keys and "
        f"{MAX_METADATA_BYTES} bytes as compact JSON",
    )
    eval_dataset_ids: list[str] = Field(
        default_factory=list,
        max_length=MAX_EVAL_DATASETS,
        description="Other datasets of the project to evaluate the result on too (cross-dataset and "
        "distribution-shift evaluation, listed in the report as extra evaluations)",
    )
    priority: Priority = Field(
        default=Priority.normal,
        description="low | normal | high: order among the project's queued jobs (then oldest first); "
        "between projects, fair share decides",
    )
    mlflow: MlflowTarget | None = Field(
        default=None, description="MLflow tracking server and experiment of this job (default: the project's)"
    )
    max_runtime_seconds: int | None = Field(
        default=None,
        ge=1,
        le=MAX_RUNTIME_SECONDS,
        description="Deadline: after this much run time (all attempts) the job stops at its next step, "
        "keeps its last epoch state and ends timed_out (default: the project's, else none)",
    )
    resume_from: str | None = Field(
        default=None,
        max_length=40,
        description="A timed_out job of the project with the same checkpoint, dataset, backbone and "
        "hyperparameters: this job starts from its last epoch state",
    )

    @field_validator("metadata")
    @classmethod
    def _metadata_bounded(cls, value: dict[str, str]) -> dict[str, str]:
        # Echoed by every job read and list: bounded so that no job can bloat them.
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys (got {len(value)})")
        size = len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"at most {MAX_METADATA_BYTES} bytes as JSON (got {size})")
        return value


class Progress(BaseModel):
    model_config = ConfigDict(extra="allow")

    epoch: int | None = None
    epochs: int | None = None
    step: int | None = None
    steps: int | None = None
    loss: float | None = None


class JobError(BaseModel):
    model_config = ConfigDict(extra="allow")

    code: str = "error"
    message: str = ""
    user_error: bool | None = None


class QueueInfo(BaseModel):
    """Where a queued job stands (``null`` unless queued)."""

    position: int = Field(description="1-based: the order workers will take the queued jobs in (fair share)")
    reason: str = Field(
        description="waiting_for_worker | fair_share | project_running_limit | quota_exceeded"
    )
    message: str


class UsageDay(BaseModel):
    day: str = Field(description="YYYY-MM-DD (UTC)")
    device_seconds: float
    jobs_created: int
    jobs_finished: int
    bytes_added: int = Field(description="checkpoints uploaded and artifacts written that day")


class StoredBytes(BaseModel):
    checkpoints: int
    artifacts: int
    weights: int = Field(default=0, description="uploaded backbone weights (POST /v1/weights)")
    total: int


class UsageRead(BaseModel):
    object: str = "usage"
    project_id: str
    device_seconds: float = Field(description="training time on the workers' devices, all time")
    jobs: int
    stored_bytes: StoredBytes = Field(description="what the project keeps in the artifact store now")
    days: list[UsageDay] = Field(description="oldest first, today last")


class EstimateRange(BaseModel):
    """When the job will likely finish at the earliest and the latest, and what that is based on."""

    earliest: datetime
    latest: datetime
    basis: str = Field(description='e.g. "this job\'s 5 measured epochs"')


class JobRead(BaseModel):
    id: str
    object: str = "job"
    status: str
    job_type: str
    checkpoint_id: str
    dataset_id: str
    backbone: dict[str, Any]
    protocol: str = "base2novel"
    prompt: dict[str, Any] | None = None
    hyperparameters: dict[str, Any]
    metadata: dict[str, str]
    eval_dataset_ids: list[str] = Field(default_factory=list)
    progress: Progress | None = None
    metrics: dict[str, Any] | None = None
    #: mergetune.core.evaluation.result.Verdict of a succeeded job: {text, ok, warnings: [{code, message}], hm, deltas}
    verdict: dict[str, Any] | None = None
    error: JobError | None = None
    cancel_requested: bool = False
    priority: str = "normal"
    device_seconds: float = 0.0
    max_runtime_seconds: int | None = None
    resume_from: str | None = None
    queue_position: int | None = None
    queue: QueueInfo | None = None
    mlflow: dict[str, Any] | None = Field(
        default=None,
        description="MLflow: tracking_uri and experiment; once the run exists experiment_id, run_id, run_url",
    )
    created_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    estimated_finish: datetime | None = Field(
        default=None, description="the likely finish (UTC); null once the job ended or while it is cancelled"
    )
    estimated_finish_range: EstimateRange | None = None
    tags: list[str] = Field(default_factory=list)
    notes: str | None = None


MAX_TAGS = 20


class JobUpdate(BaseModel):
    """``PATCH /v1/jobs/{id}``: what people write about a job. Omitted fields stay as they are; ``null``
    clears the name or the notes, ``[]`` the tags."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=200, description="shown next to the id (metadata.name)")
    tags: list[str] | None = Field(
        default=None, max_length=MAX_TAGS, description="up to 20 labels, 1-40 characters each, kept in order"
    )
    notes: str | None = Field(
        default=None, max_length=10_000, description="free text (markdown not rendered)"
    )

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        out: list[str] = []
        for tag in (t.strip() for t in value):
            if not 1 <= len(tag) <= 40:
                raise ValueError("each tag must be 1-40 characters (after trimming spaces)")
            if tag not in out:
                out.append(tag)
        return out


class JobList(ListResponse[JobRead]):
    pass


class EventRead(_Read):
    id: int
    seq: int | None = Field(
        default=None, description="1, 2, 3 ... within the job (ids are global; page with after=id)"
    )
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict[str, Any] | None = None


class EventList(ListResponse[EventRead]):
    pass


class ArtifactRead(_Read):
    name: str
    bytes: int
    sha256: str
    media_type: str
    created_at: datetime


class ArtifactList(BaseModel):
    data: list[ArtifactRead]
    has_more: bool = False
    next_cursor: str | None = None


# -- sweeps -------------------------------------------------------------------------------------
#: Values one grid axis may take, and grid points (combinations) one sweep may have.
MAX_GRID_VALUES = 16
MAX_GRID_POINTS = 64


class SweepCell(BaseModel):
    model_config = ConfigDict(extra="forbid")

    checkpoint_id: str = Field(min_length=1, max_length=40)
    dataset_id: str = Field(min_length=1, max_length=40)
    seed: int = Field(default=1, ge=0, le=2**31 - 1, description="The run's seed: the job's few-shot sample")


class SweepCreate(BaseModel):
    """The JSON body, or the ``spec`` form field of a multipart request whose ``file`` is a CoOp tree."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=255)
    cells: list[SweepCell] = Field(
        default_factory=list, max_length=1000, description="(checkpoint, dataset, seed); empty with a file"
    )
    dataset_map: dict[str, str] = Field(
        default_factory=dict,
        description="Archive only: tree dataset name -> dataset id (default: the project's dataset of that name)",
    )
    backbone: BackboneSpec = Field(default_factory=BackboneSpec)
    protocol: Protocol = Protocol.base2novel
    prompt: PromptOptions | None = None
    hyperparameters: dict[str, Any] = Field(
        default_factory=dict, description="Shared by every cell (seed comes from each cell)"
    )
    grid: dict[str, list[Any]] = Field(
        default_factory=dict,
        description=f"Hyperparameter name -> values (at most {MAX_GRID_VALUES} each, {MAX_GRID_POINTS} "
        "combinations); every cell runs at every combination",
    )
    selection: str = Field(
        default="val_acc",
        description="How the grid point is chosen: val_acc (highest mean validation accuracy on base classes)",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, description="Copied to every job (at most 24 keys)"
    )
    priority: Priority = Field(
        default=Priority.normal,
        description="low | normal | high: given to every job of the sweep: order among the project's queued jobs (then oldest first); "
        "between projects, fair share decides",
    )


class SweepCellRead(BaseModel):
    index: int
    dataset: str
    dataset_id: str
    checkpoint_id: str
    seed: int
    source: str | None = None


class SweepJobRead(BaseModel):
    id: str
    cell: int
    point: int
    status: str
    fraction: float = Field(description="0..1 of this job's epochs done")
    metrics: dict[str, Any] | None = None


class SweepProgress(BaseModel):
    jobs: int
    queued: int
    running: int
    succeeded: int
    failed: int
    cancelled: int
    fraction: float = Field(description="0..1 of the sweep's epochs done (finished jobs count whole)")


class SweepRead(BaseModel):
    id: str
    object: str = "sweep"
    name: str
    status: str = Field(description="queued | running | succeeded | failed | cancelling | cancelled")
    backbone: dict[str, Any]
    protocol: str
    prompt: dict[str, Any] | None = None
    hyperparameters: dict[str, Any]
    grid: dict[str, list[Any]]
    points: list[dict[str, Any]]
    selection: str
    cells: list[SweepCellRead]
    jobs: list[SweepJobRead]
    progress: SweepProgress
    source: dict[str, Any] | None = None
    cancel_requested: bool = False
    priority: str = "normal"
    created_at: datetime


class SweepList(ListResponse[SweepRead]):
    pass


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


# -- webhooks -------------------------------------------------------------------------------------
class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(min_length=1, max_length=2048, description="http(s) URL that receives the events")
    events: list[str] = Field(
        min_length=1,
        max_length=16,
        description="Event types: job.succeeded, job.failed, job.cancelled, job.timed_out, job.warning, sweep.finished",
    )
    description: str | None = Field(default=None, max_length=1000)


class WebhookRead(BaseModel):
    id: str
    object: str = "webhook"
    url: str
    events: list[str]
    description: str | None = None
    enabled: bool
    disabled_at: datetime | None = None
    disabled_reason: str | None = Field(default=None, description="Why the endpoint was disabled")
    failing_since: datetime | None = None
    created_at: datetime
    secret_rotated_at: datetime | None = None
    previous_secret_expires_at: datetime | None = Field(
        default=None, description="Until then events carry a second signature, with the previous secret"
    )


class WebhookWithSecret(WebhookRead):
    secret: str = Field(description="whsec_ + base64 key; shown only in this answer")


class WebhookList(ListResponse[WebhookRead]):
    pass


class WebhookAttemptRead(BaseModel):
    at: datetime
    status_code: int | None = None
    error: str | None = None
    duration_ms: float
    success: bool


class WebhookDeliveryRead(BaseModel):
    id: str
    object: str = "webhook_delivery"
    webhook_id: str
    event_id: str = Field(description="The webhook-id header: the same on every attempt")
    type: str
    status: str = Field(description="pending | succeeded | failed")
    next_attempt_at: datetime | None = None
    created_at: datetime
    finished_at: datetime | None = None
    attempts: list[WebhookAttemptRead]


class WebhookDeliveryList(ListResponse[WebhookDeliveryRead]):
    pass
