"""Worker lifecycle: torch threads, the heartbeat thread and the start-up reaper."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_ready, worker_shutdown

from common.queue import enqueue_job

logger = logging.getLogger(__name__)

_heartbeat: Any = None


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    from worker.heartbeat import Heartbeat, node_info

    settings = sender.app.conf.mergetune_settings
    hostname = sender.hostname
    _heartbeat = Heartbeat(
        settings.DATABASE_URL,
        hostname,
        info=node_info(settings.DEVICE),
        enqueue=lambda job_id: enqueue_job(settings, job_id),
    )
    _heartbeat.start()
    logger.info("worker %s ready (device=%s)", hostname, settings.DEVICE)


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
