"""The Celery side both processes share: broker configuration and a tiny producer.

The API enqueues jobs *by name* through :func:`enqueue_job` after its transaction committed; it never
imports ``worker`` (nor torch). The worker builds its Celery app from :func:`celery_config` so that
producer and consumer agree on broker URL, transport options and queue.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from mergetune.common.fsqueue import TRANSPORT as FS_TRANSPORT
from mergetune.common.settings import Settings
from mergetune.common.tasks import JOBS_QUEUE, RUN_JOB

log = logging.getLogger(__name__)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery configuration shared by the producer (API) and the worker app."""
    settings.ensure_dirs()
    return {
        "broker_url": settings.BROKER_URL,
        "broker_transport_options": settings.broker_transport_options(),
        # The filesystem queue writes each message under a hidden name and renames it into place.
        "broker_transport": FS_TRANSPORT if settings.BROKER_URL.startswith("filesystem://") else None,
        "broker_connection_retry_on_startup": True,
        "task_default_queue": JOBS_QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        # Postgres is the record of truth: no result backend.
        "result_backend": None,
        "task_ignore_result": True,
    }


_APPS: dict[str, Celery] = {}


def get_producer(settings: Settings) -> Celery:
    """A process-wide producer app per broker (Settings is not hashable; key on what matters)."""
    key = f"{settings.BROKER_URL}|{settings.HOME.resolve()}"
    app = _APPS.get(key)
    if app is None:
        app = Celery("mergetune-producer", set_as_current=False)
        app.conf.update(celery_config(settings))
        _APPS[key] = app
    return app


def enqueue_job(settings: Settings, job_id: str) -> None:
    """Send ``RUN_JOB(job_id)`` to the jobs queue. Call only after the job row is committed."""
    get_producer(settings).send_task(RUN_JOB, args=[job_id], queue=JOBS_QUEUE)
    log.info("enqueued job", extra={"job_id": job_id})


def ping_broker(settings: Settings, timeout: float = 2.0) -> None:
    """Raise if the broker cannot be reached within ``timeout`` seconds."""
    app = get_producer(settings)
    with app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=timeout)
