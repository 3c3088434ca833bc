"""When a job will finish: a range and what it is based on, from measurements only (no database here).

Before a job starts, its duration comes from finished jobs like it: per job, the measured seconds per
training epoch times this job's epochs plus the rest of its run (setup and evaluation); the range is
the 20th to 80th percentile over those jobs, widened when few of them exist. "Like it" means, in this
order (the first level that has a finished job is used, and the basis says which):

1. same backbone model, same job type and feature mode, and a training set of the same order of
   magnitude (at most ``SIZE_RATIO`` times larger or smaller); seconds per epoch scaled by the
   image count;
2. same model and mode, any training set size (scaled by the image count);
3. any finished job, scaled by the relative compute of the two models (``model_cost``);
4. the configured default seconds per epoch.

A queued job also waits: the remaining time of the running jobs plus a typical job for each queued job
ahead, shared among the live workers. Once the job has finished an epoch, its own measured epochs pace
the rest of its training: the median of its recent epoch durations (a slow first epoch, or one slow
epoch, does not move it), anchored at the end of its last epoch; while it has few, similar jobs' pace
counts as ``PRIOR_EPOCHS`` more epochs. The range is their spread, never narrower than a floor that
shrinks as epochs accumulate. Evaluation time comes from similar jobs.

``stabilize`` keeps successive estimates of one job from swinging by more than their measured spread.
The result never finishes before now, nor before the job's (estimated) start.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

#: Training sets at most this many times larger or smaller count as "the same size".
SIZE_RATIO = 3.2
#: Recent epochs whose durations pace a running job.
RECENT_EPOCHS = 20
#: Relative half-width of a running job's range with one measured epoch (shrinks with 1/sqrt(epochs)).
RUNNING_FLOOR = 0.3
#: While a running job has few measured epochs, similar jobs' pace counts as this many more.
PRIOR_EPOCHS = 2
#: Relative half-width of a duration predicted from one similar job (shrinks with 1/sqrt(jobs)).
SIMILAR_FLOOR = 0.5
#: Before any similar job has finished, evaluation counts as this many epochs at the default pace.
DEFAULT_EVAL_EPOCHS = 3
#: A job takes at least this long: the range never reaches its start.
MIN_SECONDS = 1.0
#: A step of at most this many seconds is always allowed between two estimates of one job.
MIN_STEP = 1.0

#: Relative compute of an image encoder forward pass (GFLOPs at 224 px, open_clip's model profiles),
#: matched by the first key the model name contains; used only to scale other models' jobs.
_COSTS: tuple[tuple[str, float], ...] = (
    ("tiny", 0.02),
    ("ViT-bigG-14", 1000.0),
    ("ViT-g-14", 600.0),
    ("ViT-H-14", 330.0),
    ("ViT-L-14-336", 380.0),
    ("ViT-L-14", 160.0),
    ("ViT-L-16", 160.0),
    ("ViT-B-16", 35.0),
    ("ViT-B-32", 9.0),
    ("ViT-M-16", 20.0),
    ("ViT-M-32", 5.0),
    ("ViT-S-16", 9.0),
    ("ViT-S-32", 2.5),
    ("RN50x64", 550.0),
    ("RN50x16", 160.0),
    ("RN50x4", 40.0),
    ("RN101", 20.0),
    ("RN50", 11.0),
    ("convnext_base", 30.0),
    ("convnext_small", 18.0),
    ("convnext_tiny", 9.0),
)
_DEFAULT_COST = 35.0  # unknown models count as a ViT-B/16

_MODE_WORDS = {"bank": "feature bank", "exact": "exact features", "none": "cached features"}


def model_cost(model: str) -> float:
    """Relative compute of ``model``'s image encoder (ViT-B-16 = 35)."""
    for key, cost in _COSTS:
        if key.lower() in model.lower():
            return cost
    return _DEFAULT_COST


@dataclass(frozen=True)
class Finished:
    """A finished job's measurements: the population "similar jobs" are drawn from."""

    model: str
    mode: str  # job type and feature mode, e.g. "prompt/exact" (``job_mode``)
    images: int | None  # training images (None: unknown)
    epochs: int
    epoch_seconds: float  # median measured seconds of one training epoch
    other_seconds: float  # the rest of its run: setup before the first epoch and evaluation after
    eval_seconds: float | None  # from its last epoch's end to its finish (None: not measured)


@dataclass(frozen=True)
class JobState:
    """What is known about the job being estimated."""

    status: str
    model: str
    mode: str
    images: int | None
    epochs: int
    started_at: datetime | None = None
    #: Seconds of the recent epochs this run finished, oldest first (the worker reports the last 20).
    epoch_seconds: Sequence[float] = ()
    #: How many epochs this run measured in all (None: as many as ``epoch_seconds`` holds).
    epochs_measured: int | None = None
    #: Epochs finished (all runs: a resumed job starts after the stored epoch).
    epochs_done: int = 0
    #: When the last finished epoch ended (the anchor of the rest of the training).
    epoch_done_at: datetime | None = None
    #: When evaluation started (status evaluating).
    evaluating_since: datetime | None = None


@dataclass(frozen=True)
class Queue:
    """A queued job's wait: queued jobs that start before it, what runs now and who runs it."""

    queued_ahead: int = 0
    running: Sequence[JobState] = ()
    workers: int = 1


@dataclass(frozen=True)
class Estimate:
    earliest: datetime
    likely: datetime
    latest: datetime
    basis: str
    #: The estimated start (queued jobs) or the actual one.
    start: datetime | None = None


def job_mode(job_type: str, feature_mode: str | None) -> str:
    return f"{job_type}/{feature_mode or 'exact'}"


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated ``q`` percentile (0..100) of a non-empty sequence."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _images_text(n: int | None) -> str:
    if n is None:
        return "unknown size"
    if n >= 10_000:
        return f"~{round(n / 1000)}k images"
    if n >= 1000:
        return f"~{n / 1000:.1f}k images"
    return f"~{n} images"


def _mode_text(mode: str) -> str:
    job_type, _, feature = mode.partition("/")
    return f"{job_type}, {_MODE_WORDS.get(feature, feature)}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


@dataclass(frozen=True)
class Duration:
    """A predicted run length (seconds) and the evaluation part of it."""

    low: float
    likely: float
    high: float
    eval_low: float
    eval_likely: float
    eval_high: float
    basis: str
    known: bool  # False: the configured default, no finished job measured
    #: Likely seconds of one of this job's epochs, from the same jobs (None: the configured default).
    epoch_likely: float | None = None


def _scale(job: JobState, done: Finished, by_model: bool) -> tuple[float, float]:
    """(epoch factor, rest-of-run factor) from ``done`` to ``job``."""
    size = job.images / done.images if job.images and done.images else 1.0
    model = model_cost(job.model) / model_cost(done.model) if by_model else 1.0
    return size * model, model


def predict(job: JobState, history: Sequence[Finished], default_epoch_seconds: float) -> Duration:
    """How long ``job`` runs (start to finish), from the most similar finished jobs."""
    same_mode = [h for h in history if h.model == job.model and h.mode == job.mode]
    same_size = [
        h
        for h in same_mode
        if job.images and h.images and max(job.images / h.images, h.images / job.images) <= SIZE_RATIO
    ]
    what = f"{job.model}, {_mode_text(job.mode)}, {_images_text(job.images)}"
    if same_size:
        pool, by_model = same_size, False
        basis = f"{_plural(len(pool), 'similar finished job')} ({what})"
    elif same_mode:
        pool, by_model = same_mode, False
        basis = (
            f"{_plural(len(pool), 'finished job')} of the same model and mode at other sizes, "
            f"scaled to {_images_text(job.images)} ({job.model}, {_mode_text(job.mode)})"
        )
    elif history:
        pool, by_model = list(history), True
        basis = (
            f"{_plural(len(pool), 'finished job')} of other models or modes, scaled by model size "
            f"and image count (no finished {job.model} {_mode_text(job.mode)} job)"
        )
    else:
        evaluation = DEFAULT_EVAL_EPOCHS * default_epoch_seconds
        total = job.epochs * default_epoch_seconds + evaluation
        return Duration(
            total * 0.5,
            total,
            total * 2.0,
            evaluation * 0.5,
            evaluation,
            evaluation * 2.0,
            f"the configured default of {default_epoch_seconds:g} s per epoch (evaluation counted as "
            f"{DEFAULT_EVAL_EPOCHS} epochs): no similar job has finished",
            known=False,
        )
    totals: list[float] = []
    evals: list[float] = []
    epochs: list[float] = []
    for h in pool:
        per_epoch, rest = _scale(job, h, by_model)
        epochs.append(h.epoch_seconds * per_epoch)
        totals.append(job.epochs * h.epoch_seconds * per_epoch + h.other_seconds * rest)
        if h.eval_seconds is not None:
            evals.append(h.eval_seconds * rest)
    mid = statistics.median(totals)
    floor = SIMILAR_FLOOR / math.sqrt(len(totals))
    low = min(percentile(totals, 20), mid * (1 - floor))
    high = max(percentile(totals, 80), mid * (1 + floor))
    if evals:
        e_mid = statistics.median(evals)
        e_floor = SIMILAR_FLOOR / math.sqrt(len(evals))
        e_low = min(percentile(evals, 20), e_mid * (1 - e_floor))
        e_high = max(percentile(evals, 80), e_mid * (1 + e_floor))
    else:
        e_low = e_mid = e_high = 0.0
    return Duration(
        max(MIN_SECONDS, low),
        max(MIN_SECONDS, mid),
        max(MIN_SECONDS, high),
        e_low,
        e_mid,
        e_high,
        basis,
        True,
        statistics.median(epochs),
    )


def _recent(job: JobState) -> list[float]:
    """The epoch durations that pace the job: the last RECENT_EPOCHS, without a warm-up first epoch
    once three or more are measured."""
    xs = [float(x) for x in job.epoch_seconds if x is not None and x >= 0]
    if len(xs) >= 3 and _measured(job) == len(job.epoch_seconds):
        xs = xs[1:]  # the run's first epoch is still in the window: it carries the warm-up
    return xs[-RECENT_EPOCHS:]


def _measured(job: JobState) -> int:
    return job.epochs_measured if job.epochs_measured is not None else len(job.epoch_seconds)


def _training_left(
    job: JobState, now: datetime, prior: float | None = None
) -> tuple[datetime, float, float, str] | None:
    """(training end, its relative half-width, remaining training seconds, basis) from the job's own
    epochs; None before its first measured epoch. ``prior``: seconds per epoch of similar jobs, which
    counts as PRIOR_EPOCHS measured epochs while the job has few of its own."""
    xs = _recent(job)
    if not xs or job.epoch_done_at is None:
        return None
    med = statistics.median(xs)
    pace, pull = med, 0.0
    if prior is not None and prior > 0:
        weight = len(xs) / (len(xs) + PRIOR_EPOCHS)
        pace = weight * med + (1 - weight) * prior
        pull = (1 - weight) * abs(med - prior) / pace if pace > 0 else 0.0
    left = max(0, job.epochs - job.epochs_done)
    end = job.epoch_done_at + timedelta(seconds=left * pace)
    if left:
        # the current epoch overran the pace: the rest cannot start before now
        end = max(end, now + timedelta(seconds=(left - 1) * pace))
    spread = (percentile(xs, 80) - percentile(xs, 20)) / med if med > 0 and len(xs) > 1 else 0.0
    width = max(spread / 2, RUNNING_FLOOR / math.sqrt(max(1, _measured(job))), pull)
    basis = f"this job's {_plural(_measured(job), 'measured epoch')}"
    if pull:
        basis += " and similar jobs' pace"
    return end, width, (end - now).total_seconds(), basis


def _remaining(job: JobState, duration: Duration, now: datetime) -> float:
    """Likely seconds until a running job finishes (used for the queue ahead of another job)."""
    own = _training_left(job, now, duration.epoch_likely)
    if own is not None:
        return max(0.0, own[2]) + duration.eval_likely
    elapsed = (now - job.started_at).total_seconds() if job.started_at else 0.0
    return max(0.0, duration.likely - elapsed)


def estimate(
    job: JobState,
    history: Sequence[Finished],
    now: datetime,
    *,
    default_epoch_seconds: float,
    queue: Queue | None = None,
) -> Estimate | None:
    """The finish of ``job`` as a range; None for a job that ended."""
    status = job.status
    if status not in ("validating", "queued", "running", "evaluating", "cancelling"):
        return None
    duration = predict(job, history, default_epoch_seconds)
    if status in ("validating", "queued"):
        q = queue or Queue()
        wait = sum(_remaining(r, predict(r, history, default_epoch_seconds), now) for r in q.running)
        wait += q.queued_ahead * duration.likely
        wait /= max(1, q.workers)
        start = now + timedelta(seconds=wait)
        basis = duration.basis
        if wait >= 1:
            basis += (
                f"; starts in about {_minutes(wait)} ({_plural(q.queued_ahead + len(q.running), 'job')} "
                f"ahead, {_plural(max(1, q.workers), 'worker')})"
            )
        return _ordered(
            start + timedelta(seconds=duration.low),
            start + timedelta(seconds=duration.likely),
            start + timedelta(seconds=duration.high),
            basis,
            start,
            floor=start + timedelta(seconds=MIN_SECONDS),
        )
    start = job.started_at or now
    if status == "evaluating" or (job.epochs_done >= job.epochs and job.epoch_done_at is not None):
        since = job.evaluating_since or job.epoch_done_at or now
        basis = f"evaluation time of {duration.basis}" if duration.known else f"evaluation: {duration.basis}"
        return _ordered(
            since + timedelta(seconds=duration.eval_low),
            since + timedelta(seconds=duration.eval_likely),
            since + timedelta(seconds=duration.eval_high),
            basis,
            start,
            floor=now,
        )
    own = _training_left(job, now, duration.epoch_likely)
    if own is None:  # not one epoch measured yet: as predicted, from the actual start
        return _ordered(
            start + timedelta(seconds=duration.low),
            start + timedelta(seconds=duration.likely),
            start + timedelta(seconds=duration.high),
            duration.basis + "; no epoch of this job finished yet",
            start,
            floor=now,
        )
    end, width, left, basis = own
    left = max(0.0, left)
    if duration.known and duration.eval_likely:
        basis += "; evaluation time from similar jobs"
    elif not duration.known:
        basis += f"; evaluation counted as {DEFAULT_EVAL_EPOCHS} epochs at the configured default"
    return _ordered(
        end - timedelta(seconds=left * width) + timedelta(seconds=duration.eval_low),
        end + timedelta(seconds=duration.eval_likely),
        end + timedelta(seconds=left * width + duration.eval_high),
        basis,
        start,
        floor=now,
    )


def _minutes(seconds: float) -> str:
    if seconds < 90:
        return f"{round(seconds)} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


def _ordered(
    earliest: datetime,
    likely: datetime,
    latest: datetime,
    basis: str,
    start: datetime | None,
    *,
    floor: datetime,
) -> Estimate:
    """earliest <= likely <= latest, none before ``floor`` (now, or the estimated start)."""
    earliest = max(earliest, floor)
    likely = max(likely, earliest)
    latest = max(latest, likely)
    return Estimate(earliest, likely, latest, basis, start)


def stabilize(previous: Estimate | None, new: Estimate, now: datetime) -> Estimate:
    """``new``, with its likely finish moved from ``previous``'s by at most half the wider of the two
    ranges (and at least ``MIN_STEP`` allowed); the range is widened to hold it, nothing before now."""
    if previous is None:
        return new
    half = max(
        (new.latest - new.earliest).total_seconds(), (previous.latest - previous.earliest).total_seconds()
    )
    step = max(MIN_STEP, half / 2)
    lo = previous.likely - timedelta(seconds=step)
    hi = previous.likely + timedelta(seconds=step)
    likely = min(max(new.likely, lo), hi)
    floor = max(now, new.start) if new.start is not None and new.start > now else now
    likely = max(likely, floor)
    return replace(
        new, earliest=max(floor, min(new.earliest, likely)), likely=likely, latest=max(new.latest, likely)
    )
