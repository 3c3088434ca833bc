"""``python -m worker [extra celery worker options]``: one worker node for one GPU (or the CPU).

Equivalent to ``celery -A mergetune.worker.celery_app worker --pool solo -c 1 -Q mergetune``. Pin a GPU with
``CUDA_VISIBLE_DEVICES=N`` and give each node a unique name (``-n gpuN@%h``); the settings come from
``MERGETUNE_*`` environment variables (see mergetune.common.settings).
"""

from __future__ import annotations

import sys

from mergetune.common.settings import get_settings
from mergetune.common.tasks import JOBS_QUEUE


def main(argv: list[str] | None = None) -> None:
    settings = get_settings()
    from mergetune.worker.celery_app import app

    pool = "solo" if settings.WORKER_CONCURRENCY == 1 else "prefork"
    args = [
        "worker",
        "--pool",
        pool,
        "--concurrency",
        str(settings.WORKER_CONCURRENCY),
        "--queues",
        JOBS_QUEUE,
        "--loglevel",
        settings.LOG_LEVEL,
        "--without-gossip",
        "--without-mingle",
        *(sys.argv[1:] if argv is None else argv),
    ]
    app.worker_main(args)


if __name__ == "__main__":
    main()
