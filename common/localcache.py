"""Short-lived per-process caches of database reads that every request would otherwise repeat.

A :class:`TTLCache` entry lives ``ttl`` seconds (monotonic clock), and every entry of every cache is
dropped as soon as a session of this process commits a write (an ORM flush, or an INSERT, UPDATE or
DELETE run through a session): a change made in this process is seen by its next read at once, a change
made by another process (another API process, a worker, ``mergetune token revoke``) within ``ttl``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import ORMExecuteState, Session, UOWTransaction

_WROTE = "mergetune.localcache.wrote"
_generation = 0
_lock = threading.Lock()


def generation() -> int:
    """Bumped by every committed write of this process (and by :func:`invalidate_all`)."""
    return _generation


def invalidate_all() -> None:
    """Drop every cached entry of this process now."""
    global _generation
    with _lock:
        _generation += 1


class TTLCache:
    """A bounded map whose entries expire after ``ttl`` seconds or at this process's next write."""

    def __init__(self, ttl: float, maxsize: int = 4096) -> None:
        self.ttl, self.maxsize = ttl, maxsize
        self._data: dict[Hashable, tuple[float, int, Any]] = {}

    def get(self, key: Hashable) -> Any | None:
        """The live value for ``key``, or None."""
        hit = self._data.get(key)
        if hit is None:
            return None
        at, gen, value = hit
        if gen != _generation or time.monotonic() - at >= self.ttl:
            self._data.pop(key, None)
            return None
        return value

    def put(self, key: Hashable, value: Any, *, generation: int | None = None) -> None:
        """Keep ``value``; ``generation`` is :func:`generation` read before the value was computed, so
        that a value read while this process committed a write is not kept past that write."""
        if len(self._data) >= self.maxsize:
            self._data.clear()
        self._data[key] = (time.monotonic(), _generation if generation is None else generation, value)

    def pop(self, key: Hashable) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()


@event.listens_for(Session, "after_flush")
def _flushed(session: Session, _flush: UOWTransaction) -> None:
    session.info[_WROTE] = True


@event.listens_for(Session, "do_orm_execute")
def _executed(state: ORMExecuteState) -> None:
    if state.is_update or state.is_delete or state.is_insert:
        state.session.info[_WROTE] = True


@event.listens_for(Session, "after_commit")
def _committed(session: Session) -> None:
    # The mark outlives a rollback (a savepoint's rollback keeps the outer transaction's writes): at
    # worst one commit more drops the caches.
    if session.info.pop(_WROTE, False):
        invalidate_all()
