"""The orchestration of one job: claim it, run the stages in order, and turn what they raise into the
job's outcome (failed, cancelled, handed back to the broker, or left for redelivery).

The stages live in :mod:`.inputs`, :mod:`.training`, :mod:`.artifacts` and :mod:`.report`; the state they
hand on is a :class:`~mergetune.worker.pipeline.job.JobRun`."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

from mergetune.common.db import is_unavailable
from mergetune.common.models import JobStatus, utcnow
from mergetune.common.queue import enqueue_job
from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactStore, get_store, is_storage_full
from mergetune.worker import jobdb, mlflow_tracking
from mergetune.worker.backbones import resolve_device
from mergetune.worker.pipeline.artifacts import stage_export, stage_finish
from mergetune.worker.pipeline.inputs import stage_backbone, stage_features, stage_load_inputs
from mergetune.worker.pipeline.job import JobRun, job_prefix
from mergetune.worker.pipeline.report import stage_report
from mergetune.worker.pipeline.training import stage_evaluate, stage_train

logger = logging.getLogger(__name__)


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


def run_job(job_id: str, *, settings: Settings, hostname: str, store: ArtifactStore | None = None) -> str:
    """Run (or resume, or skip) one job; returns the outcome (succeeded|failed|cancelled|skipped: why)."""
    url = settings.DATABASE_URL
    jobdb.RETRY_SECONDS = settings.DB_RETRY_SECONDS
    store = store or get_store(settings)
    device = resolve_device(settings.DEVICE)
    claim = jobdb.claim_job(
        url, job_id, hostname, info={"pid": os.getpid(), "device": device}, window=settings.FAIR_SHARE_WINDOW
    )
    if claim.action == "skip":
        logger.info("job %s skipped: %s", job_id, claim.reason)
        return f"skipped: {claim.reason}"
    if claim.job_id != job_id:  # the message is a wake-up: fair share chose another job
        logger.info("wake-up for job %s runs job %s (fair share)", job_id, claim.job_id)
        job_id = claim.job_id
    if claim.action == "cancelled":
        store.delete_prefix(job_prefix(job_id))
        return "cancelled"
    outcome = _run_claimed(job_id, claim, settings, hostname, store, device)
    _wake_next(settings, job_id)
    return outcome


def _wake_next(settings: Settings, job_id: str) -> None:
    """A job of a project with a running limit ended: send a wake-up for its next queued job (the
    wake-ups that found the project at its limit took nothing)."""
    try:
        nxt = jobdb.wake_needed(settings.DATABASE_URL, job_id)
        if nxt is not None:
            enqueue_job(settings, nxt)
    except Exception as exc:  # noqa: BLE001 - the reconciler re-sends a queued job without a message
        logger.warning("job %s: no wake-up sent for the project's next job: %s", job_id, exc)


def _run_claimed(
    job_id: str, claim: jobdb.Claim, settings: Settings, hostname: str, store: ArtifactStore, device: str
) -> str:
    url = settings.DATABASE_URL
    logger.info("job %s: running on %s (attempt %d)", job_id, hostname, claim.attempt)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix=f"mergetune-{job_id}-"))
    run = JobRun(job_id, settings, hostname, store, device, claim, work, t0)
    try:
        return _run(run)
    except BaseException as exc:
        from mergetune.core.errors import Cancelled

        mlflow_tracking.stopped(run, exc)
        if is_storage_full(exc) and isinstance(exc, Exception):
            return _storage_full(job_id, claim, settings, hostname, store, exc)
        # retried for DB_RETRY_SECONDS already: hand the job back (mergetune.worker.tasks)
        if is_unavailable(exc):
            logger.error("job %s: database unavailable; handing the job back: %s", job_id, exc)
            jobdb.HANDED_BACK[job_id] = claim.attempt  # the heartbeat thread releases it when it can
            raise
        if isinstance(exc, Cancelled) and run.cb is not None and run.cb.timed_out:
            return _timed_out(run)
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
        return _failed(url, job_id, hostname, claim.attempt, err)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _timed_out(run: JobRun) -> str:
    """The job reached its ``max_runtime_seconds``: end it ``timed_out``, keeping its last epoch state
    (``jobs/<id>/state/epoch.pt``) for a clone to resume from (``resume_from``)."""
    limit = int(run.job.get("max_runtime_seconds") or 0)
    total = run.claim.previous_seconds + (time.monotonic() - run.t0)
    saved = run.cb.saved_epoch if run.cb is not None else 0
    kept = f"its epoch {saved} state is kept" if saved else "no epoch had finished, so no state is kept"
    message = (
        f"Job timed out: its run time reached max_runtime_seconds ({limit} s) after {total:.1f} s; "
        f"{kept} (POST /v1/jobs with resume_from continues from it)"
    )
    ok = jobdb.finish_job(
        run.url,
        run.job_id,
        run.hostname,
        JobStatus.timed_out,
        message=message,
        error={"code": "timed_out", "message": message, "user_error": True},
        level="warning",
        attempt=run.claim.attempt,
        run_seconds=total,
    )
    if not ok:
        return "skipped: lost ownership"
    logger.info("job %s timed out after %.1f s (limit %d s)", run.job_id, total, limit)
    return "timed_out"


class StorageFull(Exception):
    """The job was handed back because a write found the disk full: a later delivery resumes it from
    its last epoch state (the task puts the message back after a pause)."""


def _storage_full(
    job_id: str, claim: jobdb.Claim, settings: Settings, hostname: str, store: ArtifactStore, exc: Exception
) -> str:
    """A write of this job found no space: hand the job back (a ``storage_full`` warning event; it
    resumes from its last epoch state when space returns), or, once it has waited
    STORAGE_FULL_WAIT_SECONDS without finishing an epoch, fail it with ``storage_full`` and remove
    what it stored (its epoch state, partial artifacts)."""
    url = settings.DATABASE_URL
    now = utcnow()
    since = jobdb.storage_full_since(url, job_id) or now
    waited = (now - since).total_seconds()
    what = f"{type(exc).__name__}: {exc}"[:300]
    if jobdb.stop_flags(url, job_id, claim.attempt)[1] != hostname:
        return "skipped: lost ownership"
    if waited >= settings.STORAGE_FULL_WAIT_SECONDS:
        try:
            store.delete_prefix(job_prefix(job_id))
        except Exception:  # noqa: BLE001 - the job fails either way; the log names what is left
            logger.error("job %s: could not remove its stored files", job_id, exc_info=True)
        err = {
            "code": "storage_full",
            "message": f"no space left to write for {waited:.0f} s ({what}); retry when space is freed",
            "user_error": False,
        }
        logger.error("job %s failed: %s", job_id, err["message"])
        return _failed(url, job_id, hostname, claim.attempt, err)
    jobdb.add_event(
        url,
        job_id,
        "storage_full",
        f"No space left to write ({what}); the job is handed back and resumes from its last epoch state "
        f"once space returns (it fails after {settings.STORAGE_FULL_WAIT_SECONDS:.0f} s without space)",
        "warning",
        since=since.isoformat(),
        waited=round(waited, 1),
    )
    logger.error("job %s: storage full; handing the job back: %s", job_id, what)
    jobdb.HANDED_BACK[job_id] = claim.attempt  # the heartbeat thread releases it when it can
    raise StorageFull(f"job {job_id} handed back: {what}") from exc


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
        stage_load_inputs,
        stage_backbone,
        stage_features,
        stage_train,
        stage_evaluate,
        stage_export,
        stage_report,
    ):
        jobdb.stamp(run.url, run.job_id, run.hostname)
        if stage is stage_train:
            _measured(run, stage)
        else:
            stage(run)
    jobdb.stamp(run.url, run.job_id, run.hostname)
    mlflow_tracking.finish(run)
    return stage_finish(run)


def _measured(run: JobRun, stage: Any) -> None:
    """Run the training stage and count its wall time on this worker's device as the job's device
    time (usage), also when it stops early (cancelled, failed); not when the database is gone."""
    t = time.monotonic()
    try:
        stage(run)
    except BaseException as exc:
        if not is_unavailable(exc):
            jobdb.add_device_seconds(run.url, run.job_id, time.monotonic() - t)
        raise
    jobdb.add_device_seconds(run.url, run.job_id, time.monotonic() - t)


def _failed(url: str, job_id: str, hostname: str, attempt: int, err: dict[str, Any]) -> str:
    """End the job ``failed`` with ``err`` (code, message, user_error) as its error."""
    jobdb.finish_job(
        url,
        job_id,
        hostname,
        JobStatus.failed,
        message=f"Job failed: {err['message']}",
        error=err,
        level="error",
        attempt=attempt,
    )
    return "failed"
