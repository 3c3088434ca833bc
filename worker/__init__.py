"""The Celery worker: thin tasks (``worker.tasks``) -> the job pipeline (``worker.pipeline``) -> core."""
