"""Dependencies, declared once as ``Annotated`` aliases: ``SettingsDep``, ``SessionDep``,
``PrincipalDep``, ``StoreDep``."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import Depends, Header, Query, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from mergetune.api.errors import Unauthorized
from mergetune.common import repositories as repo
from mergetune.common.db import get_sessionmaker
from mergetune.common.localcache import TTLCache, generation
from mergetune.common.models import utcnow
from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactStore, get_store


async def get_app_settings(request: Request) -> Settings:
    """The app's settings (``async``: FastAPI would run a plain function in a worker thread)."""
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
            if session.in_transaction():  # a round trip (ROLLBACK): not in the event loop
                await run_in_threadpool(_close, session)
            else:  # nothing to end (no connection held, or the route ended its transaction)
                session.close()


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

#: Seconds an API process reuses a token it authenticated (its project, expiry and last-use time) without
#: reading the token row again. A revocation (``mergetune token revoke``) is refused by the process that
#: made it at once and by every other API process within this time; an expiry is checked on every request.
AUTH_CACHE_SECONDS = 5.0

_principals = TTLCache(AUTH_CACHE_SECONDS, maxsize=10_000)
_loading: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Any, asyncio.Future[None]]] = (
    weakref.WeakKeyDictionary()
)


@dataclass(frozen=True)
class _Known:
    principal: Principal
    expires_at: datetime | None
    touched: datetime  # last_used_at as stored (touched again once older than _TOUCH_EVERY)


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("missing Authorization: Bearer <token> header", code="missing_token")
    scheme, _, secret = authorization.partition(" ")
    secret = secret.strip()
    if scheme.lower() != "bearer" or not secret:
        raise Unauthorized("Authorization header must be `Bearer <token>`", code="invalid_token")
    if len(secret) > 512:
        raise Unauthorized("invalid or revoked token", code="invalid_token")
    return secret


def _cache_key(session: Session, secret: str) -> tuple[Any, str]:
    return session.get_bind(), repo.hash_token(secret)


def _cached(key: tuple[Any, str]) -> Principal | None:
    """The principal this process authenticated for the token within AUTH_CACHE_SECONDS, while it is
    not expired and its last-use time needs no update."""
    known: _Known | None = _principals.get(key)
    if known is None:
        return None
    now = utcnow()
    if (known.expires_at is not None and known.expires_at <= now) or now - known.touched > _TOUCH_EVERY:
        return None
    return known.principal


def _authenticate(session: Session, secret: str, key: tuple[Any, str]) -> Principal:
    """The token row read, checked and touched; kept for AUTH_CACHE_SECONDS unless this process
    wrote meanwhile (the touch included: the next request reads it again and keeps it)."""
    before = generation()
    found = repo.find_token(session, secret)
    if found is None:
        raise Unauthorized("invalid or revoked token", code="invalid_token")
    token, project_name = found
    refusal = repo.token_refusal(token)
    if refusal == "token_revoked":
        raise Unauthorized(f"token {token.prefix}... was revoked", code=refusal)
    if refusal == "token_expired":
        raise Unauthorized(f"token {token.prefix}... expired; create a new one", code=refusal)
    now = utcnow()
    touched = token.last_used_at
    if touched is None or now - touched > _TOUCH_EVERY:
        repo.touch_token(session, token.id, now, every=_TOUCH_EVERY)  # a conditional UPDATE
        touched = now
    # End the authentication transaction: commits the touch and hands the connection back to the pool
    # while the request goes on (an upload streams its body before it needs the database again).
    session.commit()
    principal = Principal(project_id=token.project_id, project_name=project_name, token_id=token.id)
    _principals.put(key, _Known(principal, token.expires_at, touched), generation=before)
    return principal


def get_principal(
    session: SessionDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """The token's project (401 when the header is missing, malformed, unknown, revoked or expired)."""
    secret = _bearer(authorization)
    key = _cache_key(session, secret)
    return _cached(key) or _authenticate(session, secret, key)


async def principal_of(authorization: str | None, session: Session) -> Principal:
    """The token's project, for async code: a token this process knows is answered in the event loop
    (the session is not used); reading the token row takes a thread."""
    secret = _bearer(authorization)
    key = _cache_key(session, secret)
    known = _cached(key)
    if known is not None:
        return known
    # One read per token at a time: the requests that arrive meanwhile wait for it (without a thread
    # or a connection) instead of all reading the same row when its cached entry expires.
    loading = _loading.setdefault(asyncio.get_running_loop(), {})
    pending = loading.get(key)
    if pending is not None:
        await asyncio.shield(pending)
        known = _cached(key)
        if known is not None:
            return known
    done = loading[key] = asyncio.get_running_loop().create_future()
    try:
        return await run_in_threadpool(_authenticate, session, secret, key)
    finally:
        if loading.get(key) is done:
            del loading[key]
        done.set_result(None)


async def require_principal(
    session: SessionDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> Principal:
    """:func:`get_principal` as the routes' dependency (:func:`principal_of`)."""
    return await principal_of(authorization, session)


PrincipalDep = Annotated[Principal, Depends(require_principal)]


@dataclass(frozen=True)
class PageParams:
    limit: int
    after: str | None


async def get_page_params(
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
