"""Worker lifecycle: torch threads, the heartbeat thread and the start-up reaper."""

from __future__ import annotations

import logging
from typing import Any

from celery.signals import worker_init, worker_ready, worker_shutdown

from mergetune.common.queue import enqueue_job

logger = logging.getLogger(__name__)

_heartbeat: Any = None


@worker_init.connect
def _on_worker_init(sender: Any = None, **_: Any) -> None:
    """Refuse to start on a database that is not at the Alembic head (like the API does)."""
    from mergetune.common.db import DatabaseNotMigrated, check_migrated, get_engine

    settings = sender.app.conf.mergetune_settings
    try:
        check_migrated(get_engine(settings.DATABASE_URL))
    except DatabaseNotMigrated as exc:
        logger.critical("refusing to start: %s", exc)
        raise SystemExit(f"refusing to start: {exc}") from None  # BaseException: not swallowed by Celery


@worker_ready.connect
def _on_worker_ready(sender: Any = None, **_: Any) -> None:
    global _heartbeat
    from mergetune.worker.backbones import weights_report
    from mergetune.worker.heartbeat import Heartbeat, node_info

    settings = sender.app.conf.mergetune_settings
    hostname = sender.hostname
    _preload()
    try:
        from mergetune.worker.backbones import resolve_device

        device = resolve_device(settings.DEVICE)
    except ImportError:
        device = settings.DEVICE
    _heartbeat = Heartbeat(
        settings.DATABASE_URL,
        hostname,
        info=node_info(device),
        enqueue=lambda job_id: enqueue_job(settings, job_id),
        report=lambda: weights_report(settings),
    )
    _heartbeat.start()
    logger.info("worker %s ready (device=%s)", hostname, device)


def _preload() -> None:
    """Import torch and the core now, not in the first job (seconds on a cold cache)."""
    try:
        import mergetune.core.checkpoints.export  # noqa: F401
        import mergetune.core.data  # noqa: F401
        import mergetune.core.method.recovery  # noqa: F401
        import mergetune.worker.pipeline  # noqa: F401
    except ImportError:  # a partial install still starts; the job reports the import error
        logger.exception("could not preload the core")


@worker_shutdown.connect
def _on_worker_shutdown(**_: Any) -> None:
    if _heartbeat is not None:
        _heartbeat.stop()
