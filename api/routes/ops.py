"""Operations endpoints: liveness, readiness (DB, broker, free storage), Prometheus metrics. No auth."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from mergetune.api.deps import SettingsDep
from mergetune.api.errors import STORAGE_RETRY_AFTER, error_body, error_responses
from mergetune.api.schemas import Health
from mergetune.common.db import get_engine, ping
from mergetune.common.queue import ping_broker
from mergetune.common.settings import Settings
from mergetune.common.storage import free_bytes

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
    low = low_storage(settings)
    checks["storage"] = f"low: {low}" if low else "ok"
    if all(v == "ok" for v in checks.values()):
        return JSONResponse(Health(status="ok", checks=checks).model_dump())
    failed = ", ".join(k for k, v in checks.items() if v != "ok")
    message = f"unavailable: {failed}" + (f" ({low})" if low else "")
    body = error_body("not_ready", message, None)
    return JSONResponse(
        body, status_code=503, headers={"Retry-After": str(STORAGE_RETRY_AFTER)} if low else None
    )


def low_storage(settings: Settings) -> str | None:
    """What is short of STORAGE_MIN_FREE_BYTES among the folders this process writes uploads to (the
    scratch folder; the artifact store when it is a local directory), or None."""
    folders = {"scratch folder": settings.tmp_dir}
    url = settings.ARTIFACT_URL or settings.ARTIFACT_ROOT
    if url and not url.startswith("s3://"):
        folders["artifact store"] = Path(url.removeprefix("file://"))
    short = []
    for name, folder in folders.items():
        free = free_bytes(folder)
        if free is not None and free < settings.STORAGE_MIN_FREE_BYTES:
            short.append(f"{name} has {free} bytes free, under {settings.STORAGE_MIN_FREE_BYTES}")
    return "; ".join(short) or None


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    registry = request.app.state.metrics.registry
    data = await run_in_threadpool(generate_latest, registry)
    return Response(content=data, media_type=CONTENT_TYPE_LATEST)
