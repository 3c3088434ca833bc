"""Helpers for the API tests (imported by the test modules; tests/api is on sys.path)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fastapi.testclient import TestClient

API_REDIS_DB = 10  # tests/worker uses 13, tests/e2e 14, tests/browser 12
BROKER_URL = f"{os.environ.get('MERGETUNE_TEST_REDIS_URL', 'redis://127.0.0.1:6379')}/{API_REDIS_DB}"
TINY_DATASET: dict[str, Any] = {
    "name": "tiny",
    "kind": "builtin",
    "options": {"num_classes": 6, "train_per_class": 4, "val_per_class": 2, "test_per_class": 4},
}


def new_token(database_url: str, project: str | None = None) -> str:
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    with session_scope(database_url) as s:
        proj = repo.get_or_create_project(s, project or f"proj-{uuid.uuid4().hex[:10]}")
        _, secret = repo.create_token(s, proj)
    return secret


def upload(
    client: TestClient, headers: dict[str, str], data: bytes, filename: str = "model.pth.tar", **form: str
):
    return client.post("/v1/checkpoints", headers=headers, files={"file": (filename, data)}, data=form)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(settings: Any) -> Iterator[int]:
    """The app served by a real uvicorn on a free port, in a thread; yields the port."""
    import uvicorn

    from mergetune.api.main import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=10)
