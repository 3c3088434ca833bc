"""The worker's Celery app, configured for long (minutes to hours) GPU jobs.

Start one worker process per GPU, each pinned with ``CUDA_VISIBLE_DEVICES`` (torch then sees that GPU as
``cuda:0``) and a unique node name::

    CUDA_VISIBLE_DEVICES=0 celery -A mergetune.worker.celery_app worker --pool solo -c 1 -n gpu0@%h -Q mergetune
    CUDA_VISIBLE_DEVICES=1 celery -A mergetune.worker.celery_app worker --pool solo -c 1 -n gpu1@%h -Q mergetune

or ``python -m worker`` (same thing with the settings below). Why these settings:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: the message is acknowledged only when the job
  function returns, so a worker that dies mid-job (OOM kill, node loss, SIGKILL) leaves the message
  unacknowledged and the broker redelivers it; the pipeline then resumes from the last saved epoch state.
  The pipeline is idempotent (a finished job is never rerun; a job owned by a live worker is skipped), so a
  redelivery can never produce a second set of artifacts.
- ``worker_prefetch_multiplier = 1`` and concurrency 1: a worker reserves only the job it runs; queued
  jobs stay in the broker for whichever GPU frees up first (prefetching hour-long jobs starves others).
- ``broker_transport_options.visibility_timeout`` (Redis/SQS) = ``MERGETUNE_VISIBILITY_TIMEOUT``
  (default 24 h), longer than the longest job: a message unacknowledged for longer is redelivered,
  so a shorter timeout would start a second copy of a job that is still running (the pipeline would skip
  it, but the slot is wasted). Stale jobs are found faster by the heartbeat reaper and the reconciler
  (``mergetune.worker.reconcile``: dead or stalled owners, messages the broker lost), which also removes a killed
  delivery's leftover unacknowledged entry once its job finished or was requeued.
- A job is handed back (rejected with requeue) when the database stays unreachable past
  ``MERGETUNE_DB_RETRY_SECONDS``: a message is acknowledged only after the state it reports is committed.
- ``worker_cancel_long_running_tasks_on_connection_loss``: with late acks, a broker connection loss makes
  the broker redeliver the message anyway; cancelling the local copy avoids two runs.
- No result backend (``task_ignore_result``): Postgres is the record of truth for status, progress,
  metrics and artifacts.
- The ``solo`` pool by default: the job runs in the worker's main process, which keeps CUDA out of forked
  children and keeps the backbone cache alive between jobs; heartbeats come from a thread.
"""

from __future__ import annotations

from celery import Celery

from mergetune.common.settings import Settings, get_settings
from mergetune.worker.config import worker_config


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("mergetune-worker", set_as_current=True)
    app.conf.update(worker_config(settings))
    app.conf.mergetune_settings = settings  # read back by the tasks and signal handlers
    # Register the tasks and signal handlers.
    import mergetune.worker.signals  # noqa: F401
    import mergetune.worker.tasks  # noqa: F401

    return app


app = create_app()
celery = app  # `celery -A mergetune.worker.celery_app` finds either name
