"""Idempotency-Key handling shared by the POST endpoints."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.errors import Conflict
from common import repositories as repo

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
    session: Session, project_id: str, key: str | None, req_hash: str, load: Callable[[str], T | None]
) -> T | None:
    """Commit the new row: None on success. When a concurrent request with the same Idempotency-Key won
    the race (IntegrityError), roll back and return ``load(id)`` of what that request created; the
    IntegrityError propagates when the key names nothing or ``load`` finds nothing."""
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
