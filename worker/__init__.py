"""The Celery worker: thin tasks (``mergetune.worker.tasks``) -> the job pipeline (``mergetune.worker.pipeline``) -> core."""
