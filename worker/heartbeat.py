"""A daemon thread that writes this worker node's heartbeat row every few seconds and, every
``REAP_EVERY`` beats, requeues jobs whose worker died (see :func:`mergetune.worker.jobdb.requeue_orphans`).

It runs beside the job (the solo pool executes the job on the main thread), so a node that is busy with
an hour-long epoch still proves it is alive; a SIGKILLed node simply stops beating."""

from __future__ import annotations

import logging
import os
import platform
import socket
import threading
from collections.abc import Callable
from typing import Any

from mergetune.worker import jobdb

logger = logging.getLogger(__name__)

REAP_EVERY = 6  # beats (30 s)


def node_info(device: str | None = None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "python": platform.python_version(),
    }
    if device:
        info["device"] = device
    return info


class Heartbeat:
    def __init__(
        self,
        url: str,
        hostname: str,
        *,
        info: dict[str, Any] | None = None,
        enqueue: Callable[[str], None] | None = None,
        interval: float = jobdb.HEARTBEAT_INTERVAL,
        report: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.url, self.hostname, self.info, self.enqueue, self.interval = (
            url,
            hostname,
            info,
            enqueue,
            interval,
        )
        #: Refreshed every REAP_EVERY beats into ``info["weights"]`` (what this node can load).
        self.report = report
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        try:
            jobdb.heartbeat(self.url, self.hostname, self._info(), reset_job=True)
            self.reap()
        except Exception:  # noqa: BLE001 - the thread below keeps trying
            logger.exception("first heartbeat failed")
        self._thread = threading.Thread(target=self._run, name="mergetune-heartbeat", daemon=True)
        self._thread.start()

    def _info(self) -> dict[str, Any] | None:
        if self.report is None:
            return self.info
        return {**(self.info or {}), "weights": self.report()}

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        if self.report is not None:  # a stopped node no longer vouches for any weights
            try:
                jobdb.heartbeat(self.url, self.hostname, dict(self.info or {}))
            except Exception:  # noqa: BLE001 - shutting down anyway
                logger.warning("could not withdraw the weights report", exc_info=True)

    def reap(self) -> list[str]:
        if self.enqueue is None:
            return []
        try:
            ids = jobdb.requeue_orphans(self.url)
        except Exception:  # noqa: BLE001 - the reaper must never take the worker down
            logger.exception("reaper failed")
            return []
        for job_id in ids:
            logger.warning("requeueing orphaned job %s", job_id)
            self.enqueue(job_id)
        return ids

    def _run(self) -> None:
        beats = 0
        while not self._stop.wait(self.interval):
            beats += 1
            release = dict(jobdb.HANDED_BACK)  # jobs handed back while the database was down
            try:
                refresh = self.report is not None and beats % REAP_EVERY == 0
                jobdb.heartbeat(self.url, self.hostname, self._info() if refresh else None, release=release)
            except Exception:  # noqa: BLE001 - a DB blip must not kill the thread
                logger.warning("heartbeat failed", exc_info=True)
            else:
                for job_id, attempt in release.items():  # released, or claimed again: done either way
                    if jobdb.HANDED_BACK.get(job_id) == attempt:
                        del jobdb.HANDED_BACK[job_id]
            if beats % REAP_EVERY == 0:
                self.reap()
