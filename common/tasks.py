"""Celery task names and queue names: the only coupling between the API (producer) and the worker.

The API never imports ``worker``; it sends tasks by name (see :mod:`mergetune.common.queue`).
"""

from __future__ import annotations

#: Runs (or resumes) one recovery job. Single positional argument: the job id (``job_...``).
RUN_JOB = "mergetune.run_job"

#: The queue jobs are sent to and the worker consumes (``celery worker -Q``; also task_default_queue).
JOBS_QUEUE = "mergetune"
