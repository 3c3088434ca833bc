"""A bounded pool of sandboxed checkpoint parses for the API process.

Each upload is parsed in its own limited child process (:mod:`mergetune.core.checkpoints.sandbox`, numpy only: the API
never imports torch). At most ``PARSE_WORKERS`` parses run at once and ``PARSE_QUEUE`` more wait for
a slot; past that an upload is answered ``503`` with ``Retry-After`` instead of piling up threads.
One project holds at most ``PARSE_PROJECT_SHARE`` of the running and of the admitted parses, so the
others keep being served. Sweep archives are read in the same children, one slot each.
The request thread only waits on the child, so the event loop (``/healthz``, other requests) stays
responsive while parses run.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mergetune.api.errors import ServiceUnavailable
from mergetune.common.settings import Settings
from mergetune.core.checkpoints.archive import ArchiveLimits, TreeCheckpoint
from mergetune.core.checkpoints.ingest import IngestedCheckpoint
from mergetune.core.checkpoints.safe_pickle import ParseLimits
from mergetune.core.checkpoints.sandbox import SandboxLimits, SandboxRun, ingest_sandboxed, unpack_sandboxed
from mergetune.core.config import Method

log = logging.getLogger(__name__)


def archive_limits(settings: Settings) -> ArchiveLimits:
    return ArchiveLimits(
        max_members=settings.SWEEP_MAX_MEMBERS,
        max_unpacked_bytes=settings.SWEEP_MAX_UNPACKED_BYTES,
        max_member_bytes=settings.MAX_UPLOAD_BYTES,
        max_header_bytes=settings.SWEEP_MAX_HEADER_BYTES,
        max_name_bytes=settings.SWEEP_MAX_NAME_BYTES,
        max_ratio=settings.SWEEP_MAX_RATIO,
        max_kept_bytes=settings.SWEEP_MAX_STORED_BYTES,
    )


def unpack_limits(settings: Settings) -> SandboxLimits:
    return SandboxLimits(
        memory_bytes=settings.PARSE_MEMORY_BYTES,
        cpu_seconds=settings.SWEEP_UNPACK_CPU_SECONDS,
        wall_seconds=settings.SWEEP_UNPACK_WALL_SECONDS,
    )


def sandbox_limits(settings: Settings) -> SandboxLimits:
    return SandboxLimits(
        memory_bytes=settings.PARSE_MEMORY_BYTES,
        cpu_seconds=settings.PARSE_CPU_SECONDS,
        wall_seconds=settings.PARSE_WALL_SECONDS,
        parse=ParseLimits(
            max_tensor_bytes=settings.PARSE_MAX_TENSOR_BYTES, max_total_bytes=settings.PARSE_MAX_TOTAL_BYTES
        ),
    )


class ParsePool:
    """Parse slots shared fairly: ``workers`` run at once and ``queue`` more wait; one project holds at
    most ``share`` of the running slots and of the admitted requests (at least one of each), so that
    another project always finds a place; a freed slot goes to the waiting project with the fewest
    running parses (the earliest of those)."""

    def __init__(self, workers: int, queue: int, retry_after: int, share: float = 1.0) -> None:
        self._cond = threading.Condition()
        self._workers = workers
        self._capacity = workers + queue
        self._project_running_cap = max(1, int(workers * share))
        self._project_admitted_cap = max(1, int((workers + queue) * share))
        self._retry_after = retry_after
        self._running = 0
        self._admitted = 0
        self._by_project: Counter[str] = Counter()  # admitted (running + waiting)
        self._running_by: Counter[str] = Counter()
        self._waiting: list[tuple[str, int]] = []
        self._tickets = itertools.count()

    def _busy(self, message: str) -> ServiceUnavailable:
        return ServiceUnavailable(
            message, code="parser_busy", param="file", headers={"Retry-After": str(self._retry_after)}
        )

    def _turn(self, ticket: int) -> bool:
        if self._running >= self._workers:
            return False
        ready = [w for w in self._waiting if self._running_by[w[0]] < self._project_running_cap]
        return bool(ready) and min(ready, key=lambda w: (self._running_by[w[0]], w[1]))[1] == ticket

    @contextmanager
    def slot(self, project_id: str | None) -> Iterator[None]:
        """Hold one parse slot for ``project_id``; 503 ``parser_busy`` when the pool or the project's
        share of it is full."""
        project = project_id or ""
        with self._cond:
            if self._admitted >= self._capacity:
                raise self._busy("too many uploads are being validated; retry shortly")
            if self._by_project[project] >= self._project_admitted_cap:
                raise self._busy(
                    f"this project already has {self._by_project[project]} uploads being validated; "
                    "retry once one is answered"
                )
            self._admitted += 1
            self._by_project[project] += 1
            ticket = next(self._tickets)
            self._waiting.append((project, ticket))
            try:
                while not self._turn(ticket):
                    self._cond.wait()
            except BaseException:
                self._waiting.remove((project, ticket))
                self._leave(project)
                raise
            self._waiting.remove((project, ticket))
            self._running += 1
            self._running_by[project] += 1
        try:
            yield
        finally:
            with self._cond:
                self._running -= 1
                self._running_by[project] -= 1
                self._leave(project)

    def _leave(self, project: str) -> None:
        self._admitted -= 1
        self._by_project[project] -= 1
        if self._by_project[project] <= 0:
            del self._by_project[project]
        if self._running_by[project] <= 0:
            del self._running_by[project]
        self._cond.notify_all()

    @contextmanager
    def deployment_slot(self, settings: Settings, project_id: str | None) -> Iterator[None]:
        """One of the project's admitted places across every API process of the deployment (on
        Postgres): session advisory locks (project, i) for i below the project's admitted cap, taken
        without waiting and held on their own connection until the parse is answered, so that one
        project spread over several processes still holds at most the cap one process gives it; a
        process that dies lets its places go with its connections. SQLite (one process): none needed."""
        if not settings.DATABASE_URL.startswith("postgresql") or not project_id:
            yield
            return
        from sqlalchemy import text

        from mergetune.common.db import get_engine

        cap = self._project_admitted_cap
        base = int.from_bytes(
            hashlib.sha256(f"parse\0{project_id}".encode()).digest()[:4], "big", signed=True
        )
        with get_engine(settings.DATABASE_URL).connect() as conn:
            held = next(
                (
                    i
                    for i in range(cap)
                    if conn.execute(text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": base, "b": i}).scalar()
                ),
                None,
            )
            conn.commit()
            if held is None:
                raise self._busy(
                    f"this project already has {cap} uploads being validated; retry once one is answered"
                )
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:a, :b)"), {"a": base, "b": held})
                conn.commit()

    def parse(
        self,
        settings: Settings,
        path: str | os.PathLike,
        *,
        filename: str | None,
        method: Method | None,
        project_id: str | None = None,
    ) -> IngestedCheckpoint:
        with self.deployment_slot(settings, project_id), self.slot(project_id):
            run = SandboxRun()
            try:
                result: IngestedCheckpoint = ingest_sandboxed(
                    path,
                    filename=filename,
                    method=method,
                    limits=sandbox_limits(settings),
                    tmp_dir=Path(settings.tmp_dir),
                    run=run,
                )
                return result
            finally:
                log.info(
                    "checkpoint parse: %.2f s, exit %s, peak RSS %d MB",
                    run.wall_seconds,
                    run.returncode,
                    run.peak_rss_bytes >> 20,
                )

    def unpack(
        self, settings: Settings, path: str | os.PathLike, out: Path, *, project_id: str | None
    ) -> list[TreeCheckpoint]:
        """Read a sweep archive in a parse child (one slot), leaving its checkpoints in ``out``."""
        with self.deployment_slot(settings, project_id), self.slot(project_id):
            run = SandboxRun()
            try:
                return unpack_sandboxed(
                    path, out, archive=archive_limits(settings), limits=unpack_limits(settings), run=run
                )
            finally:
                log.info(
                    "archive read: %.2f s, exit %s, peak RSS %d MB",
                    run.wall_seconds,
                    run.returncode,
                    run.peak_rss_bytes >> 20,
                )


_pools: dict[tuple[int, int, int, float], ParsePool] = {}
_pools_lock = threading.Lock()


def parse_pool(settings: Settings) -> ParsePool:
    """The process-wide pool for these settings' sizes."""
    key = (
        settings.PARSE_WORKERS,
        settings.PARSE_QUEUE,
        settings.PARSE_RETRY_AFTER,
        settings.PARSE_PROJECT_SHARE,
    )
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ParsePool(*key)
        return pool
