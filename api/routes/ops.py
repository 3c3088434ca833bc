"""Operations endpoints: liveness, readiness (DB + broker), Prometheus metrics. No auth."""

from __future__ import annotations

import asyncio
import logging

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from mergetune.api.deps import SettingsDep
from mergetune.api.errors import error_body, error_responses
from mergetune.api.schemas import Health
from mergetune.common.db import get_engine, ping
from mergetune.common.queue import ping_broker

log = logging.getLogger(__name__)

router = APIRouter(tags=["operations"])

READY_TIMEOUT_S = 3.0


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=error_responses(503))
async def readyz(settings: SettingsDep) -> Response:
    checks: dict[str, str] = {}

    async def check(name: str, fn: object) -> None:
        try:
            await asyncio.wait_for(run_in_threadpool(fn), timeout=READY_TIMEOUT_S)  # type: ignore[arg-type]
            checks[name] = "ok"
        except Exception as exc:
            log.warning("readyz: %s unavailable: %s", name, exc)
            checks[name] = f"unavailable: {type(exc).__name__}"

    await asyncio.gather(
        check("database", lambda: ping(get_engine(settings.DATABASE_URL))),
        check("broker", lambda: ping_broker(settings, timeout=READY_TIMEOUT_S)),
    )
    if all(v == "ok" for v in checks.values()):
        return JSONResponse(Health(status="ok", checks=checks).model_dump())
    failed = ", ".join(k for k, v in checks.items() if v != "ok")
    body = error_body("not_ready", f"unavailable: {failed}", None)
    return JSONResponse(body, status_code=503)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    data = await run_in_threadpool(generate_latest, registry)
    return Response(content=data, media_type=CONTENT_TYPE_LATEST)
