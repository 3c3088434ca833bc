"""Prometheus metrics of the API process (one registry per app, so tests can build several apps).

- ``mergetune_jobs{status}``: jobs by status, read from the database at scrape time (the record of
  truth, so it is right whichever process changed the rows).
- ``mergetune_queue_depth``: jobs waiting in the queue (status ``queued``), also from the database.
- ``mergetune_job_duration_seconds``: histogram of started_at -> finished_at of finished jobs, by final
  status, built from the database at scrape time (bounded to the latest ``DURATION_WINDOW`` jobs).
- ``mergetune_job_warnings_total{code}``: verdict warnings of finished jobs by code (below_fine_tuned,
  below_zero_shot, base_drop, baseline_better, adapters_unmoved; mergetune.core.evaluation.result.WARNING_CODES), from the
  database.
- ``mergetune_workers_live``: workers whose heartbeat is at most ``WORKER_LIVE_SECONDS`` old;
  ``mergetune_worker_heartbeat_age_seconds{hostname}`` and ``mergetune_worker_busy{hostname}`` per worker
  seen in the last ``WORKER_SEEN_SECONDS`` (from the heartbeat table).
- ``mergetune_recovered_hm``: histogram of the recovered HM (%) of succeeded jobs (latest
  ``DURATION_WINDOW``), from the database.
- ``mergetune_project_device_seconds_total{project}`` (device time of training, from the usage
  ledger), ``mergetune_project_jobs_total{project}`` (jobs created) and
  ``mergetune_project_stored_bytes{project}`` (checkpoints and artifacts kept), by project name.
- ``mergetune_upload_bytes_total``: bytes of checkpoint uploads received by this process.
- ``mergetune_http_request_duration_seconds{method,route,status}``: request latency.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mergetune.common import repositories as repo
from mergetune.common import usage
from mergetune.common.db import get_sessionmaker
from mergetune.common.models import TERMINAL_STATUSES, Job, Project
from mergetune.core.evaluation.result import WARNING_CODES

log = logging.getLogger(__name__)

DURATION_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0, 43200.0, 86400.0)
DURATION_WINDOW = 10000
HM_BUCKETS = tuple(float(b) for b in range(10, 101, 10))
WORKER_LIVE_SECONDS = 120
WORKER_SEEN_SECONDS = 86400


class _DatabaseCollector(Collector):
    def __init__(self, database_url: str) -> None:
        self.database_url = database_url

    def collect(self) -> Iterable[Any]:
        jobs = GaugeMetricFamily("mergetune_jobs", "Jobs by status", labels=["status"])
        depth = GaugeMetricFamily("mergetune_queue_depth", "Jobs waiting in the queue (status queued)")
        duration = HistogramMetricFamily(
            "mergetune_job_duration_seconds",
            "Wall time of finished jobs (started -> finished)",
            labels=["status"],
        )
        try:
            session = get_sessionmaker(self.database_url)()
            try:
                counts = repo.count_jobs_by_status(session)
                rows = session.execute(
                    select(Job.status, Job.started_at, Job.finished_at)
                    .where(
                        Job.status.in_([s.value for s in TERMINAL_STATUSES]),
                        Job.started_at.is_not(None),
                        Job.finished_at.is_not(None),
                    )
                    .order_by(Job.id.desc())
                    .limit(DURATION_WINDOW)
                ).all()
                verdicts = session.scalars(select(Job.verdict).where(Job.status == "succeeded")).all()
                succeeded_metrics = session.scalars(
                    select(Job.metrics)
                    .where(Job.status == "succeeded")
                    .order_by(Job.id.desc())
                    .limit(DURATION_WINDOW)
                ).all()
                now = datetime.now(UTC)
                workers = [
                    (w.hostname, max(0.0, (now - w.last_seen).total_seconds()), w.current_job_id is not None)
                    for w in repo.live_workers(session, now - timedelta(seconds=WORKER_SEEN_SECONDS))
                ]
                usage = _project_usage(session)
            finally:
                session.close()
        except Exception:  # a scrape must not fail because the DB blinked
            log.warning("metrics: database unavailable", exc_info=True)
            return []
        for status, n in sorted(counts.items()):
            jobs.add_metric([status], n)
        depth.add_metric([], counts.get("queued", 0))
        by_status: dict[str, list[float]] = {}
        for status, started, finished in rows:
            if started is not None and finished is not None:
                by_status.setdefault(status, []).append(max(0.0, (finished - started).total_seconds()))
        for status, values in sorted(by_status.items()):
            buckets = [(str(b), sum(1 for v in values if v <= b)) for b in DURATION_BUCKETS]
            buckets.append(("+Inf", len(values)))
            duration.add_metric([status], buckets, sum(values))
        warnings = CounterMetricFamily(
            "mergetune_job_warnings", "Verdict warnings of finished jobs, by warning code", labels=["code"]
        )
        by_code = dict.fromkeys(WARNING_CODES, 0)
        for v in verdicts:
            for w in (v or {}).get("warnings") or []:
                code = str(w.get("code", "")) if isinstance(w, dict) else ""
                if code:
                    by_code[code] = by_code.get(code, 0) + 1
        for code, n in sorted(by_code.items()):
            warnings.add_metric([code], n)
        live = GaugeMetricFamily(
            "mergetune_workers_live", f"Workers with a heartbeat in the last {WORKER_LIVE_SECONDS} s"
        )
        live.add_metric([], sum(1 for _, age, _ in workers if age <= WORKER_LIVE_SECONDS))
        age = GaugeMetricFamily(
            "mergetune_worker_heartbeat_age_seconds",
            "Seconds since each worker's last heartbeat",
            labels=["hostname"],
        )
        busy = GaugeMetricFamily(
            "mergetune_worker_busy", "1 while the worker runs a job", labels=["hostname"]
        )
        for hostname, seconds, is_busy in sorted(workers):
            age.add_metric([hostname], seconds)
            busy.add_metric([hostname], 1.0 if is_busy else 0.0)
        hms = []
        for m in succeeded_metrics:
            rec = (m or {}).get("recovered") if isinstance(m, dict) else None
            v = rec.get("hm") if isinstance(rec, dict) else None
            if isinstance(v, int | float) and math.isfinite(v):
                hms.append(float(v))
        hm = HistogramMetricFamily("mergetune_recovered_hm", "Recovered HM (%) of succeeded jobs")
        hm_buckets = [(str(b), sum(1 for v in hms if v <= b)) for b in HM_BUCKETS]
        hm_buckets.append(("+Inf", len(hms)))
        hm.add_metric([], hm_buckets, sum(hms))
        return [jobs, depth, duration, warnings, live, age, busy, hm, *usage]


def _project_usage(session: Any) -> list[Any]:
    """Per project (labelled by name): device seconds used and jobs created (counters), bytes kept in
    the store (gauge)."""
    names = dict(session.execute(select(Project.id, Project.name)).all())
    device = CounterMetricFamily(
        "mergetune_project_device_seconds", "Device seconds of training, by project", labels=["project"]
    )
    for pid, seconds in sorted(usage.device_seconds(session).items()):
        device.add_metric([names.get(pid, pid)], seconds)
    created = CounterMetricFamily("mergetune_project_jobs", "Jobs created, by project", labels=["project"])
    for pid, n in session.execute(select(Job.project_id, func.count()).group_by(Job.project_id)).all():
        created.add_metric([names.get(pid, pid)], int(n))
    stored = GaugeMetricFamily(
        "mergetune_project_stored_bytes", "Bytes kept in the artifact store, by project", labels=["project"]
    )
    for pid, b in sorted(usage.stored_bytes(session).items()):
        stored.add_metric([names.get(pid, pid)], b["total"])
    return [device, created, stored]


class Metrics:
    def __init__(self, database_url: str) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.upload_bytes = Counter(
            "mergetune_upload_bytes", "Bytes of checkpoint uploads received", registry=self.registry
        )
        self.http_latency = Histogram(
            "mergetune_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.registry.register(_DatabaseCollector(database_url))


class LatencyMiddleware:
    """Pure ASGI middleware (streams untouched) observing latency per route template."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            self.metrics.http_latency.labels(scope.get("method", ""), path, str(status["code"])).observe(
                time.perf_counter() - start
            )
