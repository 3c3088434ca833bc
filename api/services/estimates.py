"""The facts ``mergetune.common.eta`` estimates a job's finish from, read from the database.

One query reads the recent succeeded jobs' measurements (cached ``HISTORY_TTL`` seconds per process and
database, or until the process answers for a job that succeeded after it was read); a queued job also
reads the active jobs and the live workers. The last estimate of each job is kept per process and
database so that successive polls do not swing (``eta.stabilize``), as long as the job stays in the
phase it was estimated in: one made while it waited in the queue holds that wait, so a job that has
started (or was queued again) starts over from its new estimate.
"""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from mergetune.common import eta
from mergetune.common import repositories as repo
from mergetune.common.models import ACTIVE_STATUSES, Dataset, Job, JobStatus, utcnow

HISTORY_JOBS = 200  # recent succeeded jobs the similar ones are chosen from
HISTORY_TTL = 30.0  # seconds one process reuses the history (GET /v1/jobs/{id} is polled)
LIVE_WORKER_SECONDS = 120  # a worker whose heartbeat is older does not count for the queue wait
_KEPT = 4096  # jobs whose last estimate a process remembers

_lock = threading.Lock()
_history_cache: dict[str, tuple[float, list[eta.Finished], datetime]] = {}
_datasets: OrderedDict[tuple[str, str], tuple[int, dict[str, Any]]] = OrderedDict()
_previous: OrderedDict[tuple[str, str], tuple[bool, eta.Estimate]] = OrderedDict()
_WAITING = ("validating", "queued")


def clear() -> None:
    """Forget the cached history and the remembered estimates (tests)."""
    with _lock:
        _history_cache.clear()
        _datasets.clear()
        _previous.clear()


def _database(session: Session) -> str:
    """The key of the session's database in the per-process caches (its URL)."""
    bind = session.get_bind()
    return str(getattr(bind, "url", id(bind)))


def train_images(
    hp: dict[str, Any], protocol: str | None, num_classes: int, splits: dict[str, Any]
) -> int | None:
    """The images a job trains on: ``shots`` per training class (the base half under base2novel),
    at most the dataset's train split."""
    classes = math.ceil(num_classes / 2) if (protocol or "base2novel") == "base2novel" else num_classes
    train = splits.get("train") if isinstance(splits, dict) else None
    shots = hp.get("shots")
    n = int(shots) * classes if isinstance(shots, int) and classes else None
    if isinstance(train, int) and train > 0:
        n = min(n, train) if n else train
    return n or None


def _mode(job_type: str, hp: dict[str, Any]) -> str:
    return eta.job_mode(job_type, hp.get("feature_mode") if isinstance(hp, dict) else None)


def _when(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=utcnow().tzinfo)


def _seconds(progress: dict[str, Any]) -> list[float]:
    xs = progress.get("epoch_seconds")
    return [float(x) for x in xs if isinstance(x, int | float)] if isinstance(xs, list) else []


def finished(
    job_type: str,
    backbone: dict[str, Any],
    hp: dict[str, Any],
    protocol: str | None,
    started: datetime,
    ended: datetime,
    run_seconds: float | None,
    progress: dict[str, Any] | None,
    num_classes: int,
    splits: dict[str, Any],
) -> eta.Finished | None:
    """One succeeded job's measurements (its epochs' median; else its run time over its epochs)."""
    hp = hp or {}
    epochs = int(hp.get("epochs") or 1)
    total = float(run_seconds) if run_seconds else (ended - started).total_seconds()
    if total <= 0:
        return None
    p = progress or {}
    xs = _seconds(p)
    done_at = _when(p.get("epoch_done_at"))
    eval_s = (ended - done_at).total_seconds() if done_at is not None and done_at <= ended else None
    if xs:
        # the first epoch of a short run carries the warm-up: the median leaves it out
        per_epoch = statistics.median(xs[1:] if len(xs) >= 3 else xs)
    else:
        per_epoch = max(0.0, total - (eval_s or 0.0)) / epochs
    return eta.Finished(
        model=str((backbone or {}).get("model", "")),
        mode=_mode(job_type, hp),
        images=train_images(hp, protocol, num_classes, splits),
        epochs=epochs,
        epoch_seconds=per_epoch,
        other_seconds=max(0.0, total - epochs * per_epoch),
        eval_seconds=eval_s,
    )


def history(session: Session) -> list[eta.Finished]:
    """The recent succeeded jobs' measurements: one query, reused HISTORY_TTL seconds."""
    key = _database(session)
    with _lock:
        hit = _history_cache.get(key)
    if hit is not None and time.monotonic() - hit[0] < HISTORY_TTL:
        return hit[1]
    read_at = utcnow()
    rows = session.execute(
        select(
            Job.job_type,
            Job.backbone,
            Job.hyperparameters,
            Job.protocol,
            Job.started_at,
            Job.finished_at,
            Job.run_seconds,
            Job.progress,
            Dataset.num_classes,
            Dataset.split_sizes,
        )
        .join(Dataset, Dataset.id == Job.dataset_id)
        .where(
            Job.status == JobStatus.succeeded.value, Job.started_at.is_not(None), Job.finished_at.is_not(None)
        )
        .order_by(Job.finished_at.desc())
        .limit(HISTORY_JOBS)
    ).all()
    out = [f for f in (finished(*row) for row in rows) if f is not None]
    with _lock:
        _history_cache[key] = (time.monotonic(), out, read_at)
    return out


def _seen_finished(session: Session, job: Job) -> None:
    """A job this process sees succeeded after it read the history: read it again next time."""
    if job.status != JobStatus.succeeded.value or job.finished_at is None:
        return
    key = _database(session)
    finished_at = job.finished_at if job.finished_at.tzinfo else job.finished_at.replace(tzinfo=UTC)
    with _lock:
        hit = _history_cache.get(key)
        if hit is not None and hit[2] <= finished_at:
            del _history_cache[key]


def _dataset_facts(session: Session, dataset_id: str) -> tuple[int, dict[str, Any]]:
    """(num_classes, split_sizes) of a dataset: fixed once created, so kept per process and database."""
    key = (_database(session), dataset_id)
    with _lock:
        hit = _datasets.get(key)
    if hit is not None:
        return hit
    row = session.execute(
        select(Dataset.num_classes, Dataset.split_sizes).where(Dataset.id == dataset_id)
    ).first()
    facts = (int(row[0]), dict(row[1] or {})) if row is not None else (0, {})
    with _lock:
        _datasets[key] = facts
        while len(_datasets) > _KEPT:
            _datasets.popitem(last=False)
    return facts


def job_state(session: Session, job: Job) -> eta.JobState:
    hp = job.hyperparameters or {}
    num_classes, splits = _dataset_facts(session, job.dataset_id)
    p: dict[str, Any] = job.progress or {}
    xs = _seconds(p)
    done_at = _when(p.get("epoch_done_at"))
    measured = p.get("epochs_measured")
    epochs_done = p.get("epochs_done")
    epochs = int(hp.get("epochs") or p.get("epochs") or 1)
    return eta.JobState(
        status=job.status,
        model=str((job.backbone or {}).get("model", "")),
        mode=_mode(job.job_type, hp),
        images=train_images(hp, job.protocol, num_classes, splits),
        epochs=epochs,
        started_at=job.started_at,
        epoch_seconds=xs,
        epochs_measured=int(measured) if isinstance(measured, int) else None,
        epochs_done=int(epochs_done) if isinstance(epochs_done, int) else 0,
        epoch_done_at=done_at if xs else None,
        evaluating_since=done_at or job.progress_at if job.status == JobStatus.evaluating.value else None,
    )


def _queue(session: Session, job: Job, position: int | None, now: datetime) -> eta.Queue:
    active = session.scalars(
        select(Job).where(Job.status.in_([s.value for s in ACTIVE_STATUSES]), Job.id != job.id)
    ).all()
    workers = len(repo.live_workers(session, now - timedelta(seconds=LIVE_WORKER_SECONDS)))
    return eta.Queue(
        queued_ahead=max(0, (position or 1) - 1),
        running=[job_state(session, j) for j in active],
        workers=max(1, workers),
    )


def estimate(
    session: Session, job: Job, position: int | None, default_epoch_seconds: float
) -> eta.Estimate | None:
    """The job's estimated finish (None once it ended or while it is being cancelled)."""
    key = (_database(session), job.id)
    if job.status not in (*_WAITING, "running", "evaluating") or job.cancel_requested:
        with _lock:
            _previous.pop(key, None)
        _seen_finished(session, job)
        return None
    now = utcnow()
    waiting = job.status in _WAITING
    queue = _queue(session, job, position, now) if waiting else None
    new = eta.estimate(
        job_state(session, job),
        history(session),
        now,
        default_epoch_seconds=default_epoch_seconds,
        queue=queue,
    )
    if new is None:
        return None
    with _lock:
        kept = _previous.get(key)
        # an estimate made while the job waited holds that wait: once it started it no longer applies
        result = eta.stabilize(kept[1] if kept is not None and kept[0] == waiting else None, new, now)
        _previous[key] = (waiting, result)
        _previous.move_to_end(key)
        while len(_previous) > _KEPT:
            _previous.popitem(last=False)
    return result
