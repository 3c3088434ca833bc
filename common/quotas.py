"""Per-project quotas (operator-set with ``mergetune project set``; every one off by default).

- stored bytes (``quota_stored_bytes``): a hard cap. An upload that would take the project over it is
  refused (403 ``quota_exceeded``); deleting jobs or checkpoints makes room.
- device seconds per UTC day (``quota_device_seconds_per_day``): once the project's jobs used that much
  today, new jobs are refused (429 ``quota_exceeded`` with ``Retry-After`` until midnight UTC) and its
  queued jobs wait (the scheduler passes the project over; their ``queue.reason`` is
  ``quota_exceeded``) until the day turns.
- running jobs: the project's running limit (``max_running_jobs``, :mod:`mergetune.common.scheduling`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select

from mergetune.common import usage
from mergetune.common.models import Project


@dataclass(frozen=True)
class Over:
    """A quota the project is over: which, the limit, what is used, and what to tell the caller."""

    quota: str
    limit: float
    used: float
    message: str
    retry_after: int | None = None


def seconds_to_midnight(now: datetime) -> int:
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), tzinfo=now.tzinfo)
    return max(1, int((tomorrow - now).total_seconds()) + 1)


def device_over(s: Any, project_id: str, now: datetime) -> Over | None:
    """The daily device-time quota, when today's use reached it."""
    limit = s.scalar(select(Project.quota_device_seconds_per_day).where(Project.id == project_id))
    if limit is None:
        return None
    used = usage.device_seconds(s, project_id, day=now.date()).get(project_id, 0.0)
    if used < limit:
        return None
    return Over(
        "device_seconds_per_day",
        float(limit),
        used,
        f"the project used {used:.0f} of its {limit:g} device seconds for today (UTC); "
        "new jobs are accepted again at midnight UTC",
        retry_after=seconds_to_midnight(now),
    )


def stored_over(s: Any, project_id: str, adding: int) -> Over | None:
    """The stored-bytes cap, when ``adding`` more bytes would go over it."""
    limit = s.scalar(select(Project.quota_stored_bytes).where(Project.id == project_id))
    if limit is None:
        return None
    used = usage.stored_bytes(s, project_id)[project_id]["total"]
    if used + adding <= limit:
        return None
    return Over(
        "stored_bytes",
        float(limit),
        float(used),
        f"the project stores {used} of its {limit} bytes quota; {adding} more do not fit "
        "(DELETE jobs or checkpoints to free room)",
    )


def device_blocked(s: Any, project_ids: list[str], now: datetime) -> set[str]:
    """The projects among ``project_ids`` over their daily device-time quota (the scheduler skips them)."""
    limits = {
        pid: lim
        for pid, lim in s.execute(
            select(Project.id, Project.quota_device_seconds_per_day).where(
                Project.id.in_(project_ids), Project.quota_device_seconds_per_day.is_not(None)
            )
        )
    }
    if not limits:
        return set()
    used = usage.device_seconds(s, None, day=now.date())
    return {pid for pid, lim in limits.items() if used.get(pid, 0.0) >= lim}
