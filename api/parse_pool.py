"""A bounded pool of sandboxed checkpoint parses for the API process.

Each upload is parsed in its own limited child process (:mod:`mergetune.core.checkpoints.sandbox`, numpy only: the API
never imports torch). At most ``PARSE_WORKERS`` parses run at once and ``PARSE_QUEUE`` more wait for
a slot; past that an upload is answered ``503`` with ``Retry-After`` instead of piling up threads.
The request thread only waits on the child, so the event loop (``/healthz``, other requests) stays
responsive while parses run.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from mergetune.api.errors import ServiceUnavailable
from mergetune.common.settings import Settings
from mergetune.core.checkpoints.ingest import IngestedCheckpoint
from mergetune.core.checkpoints.safe_pickle import ParseLimits
from mergetune.core.checkpoints.sandbox import SandboxLimits, SandboxRun, ingest_sandboxed
from mergetune.core.config import Method

log = logging.getLogger(__name__)


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
    def __init__(self, workers: int, queue: int, retry_after: int) -> None:
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._admitted = 0
        self._capacity = workers + queue
        self._retry_after = retry_after

    def parse(
        self, settings: Settings, path: str | os.PathLike, *, filename: str | None, method: Method | None
    ) -> IngestedCheckpoint:
        with self._lock:
            if self._admitted >= self._capacity:
                raise ServiceUnavailable(
                    "too many checkpoint uploads are being validated; retry shortly",
                    code="parser_busy",
                    param="file",
                    headers={"Retry-After": str(self._retry_after)},
                )
            self._admitted += 1
        try:
            with self._slots:
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
        finally:
            with self._lock:
                self._admitted -= 1


_pools: dict[tuple[int, int, int], ParsePool] = {}
_pools_lock = threading.Lock()


def parse_pool(settings: Settings) -> ParsePool:
    """The process-wide pool for these settings' sizes."""
    key = (settings.PARSE_WORKERS, settings.PARSE_QUEUE, settings.PARSE_RETRY_AFTER)
    with _pools_lock:
        pool = _pools.get(key)
        if pool is None:
            pool = _pools[key] = ParsePool(*key)
        return pool
