"""The FastAPI application factory.

Run with ``uvicorn --factory mergetune.api.main:create_app`` (what ``mergetune serve`` does) or
``uvicorn mergetune.api.main:app`` (built lazily from the environment on first access).

At start-up the app refuses to serve an unmigrated database (:class:`mergetune.common.db.DatabaseNotMigrated`
with a message naming the current and the needed revision).
"""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from mergetune.api import dashboard
from mergetune.api.errors import install_error_handlers
from mergetune.api.hygiene import InputHygieneMiddleware
from mergetune.api.metrics import LatencyMiddleware, Metrics
from mergetune.api.routes import checkpoints, datasets, jobs, ops, sweeps, usage, webhooks, weights
from mergetune.common.db import DatabaseNotMigrated, check_migrated, get_engine
from mergetune.common.settings import Settings, get_settings

log = logging.getLogger(__name__)

API_DESCRIPTION = """MergeTune recovery service: upload a fine-tuned CLIP prompt/head checkpoint, register a
dataset, run a recovery job, download the recovered prompts and report.

Every error answers `{"error": {"code", "message", "param"}}`; `param` names the offending field."""


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        settings.ensure_dirs()
        if settings.REQUIRE_MIGRATED:
            try:
                await run_in_threadpool(check_migrated, get_engine(settings.DATABASE_URL))
            except DatabaseNotMigrated as exc:
                log.critical("refusing to start: %s", exc)
                raise
        # What start-up built (modules, the app, its routes and models) lives as long as the process:
        # kept out of the collector's full passes, which would walk it again and again under load.
        gc.freeze()
        yield

    app = FastAPI(
        title="MergeTune recovery service",
        version="1.0.0",
        description=API_DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = Metrics(settings.DATABASE_URL)
    install_error_handlers(app)
    app.add_middleware(LatencyMiddleware, metrics=app.state.metrics)
    app.add_middleware(InputHygieneMiddleware)  # outermost: control characters never reach a route

    app.include_router(jobs.router)  # first: routes are matched in order, and jobs are polled most
    app.include_router(ops.router)
    app.include_router(checkpoints.router)
    app.include_router(datasets.router)
    app.include_router(sweeps.router)
    app.include_router(webhooks.router)
    app.include_router(usage.router)
    app.include_router(weights.router)
    app.include_router(dashboard.router)  # server-rendered MLOps pages under /
    return app


def __getattr__(name: str) -> Any:
    """``mergetune.api.main:app`` for plain ``uvicorn mergetune.api.main:app`` / gunicorn: built from the environment."""
    if name == "app":
        application = create_app()
        globals()["app"] = application
        return application
    raise AttributeError(name)
