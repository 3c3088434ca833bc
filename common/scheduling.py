"""Fair share between projects: which queued job a free worker takes next, and why the others wait.

The state is Postgres alone (the jobs' statuses, run times and priorities; the projects' weights and
running limits), so any number of workers, and the API explaining a job's wait, see the same thing.
The worker's claim (:func:`mergetune.worker.jobdb.claim_job`) calls :func:`pick_next` under
:func:`scheduler_lock`; the API calls :func:`queue_plan`.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, func, select

from mergetune.common.localcache import TTLCache, generation
from mergetune.common.models import ACTIVE_STATUSES, TERMINAL_STATUSES, Job, JobStatus, Project, utcnow
from mergetune.common.quotas import device_blocked

ACTIVE = [s.value for s in ACTIVE_STATUSES]
TERMINAL = [s.value for s in TERMINAL_STATUSES]
STARTABLE = [JobStatus.validating.value, JobStatus.queued.value]

#: Serialises the fair-share choice between claimers (a transaction-level advisory lock on Postgres):
#: two workers never both see a project under its running limit and both start one of its jobs.
SCHEDULER_LOCK = 0x6D657267  # "merg"


def scheduler_lock(s: Any) -> None:
    """Take the scheduler's lock until the transaction ends (Postgres; SQLite serialises writers)."""
    if s.get_bind().dialect.name == "postgresql":
        s.execute(select(func.pg_advisory_xact_lock(SCHEDULER_LOCK)))


@dataclass(frozen=True)
class Pick:
    """What the fair-share choice saw: the job to run (None: nothing runnable) and why others wait."""

    job: Job | None
    #: project id -> (weighted recent device seconds, running jobs, running limit)
    projects: dict[str, tuple[float, int, int | None]]


def project_usage(s: Any, project_ids: list[str], now: datetime, window: float) -> dict[str, float]:
    """Device seconds each project's jobs used in the last ``window`` seconds: the run time of jobs that
    finished within it, plus the time active jobs have run so far (all their attempts)."""
    if not project_ids:
        return {}
    since = now - timedelta(seconds=window)
    used = {p: 0.0 for p in project_ids}
    for pid, total in s.execute(
        select(Job.project_id, func.sum(Job.run_seconds))
        .where(Job.project_id.in_(project_ids), Job.status.in_(TERMINAL), Job.finished_at >= since)
        .group_by(Job.project_id)
    ):
        used[pid] += float(total or 0.0)
    for pid, earlier, started in s.execute(
        select(Job.project_id, Job.run_seconds, Job.attempt_started_at).where(
            Job.project_id.in_(project_ids), Job.status.in_(ACTIVE)
        )
    ):
        used[pid] += float(earlier or 0.0)
        if started is not None:
            used[pid] += max(0.0, (now - started).total_seconds())
    return used


def fair_order(s: Any, now: datetime, window: float) -> list[tuple[str, float, int, int | None]]:
    """Projects with startable jobs, the one to serve first first: (project, weighted usage, running,
    limit), ordered by weighted recent device time, then by their oldest queued job."""
    waiting = dict(
        s.execute(
            select(Job.project_id, func.min(Job.queued_at))
            .where(Job.status.in_(STARTABLE), Job.cancel_requested.is_(False))
            .group_by(Job.project_id)
        ).all()
    )
    if not waiting:
        return []
    ids = sorted(waiting)
    used = project_usage(s, ids, now, window)
    running = dict(
        s.execute(
            select(Job.project_id, func.count())
            .where(Job.project_id.in_(ids), Job.status.in_(ACTIVE))
            .group_by(Job.project_id)
        ).all()
    )
    props = {
        r[0]: (float(r[1] or 1.0), r[2])
        for r in s.execute(
            select(Project.id, Project.weight, Project.max_running_jobs).where(Project.id.in_(ids))
        )
    }
    out = []
    for pid in ids:
        weight, limit = props.get(pid, (1.0, None))
        out.append((pid, used[pid] / max(weight, 1e-9), int(running.get(pid, 0)), limit))
    oldest = {pid: waiting[pid] or now for pid in ids}
    out.sort(key=lambda r: (r[1], oldest[r[0]], r[0]))
    return out


def priority_rank() -> Any:
    """0 for high, 1 for normal, 2 for low: the order of a project's queued jobs."""
    return case((Job.priority == "high", 0), (Job.priority == "low", 2), else_=1)


def pick_next(s: Any, now: datetime, window: float) -> Pick:
    """The next job to run, locked (``FOR UPDATE SKIP LOCKED``): from the project with the least
    weighted recent device time that is under its running limit, its highest priority, oldest job."""
    order = fair_order(s, now, window)
    seen = {pid: (usage, running, limit) for pid, usage, running, limit in order}
    over_quota = device_blocked(s, [pid for pid, _u, _r, _l in order], now)
    for pid, _usage, running, limit in order:
        if limit is not None and running >= limit:
            continue
        if pid in over_quota:  # its device time for today is used up: its jobs wait for tomorrow
            continue
        job = s.execute(
            select(Job)
            .where(Job.project_id == pid, Job.status.in_(STARTABLE), Job.cancel_requested.is_(False))
            .order_by(priority_rank(), Job.queued_at, Job.id)
            .limit(1)
            .with_for_update(skip_locked=True)
        ).scalar_one_or_none()
        if job is not None:
            return Pick(job, seen)
    return Pick(None, seen)


#: Why a queued job waits (the job object's ``queue.reason``).
WAITING_FOR_WORKER = "waiting_for_worker"
FAIR_SHARE = "fair_share"
PROJECT_RUNNING_LIMIT = "project_running_limit"
QUOTA_EXCEEDED = "quota_exceeded"

#: Device seconds one job is assumed to take in :func:`queue_plan` before any job has finished.
DEFAULT_JOB_SECONDS = 60.0


@dataclass(frozen=True)
class QueueSpot:
    """Where a queued job stands: its 1-based position in the order workers will take the queued jobs,
    why it waits, and that in words."""

    position: int
    reason: str
    message: str


def typical_job_seconds(s: Any) -> float:
    """The median run time of the last 20 succeeded jobs (DEFAULT_JOB_SECONDS before any)."""
    rows = s.scalars(
        select(Job.run_seconds)
        .where(Job.status == JobStatus.succeeded.value, Job.run_seconds > 0)
        .order_by(Job.finished_at.desc())
        .limit(20)
    ).all()
    values = sorted(float(v) for v in rows)
    return values[len(values) // 2] if values else DEFAULT_JOB_SECONDS


def queue_plan(s: Any, now: datetime, window: float) -> dict[str, QueueSpot]:
    """Every startable job's spot: the claims replayed on the current state (each start adds a typical
    job's device time to its project, divided by the weight; a project at its running limit is passed
    over until its running jobs would have ended). Computed once per session and moment."""
    key = ("mergetune.queue_plan", int(now.timestamp()), window)
    cached = s.info.get(key)
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    order = fair_order(s, now, window)
    plan: dict[str, QueueSpot] = {}
    if not order:
        s.info[key] = plan
        return plan
    ids = [pid for pid, _u, _r, _l in order]
    weights = {
        pid: max(float(w or 1.0), 1e-9)
        for pid, w in s.execute(select(Project.id, Project.weight).where(Project.id.in_(ids)))
    }
    queues: dict[str, list[tuple[str, datetime]]] = {pid: [] for pid in ids}
    for job_id, pid, queued_at in s.execute(
        select(Job.id, Job.project_id, Job.queued_at)
        .where(Job.status.in_(STARTABLE), Job.cancel_requested.is_(False))
        .order_by(priority_rank(), Job.queued_at, Job.id)
    ):
        queues[pid].append((job_id, queued_at or now))
    usage = {pid: u for pid, u, _r, _l in order}
    over_quota = device_blocked(s, ids, now)
    for pid in over_quota:  # they start only after the day turns: after everyone else here
        usage[pid] = float("inf")
    running = {pid: r for pid, _u, r, _l in order}
    limits = {pid: lim for pid, _u, _r, lim in order}
    total_cap = 1 << 62  # no limit
    cap = {pid: (lim if lim is not None else total_cap) for pid, _u, _r, lim in order}
    at_limit = {pid for pid in ids if running[pid] >= cap[pid]}
    unit = typical_job_seconds(s)
    heads = dict.fromkeys(ids, 0)
    placed = dict.fromkeys(ids, 0)
    sim_running = dict(running)
    used_now = {pid: u * weights[pid] for pid, u, _r, _l in order}  # device seconds, unweighted
    position = 0
    total = sum(len(q) for q in queues.values())
    while position < total:
        waiting = [pid for pid in ids if heads[pid] < len(queues[pid])]
        free = [p for p in waiting if sim_running[p] < cap[p]]
        if not free:  # every project left is at its limit: their running jobs end first
            sim_running = dict.fromkeys(ids, 0)
            continue
        pid = min(free, key=lambda p: (usage[p], queues[p][heads[p]][1], p))
        job_id = queues[pid][heads[pid]][0]
        heads[pid] += 1
        position += 1
        others_ahead = position - 1 - placed[pid] > 0
        placed[pid] += 1
        if pid in over_quota:
            reason = QUOTA_EXCEEDED
            message = "its project used up its device seconds for today (UTC); it waits for midnight UTC"
        elif pid in at_limit:
            reason = PROJECT_RUNNING_LIMIT
            message = (
                f"its project runs {running[pid]} jobs, its limit of {limits[pid]}; it starts when "
                "one of them ends"
            )
        elif others_ahead:
            reason = FAIR_SHARE
            message = (
                "other projects, which used less device time recently (weighted), go first; this "
                f"project used {used_now[pid]:.0f} s in the last {window / 3600:g} h"
            )
        else:
            reason = WAITING_FOR_WORKER
            message = (
                "next to start when a worker is free"
                if position == 1
                else f"starts after {position - 1} earlier job(s) of its own project, as workers free up"
            )
        plan[job_id] = QueueSpot(position, reason, message)
        usage[pid] += unit / weights[pid]
        sim_running[pid] += 1
    s.info[key] = plan
    return plan


#: Seconds one process reuses the queue plan (a whole-queue computation of several statements) for the
#: queued jobs' GETs, dropped at once when this process writes (mergetune.common.localcache).
PLAN_CACHE_SECONDS = 1.0

_plans = TTLCache(PLAN_CACHE_SECONDS, maxsize=64)
_plan_lock = threading.Lock()


def current_queue_plan(s: Any, window: float, job_id: str | None = None) -> dict[str, QueueSpot]:
    """:func:`queue_plan` now, reused for PLAN_CACHE_SECONDS by this process. A change made by another
    process (a worker starting or finishing a job, a job queued through another API process) shows
    within that time; one made here, at once. A queued ``job_id`` missing from the reused plan (queued
    after it was computed) gets a fresh plan."""
    key = (s.get_bind(), window)
    plan: dict[str, QueueSpot] | None = _plans.get(key)
    if plan is not None and (job_id is None or job_id in plan):
        return plan
    with _plan_lock:  # one computation at a time: the threads that wait take its result
        plan = _plans.get(key)
        if plan is None or (job_id is not None and job_id not in plan):
            before = generation()
            plan = queue_plan(s, utcnow(), window)
            _plans.put(key, plan, generation=before)
    return plan
