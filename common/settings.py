"""One settings class, read from the environment (prefix ``MERGETUNE_``) and validated at start-up.

Nothing else in the code base reads ``os.environ`` for configuration: entry points call
:func:`get_settings` and pass what they need down.

Derived defaults (all under ``HOME`` so that the embedded mode keeps its whole state in one folder):

- ``DATABASE_URL``  ``sqlite:///$HOME/mergetune.db``
- ``BROKER_URL``    ``filesystem://`` (kombu's filesystem transport, queue folder ``$HOME/queue``)
- ``DATA_ROOT``     ``$HOME/data``
- ``ARTIFACT_URL``  ``$HOME/artifacts`` (a local directory; ``s3://bucket/prefix`` selects S3)
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MERGETUNE_", extra="ignore", case_sensitive=False)

    HOME: Path = Field(default=Path("./.mergetune"), description="Root of all local state")
    DATABASE_URL: str = Field(default="", description="SQLAlchemy URL; sqlite under HOME when empty")
    BROKER_URL: str = Field(default="", description="Celery broker URL; filesystem:// under HOME when empty")
    BROKER_POLLING_INTERVAL: float = Field(default=0.1, gt=0, description="Polling (s) of virtual transports")
    DATA_ROOT: Path | None = Field(default=None, description="Datasets are confined under this directory")
    ARTIFACT_ROOT: str = Field(default="", description="Alias of ARTIFACT_URL (a local directory)")
    ARTIFACT_URL: str = Field(default="", description="Local directory or s3://bucket/prefix")
    S3_ENDPOINT_URL: str | None = None
    S3_REGION: str | None = None
    S3_ACCESS_KEY_ID: str | None = None
    S3_SECRET_ACCESS_KEY: str | None = None
    MAX_UPLOAD_BYTES: int = Field(default=512 * 1024 * 1024, ge=1)
    #: Backbone weights (POST /v1/weights) are larger than checkpoints: a ViT-B-16 in float32 is 600 MB.
    MAX_WEIGHTS_BYTES: int = Field(default=8 << 30, ge=1, description="largest weights upload")
    UPLOAD_CHUNK_BYTES: int = Field(default=1024 * 1024, ge=1024)
    #: Checkpoint parsing runs in a child process with these hard limits (API uploads and the worker's
    #: check of stored tensors); at most PARSE_WORKERS at once, PARSE_QUEUE more waiting, then 503.
    PARSE_MEMORY_BYTES: int = Field(default=1 << 30, ge=256 << 20, description="RLIMIT_AS of a parse")
    PARSE_CPU_SECONDS: int = Field(default=10, ge=1, description="RLIMIT_CPU of a parse")
    PARSE_WALL_SECONDS: float = Field(default=15.0, gt=0, description="a parse is killed after this")
    PARSE_MAX_TENSOR_BYTES: int = Field(default=256 << 20, ge=1, description="per storage / tensor view")
    PARSE_MAX_TOTAL_BYTES: int = Field(default=128 << 20, ge=1, description="materialised per file")
    PARSE_WORKERS: int = Field(default=2, ge=1, description="parses running at once (API process)")
    PARSE_QUEUE: int = Field(default=4, ge=0, description="uploads waiting for a parse slot before 503")
    PARSE_RETRY_AFTER: int = Field(default=5, ge=1, description="Retry-After (s) of a 503 when full")
    #: Server-sent event streams of job events one API process keeps open at once; beyond it: 503.
    MAX_EVENT_STREAMS: int = Field(default=100, ge=1, description="open event streams per API process")
    #: One project holds at most this share of the running parses and of the admitted ones (running +
    #: waiting; at least one each), so that another project's upload always finds a slot.
    PARSE_PROJECT_SHARE: float = Field(default=0.5, gt=0, le=1, description="share of parse slots")
    #: Sweep archives (a CoOp output tree as zip/tar, at most MAX_UPLOAD_BYTES as uploaded): members,
    #: bytes once unpacked (each checkpoint member at most MAX_UPLOAD_BYTES too) and cells (x grid points).
    SWEEP_MAX_MEMBERS: int = Field(default=10000, ge=1, description="archive members (files + dirs)")
    SWEEP_MAX_UNPACKED_BYTES: int = Field(default=4 << 30, ge=1, description="archive bytes unpacked")
    SWEEP_MAX_JOBS: int = Field(default=1000, ge=1, description="jobs one sweep may create")
    #: An archive is read only in a parse child (PARSE_MEMORY_BYTES, these CPU and wall limits, a parse
    #: slot); pax / GNU long-name headers, member names and the unpacked/packed ratio are bounded too.
    SWEEP_UNPACK_CPU_SECONDS: int = Field(default=60, ge=1, description="RLIMIT_CPU of an archive read")
    SWEEP_UNPACK_WALL_SECONDS: float = Field(default=90.0, gt=0, description="archive read killed after")
    SWEEP_MAX_HEADER_BYTES: int = Field(default=64 << 10, ge=1024, description="one pax/long-name header")
    SWEEP_MAX_NAME_BYTES: int = Field(default=4096, ge=256, description="one archive member name")
    SWEEP_MAX_RATIO: float = Field(default=200.0, ge=2, description="unpacked / packed bytes of an archive")
    SWEEP_MAX_STORED_BYTES: int = Field(default=1 << 30, ge=1, description="bytes one sweep may store")
    #: A full disk: with less than STORAGE_MIN_FREE_BYTES free in the local artifact store or the
    #: upload scratch folder, /readyz answers 503 and uploads 507 with Retry-After; a job that hits a
    #: full disk is handed back and retried for up to STORAGE_FULL_WAIT_SECONDS, then fails storage_full.
    STORAGE_MIN_FREE_BYTES: int = Field(default=64 << 20, ge=0)
    STORAGE_FULL_WAIT_SECONDS: float = Field(default=1800.0, ge=0)
    VISIBILITY_TIMEOUT: int = Field(default=86400, ge=60, description="Broker visibility timeout (s)")
    WORKER_CONCURRENCY: int = Field(default=1, ge=1)
    DEVICE: str = "auto"
    MODEL_CACHE_DIR: Path | None = None
    #: Weights files named by ``backbone.pretrained`` must lie under it (default: MODEL_CACHE_DIR).
    MODEL_ROOT: Path | None = None
    #: Inputs named by reference (``s3://...`` datasets and weights) are fetched into this local cache
    #: (default HOME/cache), shared by the worker processes of a machine and kept under INPUT_CACHE_MAX_BYTES.
    INPUT_CACHE_DIR: Path | None = None
    INPUT_CACHE_MAX_BYTES: int = Field(default=20 << 30, ge=1 << 20, description="input cache bound")
    #: Set by ``mergetune serve --embedded``: the API and its worker share this machine's disk.
    EMBEDDED: bool = False
    LOG_LEVEL: str = "INFO"
    #: Seconds per epoch used for the rough ``estimated_finish`` of a job that has not started yet.
    ESTIMATE_SECONDS_PER_EPOCH: float = Field(default=5.0, gt=0)
    #: Client side (the ``mergetune`` CLI): the API to talk to and the bearer token to use.
    URL: str = "http://127.0.0.1:8000"
    TOKEN: str | None = None
    #: Startup check that the database is at the Alembic head (tests of the refusal turn nothing off).
    REQUIRE_MIGRATED: bool = True
    #: Reliability (no job is ever stuck or lost). A worker retries database writes for up to
    #: DB_RETRY_SECONDS before it hands its job back to the broker.
    DB_RETRY_SECONDS: float = Field(default=120.0, ge=0)
    #: The reconciler (``mergetune reconcile``) runs every RECONCILE_INTERVAL seconds; a ``queued`` job
    #: with no broker message for longer than RECONCILE_QUEUE_GRACE is re-enqueued; an active job whose
    #: progress stamp is older than RECONCILE_STALL_TIMEOUT is requeued (even with a live worker).
    RECONCILE_INTERVAL: float = Field(default=30.0, gt=0)
    RECONCILE_QUEUE_GRACE: float = Field(default=60.0, ge=0)
    RECONCILE_STALL_TIMEOUT: float = Field(default=1800.0, gt=0)
    #: Fair share: the device time a project's jobs used in the last FAIR_SHARE_WINDOW seconds (divided
    #: by the project's weight) decides which project's job a free worker takes next.
    FAIR_SHARE_WINDOW: float = Field(default=3600.0, gt=0)
    #: Webhooks: seconds between a failed attempt and the next (comma-separated; one retry each), the
    #: timeout of one attempt, how long the previous secret still signs after a rotation, how long an
    #: endpoint may fail without a success before it is disabled, and (tests, trusted networks) whether
    #: loopback / private / link-local targets are allowed.
    WEBHOOK_RETRY_SCHEDULE: str = Field(default="5,300,1800,7200,18000,36000,36000")
    WEBHOOK_TIMEOUT: float = Field(default=10.0, gt=0, le=60)
    WEBHOOK_SECRET_GRACE_SECONDS: float = Field(default=86400.0, ge=0)
    WEBHOOK_DISABLE_AFTER_SECONDS: float = Field(default=5 * 86400.0, gt=0)
    WEBHOOKS_ALLOW_PRIVATE: bool = False
    MLFLOW_ALLOW_PRIVATE: bool = False  # a job's own MLflow server may be on a private address
    WEBHOOK_POLL_INTERVAL: float = Field(default=1.0, gt=0, description="dispatcher poll (s)")
    #: Fernet key(s), comma-separated, that seal datasets' own credentials (the first seals; any opens).
    SECRET_KEY: SecretStr | None = Field(default=None, description="Fernet key(s) for stored credentials")

    @model_validator(mode="after")
    def _derive(self) -> Settings:
        home = self.HOME.expanduser()
        self.HOME = home
        if not self.DATABASE_URL:
            self.DATABASE_URL = f"sqlite:///{(home / 'mergetune.db').resolve()}"
        if self.DATABASE_URL.startswith("postgresql://"):
            # psycopg 3 is the only driver installed; make the plain scheme work too.
            self.DATABASE_URL = "postgresql+psycopg://" + self.DATABASE_URL[len("postgresql://") :]
        if not self.BROKER_URL:
            self.BROKER_URL = "filesystem://"
        if self.DATA_ROOT is None:
            self.DATA_ROOT = home / "data"
        if not self.ARTIFACT_URL:
            self.ARTIFACT_URL = self.ARTIFACT_ROOT or str(home / "artifacts")
        if not self.ARTIFACT_ROOT:
            self.ARTIFACT_ROOT = self.ARTIFACT_URL
        if self.MODEL_CACHE_DIR is None:
            self.MODEL_CACHE_DIR = home / "models"
        if self.MODEL_ROOT is None:
            self.MODEL_ROOT = self.MODEL_CACHE_DIR
        if self.INPUT_CACHE_DIR is None:
            self.INPUT_CACHE_DIR = home / "cache"
        _ = self.webhook_retry_schedule  # refuse a malformed schedule at start-up
        if self.SECRET_KEY is not None:
            from mergetune.common.secrets import SecretKeyError, parse_keys

            try:
                parse_keys(self.SECRET_KEY.get_secret_value())  # a malformed key is refused at start-up
            except SecretKeyError as exc:
                raise ValueError(str(exc)) from None
        return self

    # -- derived helpers ---------------------------------------------------------------------
    @property
    def webhook_retry_schedule(self) -> list[float]:
        """WEBHOOK_RETRY_SCHEDULE as seconds (empty: one attempt, no retry)."""
        out: list[float] = []
        for part in self.WEBHOOK_RETRY_SCHEDULE.split(","):
            if not part.strip():
                continue
            try:
                value = float(part)
            except ValueError:
                raise ValueError(
                    f"WEBHOOK_RETRY_SCHEDULE must be comma-separated seconds, not {part.strip()!r}"
                ) from None
            if not 0 <= value <= 7 * 86400:
                raise ValueError(f"WEBHOOK_RETRY_SCHEDULE values must be 0 to 604800 s, not {value}")
            out.append(value)
        return out

    @property
    def is_sqlite(self) -> bool:
        return self.DATABASE_URL.startswith("sqlite")

    @property
    def queue_dir(self) -> Path:
        """Folder of the filesystem broker (only used when BROKER_URL is ``filesystem://``)."""
        return self.HOME / "queue"

    @property
    def tmp_dir(self) -> Path:
        """Scratch space for uploads in flight (same filesystem as the local artifact store)."""
        return self.HOME / "tmp"

    def broker_transport_options(self) -> dict[str, Any]:
        """Transport options for the broker in BROKER_URL; shared by the API producer and the worker."""
        if self.BROKER_URL.startswith("filesystem://"):
            folder = str(self.queue_dir.resolve())
            return {
                "data_folder_in": folder,
                "data_folder_out": folder,
                # kombu's default is ./control (relative to the working directory): keep it under HOME.
                "control_folder": str((self.HOME / "queue-control").resolve()),
                "store_processed": False,
                "polling_interval": self.BROKER_POLLING_INTERVAL,
            }
        if self.BROKER_URL.startswith("sqla+"):
            return {"polling_interval": self.BROKER_POLLING_INTERVAL}
        return {"visibility_timeout": self.VISIBILITY_TIMEOUT}

    def ensure_dirs(self) -> None:
        """Create the local folders the configured backends need (idempotent)."""
        self.HOME.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        if self.BROKER_URL.startswith("filesystem://"):
            self.queue_dir.mkdir(parents=True, exist_ok=True)
        if self.DATA_ROOT is not None:
            self.DATA_ROOT.mkdir(parents=True, exist_ok=True)
        if "://" not in self.ARTIFACT_URL:
            Path(self.ARTIFACT_URL).mkdir(parents=True, exist_ok=True)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
