"""Celery tasks: thin wrappers that take an id and hand over to :mod:`worker.pipeline`."""

from __future__ import annotations

import logging
from typing import Any

from celery import shared_task

from common.tasks import RUN_JOB

logger = logging.getLogger(__name__)


@shared_task(name=RUN_JOB, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def run_job(self: Any, job_id: str) -> str:
    from worker.pipeline import run_job as run

    settings = self.app.conf.mergetune_settings
    hostname = self.request.hostname or "worker@local"
    return run(job_id, settings=settings, hostname=hostname)
