"""Dependencies, declared once as ``Annotated`` aliases: ``SettingsDep``, ``SessionDep``,
``PrincipalDep``, ``StoreDep``."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Annotated

from fastapi import Depends, Header, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from mergetune.api.errors import Unauthorized
from mergetune.common import repositories as repo
from mergetune.common.db import get_sessionmaker
from mergetune.common.models import utcnow
from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactStore, get_store


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


#: Requests holding a database session at once (the others wait, without a thread, in the event loop).
#: Below both the engine's pool (10 + 30 overflow, mergetune.common.db.make_engine) and the 40 request threads,
#: leaving room for /readyz and /metrics: a request that holds a connection can then always get a
#: thread, and a thread that needs a connection always gets one, so a burst of requests can neither
#: exhaust the pool nor deadlock it against the thread pool (both ended in 500s after 30 s).
MAX_DB_SESSIONS = 32


def _session_slots(request: Request) -> asyncio.Semaphore:
    slots: asyncio.Semaphore | None = getattr(request.app.state, "db_session_slots", None)
    if slots is None:
        slots = request.app.state.db_session_slots = asyncio.Semaphore(MAX_DB_SESSIONS)
    return slots


def _close(session: Session) -> None:
    try:
        session.rollback()
    finally:
        session.close()


async def get_session(request: Request, settings: SettingsDep) -> AsyncIterator[Session]:
    """One session per request. Write routes commit explicitly (before enqueueing or responding);
    whatever is left uncommitted is rolled back here. At most MAX_DB_SESSIONS requests hold one."""
    async with _session_slots(request):
        session = get_sessionmaker(settings.DATABASE_URL)()
        try:
            yield session
        finally:
            await run_in_threadpool(_close, session)


SessionDep = Annotated[Session, Depends(get_session)]


def get_artifact_store(settings: SettingsDep) -> ArtifactStore:
    return get_store(settings)


StoreDep = Annotated[ArtifactStore, Depends(get_artifact_store)]


@dataclass(frozen=True)
class Principal:
    project_id: str
    project_name: str
    token_id: str


_TOUCH_EVERY = timedelta(minutes=1)


def get_principal(
    session: SessionDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    if not authorization:
        raise Unauthorized("missing Authorization: Bearer <token> header", code="missing_token")
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthorized("Authorization header must be `Bearer <token>`", code="invalid_token")
    found = repo.find_token(session, secret) if len(secret) <= 512 else None
    if found is None:
        raise Unauthorized("invalid or revoked token", code="invalid_token")
    token, project_name = found
    refusal = repo.token_refusal(token)
    if refusal == "token_revoked":
        raise Unauthorized(f"token {token.prefix}... was revoked", code=refusal)
    if refusal == "token_expired":
        raise Unauthorized(f"token {token.prefix}... expired; create a new one", code=refusal)
    now = utcnow()
    if token.last_used_at is None or now - token.last_used_at > _TOUCH_EVERY:
        repo.touch_token(session, token.id, now, every=_TOUCH_EVERY)  # a conditional UPDATE
    # End the authentication transaction: commits the touch and hands the connection back to the pool
    # while the request goes on (an upload streams its body before it needs the database again).
    session.commit()
    return Principal(project_id=token.project_id, project_name=project_name, token_id=token.id)


PrincipalDep = Annotated[Principal, Depends(get_principal)]


@dataclass(frozen=True)
class PageParams:
    limit: int
    after: str | None


def get_page_params(
    limit: Annotated[int, Query(ge=1, le=100, description="Page size (1..100)")] = 20,
    after: Annotated[
        str | None, Query(max_length=64, description="Cursor: `next_cursor` of the previous page")
    ] = None,
) -> PageParams:
    return PageParams(limit=limit, after=after)


PageDep = Annotated[PageParams, Depends(get_page_params)]

IdempotencyKeyHeader = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key", max_length=255, description="Same key + same body returns the same object"
    ),
]
