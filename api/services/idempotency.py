"""Idempotency-Key handling shared by the POST endpoints."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from mergetune.api.errors import Conflict, NotFound
from mergetune.common import repositories as repo

T = TypeVar("T")


def request_hash(endpoint: str, payload: Any) -> str:
    """sha256 of the endpoint and the canonical JSON of what the request asked for."""
    blob = json.dumps(
        {"endpoint": endpoint, "payload": payload}, sort_keys=True, separators=(",", ":"), default=str
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def replayed_id(session: Session, project_id: str, key: str | None, req_hash: str) -> str | None:
    """The id created by an earlier request with this key, None when the key is new.
    Raises 409 when the key was used with another request."""
    if not key:
        return None
    row = repo.get_idempotency_key(session, project_id, key)
    if row is None:
        return None
    if row.request_hash != req_hash:
        raise Conflict(
            "this Idempotency-Key was already used with a different request",
            code="idempotency_key_reused",
            param="Idempotency-Key",
        )
    return row.job_id or row.resource_id


def commit_or_replay(
    session: Session,
    project_id: str,
    key: str | None,
    req_hash: str,
    load: Callable[[str], T | None],
    *,
    job_id: str | None = None,
    resource_id: str | None = None,
) -> T | None:
    """Record the Idempotency-Key (when given) against the new row (``job_id`` or ``resource_id``) and
    commit: None on success. When a concurrent request with the same Idempotency-Key won the race
    (IntegrityError), roll back and return ``load(id)`` of what that request created; the
    IntegrityError propagates when the key names nothing or ``load`` finds nothing."""
    if key:
        repo.add_idempotency_key(session, project_id, key, req_hash, job_id=job_id, resource_id=resource_id)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = replayed_id(session, project_id, key, req_hash)
        if existing is None:
            raise
        replay = load(existing)
        if replay is None:
            raise
        return replay
    return None


def still_there(row: T | None, what: str) -> T:
    """The ``what`` an earlier request with this Idempotency-Key created; 404 when it was deleted since."""
    if row is None:
        raise NotFound(
            f"the {what} created with this Idempotency-Key no longer exists", param="Idempotency-Key"
        )
    return row


class KeyLocks:
    """One asyncio lock per (project, Idempotency-Key) while requests with that key are in flight, so
    that concurrent identical uploads are handled one after the other in this process: the first
    parses and stores, the others then replay its object without parsing the same bytes again (and
    without taking parse slots). The database's unique key still decides between processes."""

    def __init__(self) -> None:
        self._locks: dict[tuple[str, str], tuple[asyncio.Lock, int]] = {}

    @asynccontextmanager
    async def hold(self, project_id: str, key: str | None) -> AsyncIterator[None]:
        if not key:
            yield
            return
        k = (project_id, key)
        lock, users = self._locks.get(k, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[k] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[k]
            if users <= 1:
                del self._locks[k]
            else:
                self._locks[k] = (lock, users - 1)


def key_locks(state: Any) -> KeyLocks:
    """The app's :class:`KeyLocks` (``app.state``), made on first use."""
    locks: KeyLocks | None = getattr(state, "idempotency_key_locks", None)
    if locks is None:
        locks = state.idempotency_key_locks = KeyLocks()
    return locks


def _advisory_key(project_id: str, key: str) -> tuple[int, int]:
    digest = hashlib.sha256(f"idempotency\0{project_id}\0{key}".encode()).digest()
    return int.from_bytes(digest[:4], "big", signed=True), int.from_bytes(digest[4:8], "big", signed=True)


@asynccontextmanager
async def held_across_processes(bind: Any, project_id: str, key: str | None) -> AsyncIterator[None]:
    """On Postgres, a session advisory lock on (project, key) for the block, so that API processes
    (uvicorn ``--workers``, several containers) take one key's requests one at a time too. Polled with
    ``pg_try_advisory_lock`` so that waiting holds no thread; other databases (the embedded mode's
    SQLite, one process) need none."""
    if not key or bind is None or bind.dialect.name != "postgresql":
        yield
        return
    from sqlalchemy import text

    k1, k2 = _advisory_key(project_id, key)
    engine = getattr(bind, "engine", bind)
    conn = await run_in_threadpool(engine.connect)
    try:
        while not await run_in_threadpool(
            lambda: bool(
                conn.execute(text("SELECT pg_try_advisory_lock(:a, :b)"), {"a": k1, "b": k2}).scalar()
            )
        ):
            await asyncio.sleep(0.05)
        try:
            yield
        finally:
            await run_in_threadpool(
                lambda: conn.execute(text("SELECT pg_advisory_unlock(:a, :b)"), {"a": k1, "b": k2})
            )
    finally:
        await run_in_threadpool(conn.close)


async def create_once(
    state: Any, project_id: str, key: str | None, create: Callable[..., tuple[T, bool]], *args: Any, **kw: Any
) -> tuple[T, bool]:
    """``create(*args, idempotency_key=key, **kw)`` in the thread pool, holding the key's lock: concurrent
    requests with one Idempotency-Key go one at a time, the later ones replay the first's object (in this
    process by an asyncio lock, across processes by a Postgres advisory lock)."""
    bind = next((a.get_bind() for a in args if isinstance(a, Session)), None)
    async with key_locks(state).hold(project_id, key), held_across_processes(bind, project_id, key):
        return await run_in_threadpool(create, *args, idempotency_key=key, **kw)
