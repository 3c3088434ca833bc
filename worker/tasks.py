"""Celery tasks: thin wrappers that take an id and hand over to :mod:`mergetune.worker.pipeline`.

Acknowledgement follows durability: with late acks the message is acknowledged only when the task
returns, and it returns only after the state it reports (succeeded, failed, cancelled, skipped) is
committed in Postgres. When the database stays unreachable past the worker's retry budget
(``MERGETUNE_DB_RETRY_SECONDS``), or a write finds the disk full, the task rejects the message with
``requeue=True``: the broker hands the job back and a later delivery resumes it from its last epoch
state."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import shared_task
from celery.exceptions import Reject

from mergetune.common.db import is_unavailable
from mergetune.common.storage import is_storage_full
from mergetune.common.tasks import RUN_JOB

logger = logging.getLogger(__name__)

#: Pause before handing a job back, so a worker whose database is down does not spin on redeliveries.
REQUEUE_PAUSE = 1.0
#: Pause before handing back a job whose disk is full: space rarely returns within a second.
STORAGE_REQUEUE_PAUSE = 10.0


@shared_task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self: Any, job_id: str) -> str:
    from mergetune.worker.pipeline import run_job as run

    settings = self.app.conf.mergetune_settings
    hostname = self.request.hostname or "worker@local"
    try:
        return run(job_id, settings=settings, hostname=hostname)
    except Exception as exc:
        if is_storage_full(exc):  # the job recorded why; it resumes from its epoch state later
            logger.error("job %s handed back to the broker: storage full (%s)", job_id, exc)
            time.sleep(STORAGE_REQUEUE_PAUSE)
            raise Reject(f"storage full: {exc}", requeue=True) from exc
        if not is_unavailable(exc):
            raise
        logger.error("job %s handed back to the broker: database unavailable (%s)", job_id, exc)
        time.sleep(REQUEUE_PAUSE)
        raise Reject(f"database unavailable: {exc}", requeue=True) from exc
