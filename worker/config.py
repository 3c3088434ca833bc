"""The worker's Celery configuration (see worker/celery_app.py for why each setting). Importing this module
builds no app and touches no settings, so tests and tools can inspect the configuration."""

from __future__ import annotations

from typing import Any

from mergetune.common.queue import celery_config
from mergetune.common.settings import Settings
from mergetune.common.tasks import JOBS_QUEUE


def worker_config(settings: Settings) -> dict[str, Any]:
    conf = celery_config(settings)
    conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure_or_timeout=True,  # a job that failed is recorded in Postgres; do not loop
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.WORKER_CONCURRENCY,
        worker_pool="solo" if settings.WORKER_CONCURRENCY == 1 else "prefork",
        worker_max_tasks_per_child=None,  # keep the backbone cache warm
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=True,
        worker_redirect_stdouts=False,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_track_started=False,
        task_time_limit=None,
        task_soft_time_limit=None,
        task_default_queue=JOBS_QUEUE,
        task_queues=None,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        worker_send_task_events=False,
        task_send_sent_event=False,
    )
    opts = dict(conf.get("broker_transport_options") or {})
    if settings.BROKER_URL.startswith(("redis://", "rediss://", "sqs://", "sentinel://")):
        opts["visibility_timeout"] = settings.VISIBILITY_TIMEOUT
    if settings.BROKER_URL.startswith(("redis://", "rediss://", "sentinel://")):
        # kombu sweeps for unacked messages older than the visibility timeout every interval x throttle
        # seconds (default 10 x 10); once a minute is cheap (one ZRANGE) and bounds the extra delay.
        opts.setdefault("unacked_restore_interval", 60)
        opts.setdefault("unacked_restore_throttle", 1)
    conf["broker_transport_options"] = opts
    return conf
