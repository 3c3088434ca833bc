"""A valid upload is never stored as a rejected file because the server is busy: when the database
cannot give the parse its place (connection refused, pool exhausted), the upload is answered with the
database's 503 and Retry-After and nothing of it is kept; the same file is accepted once the database
answers. And the upload holds no database connection of its own while it waits for its parse."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.exc import OperationalError

from mergetune.api.services.checkpoints import create_checkpoint
from mergetune.api.uploads import ReceivedUpload
from mergetune.common import repositories as repo
from mergetune.common.db import get_sessionmaker
from mergetune.common.models import Checkpoint
from mergetune.common.storage import LocalStore

#: Nothing listens on port 9 (discard) here: connecting is refused at once.
UNREACHABLE = "postgresql+psycopg://postgres@127.0.0.1:9/mergetune"


def _upload(tmp_path: Path, data: bytes) -> ReceivedUpload:
    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    return ReceivedUpload(
        path=path,
        filename="prompts.pth.tar",
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        fields={"name": "busy"},
    )


def test_a_database_outage_during_the_parse_is_a_503_not_a_rejected_file(
    settings: Any, ctx_and_bytes: tuple[Any, bytes], tmp_path: Path
) -> None:
    store = LocalStore(settings.ARTIFACT_URL)
    upload = _upload(tmp_path, ctx_and_bytes[1])
    with get_sessionmaker(settings.DATABASE_URL)() as session:
        project_id = repo.get_or_create_project(session, f"busy-{tmp_path.name}").id
        session.commit()
        # The parse's place in the deployment is taken on its own connection: here it cannot connect.
        parse_db_down = settings.model_copy(update={"DATABASE_URL": UNREACHABLE})
        with pytest.raises(OperationalError):  # the app answers it 503 database_unavailable + Retry-After
            create_checkpoint(session, parse_db_down, store, project_id, upload, idempotency_key="k-busy")
        session.rollback()
        count = select(func.count()).select_from(Checkpoint).where(Checkpoint.project_id == project_id)
        assert session.scalar(count) == 0  # no "rejected" checkpoint for a file nobody looked at
        assert repo.get_idempotency_key(session, project_id, "k-busy") is None  # the retry is a new try
        stored = Path(settings.ARTIFACT_URL) / "checkpoints"
        assert not stored.exists() or list(stored.iterdir()) == []

        # The retry with the same key, once the database answers: accepted.
        ckpt, created = create_checkpoint(
            session, settings, store, project_id, upload, idempotency_key="k-busy"
        )
        assert (created, ckpt.status, ckpt.error) == (True, "ready", None)
        assert session.scalar(count) == 1


def test_the_upload_holds_no_connection_while_it_is_parsed(
    settings: Any, ctx_and_bytes: tuple[Any, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mergetune.api import parse_pool as pp

    store = LocalStore(settings.ARTIFACT_URL)
    seen: list[bool] = []
    real_parse = pp.ParsePool.parse

    def parse_watching(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(session.in_transaction())  # the request's own transaction (and connection)
        return real_parse(self, *args, **kwargs)

    monkeypatch.setattr(pp.ParsePool, "parse", parse_watching)
    with get_sessionmaker(settings.DATABASE_URL)() as session:
        project_id = repo.get_or_create_project(session, f"idle-{tmp_path.name}").id
        session.commit()
        ckpt, created = create_checkpoint(
            session,
            settings,
            store,
            project_id,
            _upload(tmp_path, ctx_and_bytes[1]),
            idempotency_key="k-idle",
        )
    assert (created, ckpt.status) == (True, "ready")
    assert seen == [False]
