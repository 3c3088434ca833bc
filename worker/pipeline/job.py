"""What one run of a job carries from stage to stage (:class:`JobRun`), and the job's storage keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactStore
from mergetune.worker import jobdb

if TYPE_CHECKING:
    from mergetune.worker.pipeline.training import JobCallbacks


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def state_key(job_id: str) -> str:
    return f"jobs/{job_id}/state/epoch.pt"


@dataclass
class JobRun:
    """What one run of one job carries from stage to stage (filled in as the stages go)."""

    job_id: str
    settings: Settings
    hostname: str
    store: ArtifactStore
    device: str
    claim: jobdb.Claim
    work: Path
    t0: float
    timings: dict[str, float] = field(default_factory=dict)
    # load inputs
    job: dict[str, Any] = field(default_factory=dict)
    ck: dict[str, Any] = field(default_factory=dict)
    ds_row: dict[str, Any] = field(default_factory=dict)
    method: Any = None
    head: bool = False
    hp: Any = None
    spec: Any = None
    protocol: str = "base2novel"  # mergetune.core.config.Protocol value
    position: str = "end"  # class-token position of a prompt job
    # backbone
    tensors: dict[str, Any] = field(default_factory=dict)
    backbone: Any = None
    cached: bool = False
    # features (the data and starting tensors the core encodes and trains on)
    dataset: Any = None
    task: Any = None
    task_sha: str | None = None
    eval_opened: list[tuple[str, Any, dict[str, Any]]] = field(default_factory=list)
    extra_datasets: list[tuple[str, Any]] | None = None
    ctx_ft: Any = None
    prompt_spec: Any = None
    # train
    resumed_from: int = 0
    cb: JobCallbacks | None = None
    tracker: Any = None  # mergetune.worker.mlflow_tracking.Tracker when the job logs to MLflow
    output: Any = None
    # evaluate
    result_json: dict[str, Any] = field(default_factory=dict)
    # export / report
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.settings.DATABASE_URL
