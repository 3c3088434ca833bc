"""One recovery job, end to end: claim -> load rows and inputs -> mergetune.core.method.recovery.recover -> export ->
report -> artifacts -> terminal status. Called by the Celery task (``mergetune.worker.tasks``) and by tests.

Idempotent by construction:

- a job in a terminal status is never rerun (the task returns at once and the message is acknowledged);
- a job still owned by a live worker (fresh heartbeat running that job) is skipped;
- a job that was running on a worker that died resumes from ``jobs/<id>/state/epoch.pt`` (the epoch state
  saved by ``on_epoch_end``), so a resumed run ends with the same prompts as an uninterrupted one;
- artifacts are uploaded under fixed keys (``jobs/<id>/<name>``, overwritten on a rerun) and their rows
  are replaced in the same transaction that marks the job succeeded: exactly one set per job.

Progress goes to Postgres at most once a second (plus every epoch end), the cancel flag is re-read at most
every 0.5 s; each write is its own short transaction (``mergetune.worker.jobdb``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import shutil
import socket
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from mergetune.common.db import is_unavailable
from mergetune.common.models import JobStatus, utcnow
from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactStore, LocalStore, get_store
from mergetune.worker import jobdb, mma_job
from mergetune.worker.backbones import get_backbone, resolve_device, weights_sources

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 1.0  # seconds between progress writes
CANCEL_CHECK_EVERY = 0.5  # seconds between reads of jobs.cancel_requested

MEDIA_TYPES = {
    ".safetensors": "application/octet-stream",
    ".tar": "application/x-tar",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
}
#: Upload order: the report and manifest last, so a partial upload never looks complete.
ARTIFACT_ORDER = [
    "prompts.safetensors",
    "prompts.pth.tar",
    "prompts-coop.tar",
    "head.safetensors",
    "curves.png",
    "report.html",
    "manifest.json",
    "report.json",
]
PACKAGES = [
    "torch",
    "torchvision",
    "open_clip_torch",
    "numpy",
    "safetensors",
    "pillow",
    "celery",
    "kombu",
    "sqlalchemy",
    "mergetune-service",
]


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def state_key(job_id: str) -> str:
    return f"jobs/{job_id}/state/epoch.pt"


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class JobCallbacks:
    """on_progress / should_stop / on_epoch_end for one job, throttled against the database."""

    def __init__(
        self,
        url: str,
        job_id: str,
        store: ArtifactStore,
        epochs: int,
        clock: Any = time.monotonic,
        hostname: str | None = None,
        attempt: int | None = None,
    ):
        self.url, self.job_id, self.store, self.epochs, self.clock = url, job_id, store, epochs, clock
        self.hostname, self.attempt = hostname, attempt
        #: Set when another node took the job over (this node was presumed dead): stop without touching it.
        self.lost_ownership = False
        self._last_progress = float("-inf")
        self._last_cancel_check = float("-inf")
        self._cancel = False
        self._evaluating = False
        self.progress: dict[str, Any] = {}
        self.progress_writes = 0
        self.cancel_reads = 0

    # core calls on_progress(epoch, step, loss, *, epochs, steps, ce, zs, lmc, lr), epoch/step 0-based;
    # the job's progress is 1-based ("epoch 3 of 10, step 2 of 5").
    def on_progress(self, epoch: int, step: int, loss: float, **info: Any) -> None:
        steps = info.get("steps")
        self.progress = {
            "epoch": int(epoch) + 1,
            "epochs": int(info.get("epochs") or self.epochs),
            "step": int(step) + 1,
            "steps": int(steps) if steps is not None else None,
            "loss": float(loss),
        }
        now = self.clock()
        end_of_epoch = steps is not None and step + 1 >= steps
        if end_of_epoch or now - self._last_progress >= PROGRESS_EVERY:
            self._last_progress = now
            self.progress_writes += 1
            jobdb.write_progress(self.url, self.job_id, self.progress, self.hostname)

    def should_stop(self) -> bool:
        if self._cancel:
            return True
        now = self.clock()
        if now - self._last_cancel_check >= CANCEL_CHECK_EVERY:
            self._last_cancel_check = now
            self.cancel_reads += 1
            cancel, owner = jobdb.stop_flags(self.url, self.job_id, self.attempt)
            if self.hostname is not None and owner != self.hostname:
                logger.warning("job %s: now owned by %s; stopping here", self.job_id, owner)
                self.lost_ownership = True
                cancel = True
            self._cancel = cancel
        return self._cancel

    def on_epoch_end(self, state: dict[str, Any]) -> None:
        import torch

        if self.lost_ownership:
            return  # never overwrite the new owner's state

        epoch = int(state.get("epoch", self.progress.get("epoch", 0)))
        with tempfile.TemporaryDirectory(prefix="mergetune-state-") as tmp:
            path = Path(tmp) / "epoch.pt"
            torch.save(state, path)
            self.store.put_file(state_key(self.job_id), path)
        if self.progress:
            jobdb.write_progress(self.url, self.job_id, self.progress, self.hostname)
        jobdb.add_event(
            self.url,
            self.job_id,
            "epoch",
            f"Epoch {epoch}/{self.epochs} done"
            + (f", loss {self.progress['loss']:.4f}" if self.progress else ""),
            epoch=epoch,
            epochs=self.epochs,
            loss=self.progress.get("loss"),
            # the epoch's means: loss parts and validation accuracy (mergetune.core.evaluation.result.EpochLog)
            record={k: v for k, v in ((state.get("history") or [{}])[-1]).items() if k != "epoch"},
        )
        if epoch >= self.epochs and not self._evaluating:
            self._evaluating = True
            jobdb.set_evaluating(self.url, self.job_id)


def _backfill_epoch_events(url: str, job_id: str, state: dict[str, Any], epochs: int) -> None:
    """An epoch's state is stored before its event is written, so a worker killed between the two leaves
    that event missing; the resumed run starts after the epoch. Write it from the state's history."""
    logged = jobdb.logged_epochs(url, job_id)
    history = state.get("history", [])
    for epoch in range(1, int(state.get("epoch", 0)) + 1):
        if epoch in logged:
            continue
        loss = history[epoch - 1].get("loss") if epoch - 1 < len(history) else None
        jobdb.add_event(
            url,
            job_id,
            "epoch",
            f"Epoch {epoch}/{epochs} done" + (f", loss {loss:.4f}" if loss is not None else ""),
            epoch=epoch,
            epochs=epochs,
            loss=loss,
        )


def _load_resume_state(store: ArtifactStore, job_id: str) -> dict[str, Any] | None:
    key = state_key(job_id)
    if not store.exists(key):
        return None
    import torch

    path = store.local_path(key)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - a corrupt state (killed mid-upload) means: start over
        logger.warning("job %s: unreadable resume state, starting from scratch", job_id, exc_info=True)
        return None
    finally:
        if not isinstance(store, LocalStore):  # a temporary download; LocalStore gives the stored file
            path.unlink(missing_ok=True)


def _load_tensors(store: ArtifactStore, key: str) -> dict[str, Any]:
    """The checkpoint's stored tensors, read by the same bounded, sandboxed parser as uploads (a child
    process with the PARSE_* limits) before the worker trusts them."""
    import torch

    from mergetune.common.settings import get_settings
    from mergetune.core.checkpoints.safe_pickle import ParseLimits
    from mergetune.core.checkpoints.sandbox import SandboxLimits, ingest_sandboxed

    settings = get_settings()
    limits = SandboxLimits(
        memory_bytes=settings.PARSE_MEMORY_BYTES,
        cpu_seconds=settings.PARSE_CPU_SECONDS,
        wall_seconds=settings.PARSE_WALL_SECONDS,
        parse=ParseLimits(
            max_tensor_bytes=settings.PARSE_MAX_TENSOR_BYTES, max_total_bytes=settings.PARSE_MAX_TOTAL_BYTES
        ),
    )
    path = store.local_path(key)
    try:
        ck = ingest_sandboxed(path, filename="tensors.safetensors", limits=limits)
        arrays = {"ctx": ck.ctx, "weight": ck.head_weight, "bias": ck.head_bias, **(ck.adapters or {})}
        return {name: torch.from_numpy(arr) for name, arr in arrays.items() if arr is not None}
    finally:
        if not isinstance(store, LocalStore):  # a temporary download; LocalStore gives the stored file
            path.unlink(missing_ok=True)


def _split_sha(task: Any) -> str | None:
    value = getattr(task, "split_sha256", None)
    return str(value() if callable(value) else value) if value else None


def _error(exc: BaseException) -> dict[str, Any]:
    from mergetune.core.errors import CoreError

    if isinstance(exc, CoreError):
        err = {"code": exc.code, "message": exc.message, "user_error": bool(exc.user_error)}
        if exc.param:
            err["param"] = exc.param
        return err
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return {
                "code": "out_of_memory",
                "message": f"GPU out of memory ({exc}); try a smaller hyperparameters.batch_size",
                "user_error": False,
            }
    except ImportError:  # pragma: no cover
        pass
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}", "user_error": False}


def _open_eval_datasets(
    settings: Settings, ids: list[str], rows: list[dict[str, Any] | None], taken: set[str]
) -> list[tuple[str, Any, dict[str, Any]]]:
    """Open the job's extra evaluation datasets as the main one is opened: [(name, Dataset, row)].

    A missing, unreadable or image-less one fails the job as a user error naming it (param
    ``eval_dataset_ids[i]``). Names are the registered names, made unique (``name (id)``) where they
    repeat or clash with ``taken`` (the head report's own split names)."""
    from mergetune.core.config import DatasetKind
    from mergetune.core.data import open_dataset
    from mergetune.core.errors import CoreError, DatasetError
    from mergetune.core.evaluation.crossdata import eval_records

    out: list[tuple[str, Any, dict[str, Any]]] = []
    used = set(taken)
    for i, (ds_id, row) in enumerate(zip(ids, rows, strict=True)):
        param = f"eval_dataset_ids[{i}]"
        if row is None:
            raise DatasetError(f"evaluation dataset {ds_id!r} not found", code="not_found", param=param)
        label = f"evaluation dataset {row['name']!r} ({ds_id})"
        try:
            dataset = open_dataset(
                DatasetKind(row["kind"]),
                settings.DATA_ROOT,
                row.get("path") or "",
                coop_name=row.get("coop_name"),
                options=row.get("options"),
            )
            eval_records(dataset)  # raises when it has neither test nor val images
        except CoreError as exc:
            raise DatasetError(
                f"{label} cannot be used: {exc.message}",
                code=exc.code if exc.user_error else "bad_dataset",
                param=param,
            ) from exc
        except Exception as exc:  # noqa: BLE001 - unreadable files, bad options: the dataset is at fault
            raise DatasetError(
                f"{label} cannot be opened: {type(exc).__name__}: {exc}", code="bad_dataset", param=param
            ) from exc
        name = str(row["name"])
        if name in used:
            name = f"{name} ({ds_id})"
        used.add(name)
        out.append((name, dataset, row))
    return out


def run_job(job_id: str, *, settings: Settings, hostname: str, store: ArtifactStore | None = None) -> str:
    """Run (or resume, or skip) one job; returns the outcome (succeeded|failed|cancelled|skipped: why)."""
    url = settings.DATABASE_URL
    jobdb.RETRY_SECONDS = settings.DB_RETRY_SECONDS
    store = store or get_store(settings)
    device = resolve_device(settings.DEVICE)
    claim = jobdb.claim_job(url, job_id, hostname, info={"pid": os.getpid(), "device": device})
    if claim.action == "skip":
        logger.info("job %s skipped: %s", job_id, claim.reason)
        return f"skipped: {claim.reason}"
    if claim.action == "cancelled":
        store.delete_prefix(job_prefix(job_id))
        return "cancelled"
    logger.info("job %s: running on %s (attempt %d)", job_id, hostname, claim.attempt)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f"mergetune-{job_id}-"))
    try:
        return _run(JobRun(job_id, settings, hostname, store, device, claim, work, t0))
    except BaseException as exc:
        from mergetune.core.errors import Cancelled

        if is_unavailable(
            exc
        ):  # retried for DB_RETRY_SECONDS already: hand the job back (mergetune.worker.tasks)
            logger.error("job %s: database unavailable; handing the job back: %s", job_id, exc)
            jobdb.HANDED_BACK[job_id] = claim.attempt  # the heartbeat thread releases it when it can
            raise
        if isinstance(exc, Cancelled):
            # finish_job refuses (False) when another node owns the job now: then leave its files alone.
            if not jobdb.finish_job(
                url, job_id, hostname, JobStatus.cancelled, message="Job cancelled", attempt=claim.attempt
            ):
                return "skipped: lost ownership"
            store.delete_prefix(job_prefix(job_id))
            logger.info("job %s cancelled", job_id)
            return "cancelled"
        if not isinstance(exc, Exception):  # KeyboardInterrupt / SystemExit: leave it to redelivery
            raise
        err = _error(exc)
        if jobdb.stop_flags(url, job_id, claim.attempt)[1] != hostname:
            logger.error("job %s failed here after another node took it over: %s", job_id, err["message"])
            return "skipped: lost ownership"
        logger.error("job %s failed: %s", job_id, err["message"], exc_info=not err["user_error"])
        if not err["user_error"]:
            jobdb.add_event(
                url, job_id, "traceback", "".join(traceback.format_exception(exc))[-8000:], "debug"
            )
        jobdb.finish_job(
            url,
            job_id,
            hostname,
            JobStatus.failed,
            message=f"Job failed: {err['message']}",
            error=err,
            level="error",
            attempt=claim.attempt,
        )
        return "failed"
    finally:
        shutil.rmtree(work, ignore_errors=True)


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
    output: Any = None
    # evaluate
    result_json: dict[str, Any] = field(default_factory=dict)
    # export / report
    out_dir: Path | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.settings.DATABASE_URL


def _run(run: JobRun) -> str:
    """The stages of one job, in order. Any stage may raise:

    - a user error (``CoreError`` with ``user_error``: bad checkpoint, dataset, hyperparameters) or any
      other exception: :func:`run_job` marks the job ``failed`` (with a traceback event for system errors);
    - ``Cancelled`` (the cancel flag, read between steps): :func:`run_job` marks it ``cancelled``;
    - ``KeyboardInterrupt``/``SystemExit``: left to the broker to redeliver (late acks); the next run
      resumes from the last epoch state;
    - ``DatabaseUnavailable`` (every database call retries a lost connection for DB_RETRY_SECONDS
      first, see ``mergetune.worker.jobdb.retrying``): the task hands the message back to the broker and a later
      run resumes from the last epoch state.

    Each stage starts with a progress stamp (the reconciler requeues a job whose stamp gets older than
    its stall timeout). A stage that finds the job taken over by another node returns ``skipped: ...``
    and writes nothing."""
    for stage in (
        _stage_load_inputs,
        _stage_backbone,
        _stage_features,
        _stage_train,
        _stage_evaluate,
        _stage_export,
        _stage_report,
    ):
        jobdb.stamp(run.url, run.job_id, run.hostname)
        stage(run)
    jobdb.stamp(run.url, run.job_id, run.hostname)
    return _stage_finish(run)


def _stage_load_inputs(run: JobRun) -> None:
    """Job, checkpoint and dataset rows; method and validated hyperparameters.

    Failure: a hyperparameter the core refuses fails the job (validation error)."""
    from mergetune.core.config import BackboneSpec, HeadHyperparameters, Hyperparameters, Method

    rows = jobdb.load_job_inputs(run.url, run.job_id)
    run.job, run.ck, run.ds_row = rows["job"], rows["checkpoint"], rows["dataset"]
    run.method = Method(run.ck["method"] or "coop")
    run.head = run.job["job_type"] == "linear_head" or run.method == Method.linear_head
    hp_cls = HeadHyperparameters if run.head else Hyperparameters
    if mma_job.is_mma(run.method):
        run.hp = mma_job.hyperparameters(run.job["hyperparameters"])
    else:
        run.hp = hp_cls(**(run.job["hyperparameters"] or {}))
    run.spec = BackboneSpec(**run.job["backbone"])
    run.protocol = str(run.job.get("protocol") or "base2novel")
    run.position = str((run.job.get("prompt") or {}).get("class_token_position") or "end")


def _stage_backbone(run: JobRun) -> None:
    """The checkpoint's tensors and the (cached) backbone.

    Failure: a checkpoint without extracted tensors fails the job as a user error (``missing_ctx``);
    a backbone that cannot be built fails it as a system error."""
    from mergetune.core.errors import CheckpointError

    t = time.monotonic()
    if not run.ck.get("tensors_key"):
        raise CheckpointError(
            "checkpoint has no extracted tensors", code="missing_ctx", param="checkpoint_id"
        )
    run.tensors = _load_tensors(run.store, run.ck["tensors_key"])
    cache_dir, model_root, forbidden = weights_sources(run.settings)
    run.backbone, run.cached = get_backbone(
        run.spec, run.device, cache_dir, model_root=model_root, forbidden=forbidden
    )
    run.timings["load_backbone"] = time.monotonic() - t
    for message in getattr(run.backbone, "warnings", []):  # e.g. OpenAI weights under a GELU name
        jobdb.add_event(run.url, run.job_id, "warning", message, "warning", code="backbone_activation")


def _stage_features(run: JobRun) -> None:
    """The dataset and its base-to-novel split, the extra evaluation datasets, and the starting tensors
    (prompt context or head weights) the core encodes and trains from.

    Failure: an unreadable dataset, a missing extra dataset or a checkpoint without ``ctx`` fails the job
    as a user error naming the parameter; a changed split only adds a warning event."""
    from mergetune.core.config import ClassTokenPosition, DatasetKind, PromptLearnerSpec
    from mergetune.core.data import open_dataset
    from mergetune.core.data.protocols import make_task
    from mergetune.core.errors import CheckpointError

    url, ds_row, job = run.url, run.ds_row, run.job
    t = time.monotonic()
    dataset = open_dataset(
        DatasetKind(ds_row["kind"]),
        run.settings.DATA_ROOT,
        ds_row.get("path") or "",
        coop_name=ds_row.get("coop_name"),
        options=ds_row.get("options"),
    )
    # prompt jobs follow the job's protocol; heads pick their rows from the checkpoint (mergetune.core.method.recovery)
    task = make_task(dataset, "base2novel" if run.head else run.protocol, run.hp.shots, run.hp.seed)
    run.dataset, run.task = dataset, task
    run.timings["load_dataset"] = time.monotonic() - t
    task_sha = run.task_sha = _split_sha(task)
    if ds_row.get("sha256_of_split") and ds_row["sha256_of_split"] not in (task_sha, dataset.split_sha256()):
        jobdb.add_event(
            url,
            run.job_id,
            "warning",
            "The dataset's splits changed since it was registered (split hash differs)",
            "warning",
            registered=ds_row["sha256_of_split"],
            now=task_sha,
        )

    # extra evaluation datasets (cross-dataset / shift)
    t = time.monotonic()
    eval_ids = [str(i) for i in (job.get("eval_dataset_ids") or [])]
    if eval_ids:
        extra: list[tuple[str, Any]] = []
        if run.head:  # explicit datasets come on top of the default shifted splits of a built-in dataset
            from mergetune.core.evaluation.crossdata import builtin_shift_datasets

            extra += builtin_shift_datasets(dataset)
        eval_rows = jobdb.load_datasets(url, job["project_id"], eval_ids)
        taken = {"val", "test", *(name for name, _ in extra)}
        run.eval_opened = _open_eval_datasets(run.settings, eval_ids, eval_rows, taken)
        extra += [(name, d) for name, d, _ in run.eval_opened]
        run.extra_datasets = extra
        run.timings["load_eval_datasets"] = time.monotonic() - t

    tensors = run.tensors
    if mma_job.is_mma(run.method):  # the adapters under MMA's keys
        run.ctx_ft = mma_job.starting_tensors(tensors, run.ck)
    elif run.head:
        run.ctx_ft = {k: v for k, v in tensors.items() if k in ("weight", "bias")}
        run.prompt_spec = None
    else:
        if "ctx" not in tensors:
            raise CheckpointError(
                "checkpoint tensors have no 'ctx'", code="missing_ctx", param="checkpoint_id"
            )
        run.ctx_ft = tensors["ctx"].float()
        run.prompt_spec = PromptLearnerSpec(
            n_ctx=int(run.ctx_ft.shape[-2]),
            csc=run.ctx_ft.dim() == 3,
            class_token_position=ClassTokenPosition(run.position),
            ctx_init=None,
        )


def _stage_train(run: JobRun) -> None:
    """Resume from the last epoch state (a rerun after a lost worker), then train (the core also
    evaluates at the end of training).

    Retry: every epoch end stores ``jobs/<id>/state/epoch.pt`` before logging its event, so a run that
    dies here resumes at the last stored epoch; a missing epoch event is backfilled from that state.
    Failure: ``Cancelled`` at any step (cancel flag, or another node took the job over)."""
    import torch

    from mergetune.core.errors import Cancelled
    from mergetune.core.method.recovery import recover

    url, job_id, hp, claim = run.url, run.job_id, run.hp, run.claim
    resume_state = _load_resume_state(run.store, job_id) if claim.resumed else None
    run.resumed_from = int(resume_state.get("epoch", 0)) if resume_state else 0
    if resume_state:
        _backfill_epoch_events(url, job_id, resume_state, hp.epochs)
    if claim.resumed:
        jobdb.add_event(
            url,
            job_id,
            "resume",
            f"Resuming from epoch {run.resumed_from}"
            if resume_state
            else "No saved epoch state; starting over",
            epoch=run.resumed_from,
        )
    cb = run.cb = JobCallbacks(
        url, job_id, run.store, hp.epochs, hostname=run.hostname, attempt=claim.attempt
    )
    if cb.should_stop():
        raise Cancelled("cancelled before training started")

    torch.manual_seed(hp.seed)
    t = time.monotonic()
    if mma_job.is_mma(run.method):
        run.output = mma_job.train(run, resume_state)
        run.timings["recover"] = time.monotonic() - t
        return
    run.output = recover(
        run.backbone,
        run.task,
        run.ctx_ft,
        hp,
        method=run.method,
        spec=run.prompt_spec,
        on_progress=cb.on_progress,
        should_stop=cb.should_stop,
        resume_state=resume_state,
        on_epoch_end=cb.on_epoch_end,
        extra_datasets=run.extra_datasets,
    )
    run.timings["recover"] = time.monotonic() - t


def _stage_evaluate(run: JobRun) -> None:
    """Re-read the cancel flag once more, mark the job ``evaluating`` and take the core's results.

    Failure: ``Cancelled`` when a cancel came in during the last steps."""
    from mergetune.core.errors import Cancelled

    cb = run.cb
    assert cb is not None
    cb._last_cancel_check = float("-inf")
    if cb.should_stop():
        raise Cancelled("cancelled after training")
    jobdb.set_evaluating(run.url, run.job_id)
    run.result_json = run.output.result.model_dump(mode="json")


def _stage_export(run: JobRun) -> None:
    """Write the recovered prompts (CoOp/Dassl and safetensors) or head into the work directory.

    Failure: any error fails the job (system error); nothing is uploaded yet."""
    t = time.monotonic()
    result, method, spec, hp, task = run.output.result, run.method, run.spec, run.hp, run.task
    export_meta = {
        "job_id": run.job_id,
        "method": method.value,
        # A head may cover all classes (robust fine-tuning) or the base classes only.
        "classnames": list(result.config.get("classes", {}).get("head") or task.base_classnames),
        "backbone": {"model": spec.model, "pretrained": spec.pretrained},
        "weights_sha256": run.backbone.identity,
        "parent_sha256": run.ck.get("sha256"),
        "hyperparameters": hp.model_dump(mode="json"),
    }
    if not run.head:
        export_meta.update(
            class_token_position=run.position,
            protocol=run.protocol,
            # one CSC row per class, in this order (a generic context was trained on these classes)
            context_classes=list(task.base_classnames),
            activation=getattr(run.backbone, "activation", None),
        )
    out_dir = run.out_dir = run.work / "out"
    out_dir.mkdir()
    if mma_job.is_mma(run.method):
        run.files.update(mma_job.export(run, out_dir, export_meta))
    elif run.head:
        from mergetune.core.checkpoints.export import export_head

        rec = run.output.ctx
        if isinstance(rec, dict):
            w, b = rec["weight"], rec.get("bias")
        elif isinstance(rec, tuple | list):
            w, b = rec[0], (rec[1] if len(rec) > 1 else None)
        else:
            w, b = rec, None
        run.files.update(
            export_head(
                out_dir, w.detach().cpu(), None if b is None else b.detach().cpu(), metadata=export_meta
            )
        )
    else:
        from mergetune.core.checkpoints.export import export_prompts
        from mergetune.core.model.prompts import PromptLearner

        backbone = run.backbone
        ctx = run.output.ctx.detach().float().cpu()
        learner = PromptLearner(
            backbone, list(task.base_classnames), ctx.to(backbone.device), run.prompt_spec
        )
        prefix, suffix = learner.dassl_buffers()
        run.files.update(
            export_prompts(
                out_dir,
                ctx,
                token_prefix=prefix.detach().cpu(),
                token_suffix=suffix.detach().cpu(),
                metadata=export_meta,
                epoch=hp.epochs,
            )
        )
    run.timings["export"] = time.monotonic() - t


def _manifest(run: JobRun) -> dict[str, Any]:
    import torch

    job, ck, ds_row, spec, hp, task, dataset = (
        run.job,
        run.ck,
        run.ds_row,
        run.spec,
        run.hp,
        run.task,
        run.dataset,
    )
    device = run.device
    return {
        "job_id": run.job_id,
        "seed": hp.seed,
        "config": {
            "job_type": job["job_type"],
            "method": run.method.value,
            "backbone": spec.model_dump(mode="json"),
            "hyperparameters": hp.model_dump(mode="json"),
            "prompt": run.prompt_spec.model_dump(mode="json") if run.prompt_spec else None,
            "protocol": None if run.head else run.protocol,
            "metadata": job.get("metadata_") or {},
        },
        "dataset": {
            "id": ds_row["id"],
            "name": ds_row["name"],
            "kind": ds_row["kind"],
            "path": ds_row.get("path"),
            "coop_name": ds_row.get("coop_name"),
            "options": ds_row.get("options"),
            "split_sha256": run.task_sha,
            "dataset_sha256": dataset.split_sha256(),
            "registered_split_sha256": ds_row.get("sha256_of_split"),
            "base_classes": list(task.base_classnames),
            "novel_classes": list(task.novel_classnames),
            # the dataset kind's training augmentation (linear heads train on un-augmented features)
            "train_transform": None if run.head else dataset.train_transform.model_dump(mode="json"),
        },
        "eval_datasets": [
            {
                "id": row["id"],
                "name": row["name"],
                "report_name": name,
                "kind": row["kind"],
                "path": row.get("path"),
                "coop_name": row.get("coop_name"),
                "options": row.get("options"),
                "dataset_sha256": d.split_sha256(),
                "registered_split_sha256": row.get("sha256_of_split"),
            }
            for name, d, row in run.eval_opened
        ],
        "checkpoint": {
            "id": ck["id"],
            "sha256": ck.get("sha256"),
            "format": ck.get("format"),
            "method": ck.get("method"),
            "n_ctx": ck.get("n_ctx"),
            "csc": ck.get("csc"),
        },
        "backbone": {
            "model": spec.model,
            "pretrained": spec.pretrained,
            "weights_sha256": run.backbone.identity,
            "weights_format": getattr(run.backbone, "weights_format", None),
            "activation": getattr(run.backbone, "activation", None),
            "warnings": list(getattr(run.backbone, "warnings", [])),
        },
        "packages": package_versions(),
        "worker": {
            "node": run.hostname,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": device,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "torch_threads": torch.get_num_threads(),
            "backbone_cached": run.cached,
        },
        "attempts": run.claim.attempt,
        "resumed_from_epoch": run.resumed_from,
        "created_at": job["created_at"].isoformat() if job.get("created_at") else None,
        "started_at": job["started_at"].isoformat() if job.get("started_at") else None,
        "finished_at": utcnow().isoformat(),
        "timings": {
            **{k: round(v, 4) for k, v in run.timings.items()},
            "core": {k: round(float(v), 4) for k, v in (run.result_json.get("timings") or {}).items()},
        },
    }


def _stage_report(run: JobRun) -> None:
    """manifest.json, report.json, and (when mergetune.core.evaluation.report renders) report.html and curves.png.

    Failure: a report that cannot be rendered only adds a warning event; the job still succeeds."""
    run.timings["total"] = time.monotonic() - run.t0
    manifest = _manifest(run)
    out_dir = run.out_dir
    assert out_dir is not None
    report = {"job_id": run.job_id, **run.result_json, "manifest": manifest}
    if not run.head:
        from mergetune.core.data.protocols import SPLIT_LABELS

        report["protocol"] = {"name": run.protocol, "labels": SPLIT_LABELS[run.protocol]}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    run.files["manifest.json"] = out_dir / "manifest.json"
    run.files["report.json"] = out_dir / "report.json"
    try:
        from mergetune.core.evaluation.report import render_report
    except ImportError:
        logger.warning(
            "mergetune.core.evaluation.report is not available: report.html and curves.png skipped"
        )
        return
    try:
        for p in render_report(report, out_dir):
            run.files[Path(p).name] = Path(p)
    except Exception as exc:  # noqa: BLE001 - the report is a convenience; the job still succeeds
        logger.warning("job %s: report rendering failed", run.job_id, exc_info=True)
        jobdb.add_event(
            run.url, run.job_id, "warning", f"report.html could not be rendered: {exc}", "warning"
        )


def _stage_finish(run: JobRun) -> str:
    """Upload the artifacts (report and manifest last), then one transaction replaces the job's artifact
    rows and marks it ``succeeded``; the epoch state is deleted after that.

    Retry: artifacts go to fixed keys, so a rerun overwrites them. A node that lost the job (taken over
    meanwhile) uploads nothing, or, if it lost it during the upload, does not mark it: ``skipped``."""
    url, job_id, hostname, store, files = run.url, run.job_id, run.hostname, run.store, run.files
    if jobdb.stop_flags(url, job_id, run.claim.attempt)[1] != hostname:  # taken over: keep its files
        logger.warning("job %s: taken over by another node before upload; dropping this run", job_id)
        return "skipped: lost ownership"
    artifacts: list[dict[str, Any]] = []
    for name in sorted(files, key=lambda n: ARTIFACT_ORDER.index(n) if n in ARTIFACT_ORDER else 0):
        path = files[name]
        key = job_prefix(job_id) + name
        store.put_file(key, path)
        artifacts.append(
            {
                "name": name,
                "bytes": path.stat().st_size,
                "sha256": _sha256_file(path),
                "media_type": MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                "key": key,
            }
        )
    cb, hp = run.cb, run.hp
    total = run.claim.previous_seconds + (time.monotonic() - run.t0)  # all attempts, not just this one
    progress = (
        dict(cb.progress) if cb is not None and cb.progress else {"epoch": hp.epochs, "epochs": hp.epochs}
    )
    ok = jobdb.finish_job(
        url,
        job_id,
        hostname,
        JobStatus.succeeded,
        message=f"Job succeeded in {total:.1f} s"
        + (f" ({run.claim.attempt} attempts)" if run.claim.attempt > 1 else ""),
        metrics=run.result_json.get("metrics"),
        progress=progress,
        artifacts=artifacts,
        verdict=run.result_json.get("verdict"),
        attempt=run.claim.attempt,
        run_seconds=total,
    )
    if not ok:
        return "skipped: lost ownership before finishing"
    store.delete(state_key(job_id))
    logger.info("job %s succeeded (%s)", job_id, ", ".join(a["name"] for a in artifacts))
    return "succeeded"
