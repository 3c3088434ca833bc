"""Service fixtures shared by every test package.

- ``pg_url``: a fresh Postgres database for this test session (``mergetune_test_<pid>`` on
  127.0.0.1:5432, user postgres, trust auth), migrated with Alembic to head, dropped at the end.
- ``make_settings(home, **overrides)``: a :class:`mergetune.common.settings.Settings` for that database.
- A private ``redis-server`` on a spare port for this test session (``MERGETUNE_TEST_REDIS_URL``), so
  two checkouts or two runs on one machine never share a Redis database; the machine's shared Redis on
  6379 is only a fallback when no ``redis-server`` binary is installed.
- One torch thread in every test that has torch loaded (the machine is shared).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PG_HOST = "127.0.0.1"
PG_USER = "postgres"
_redis_proc: subprocess.Popen[bytes] | None = None


def _spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_private_redis() -> str:
    """Start a throw-away redis-server for this session; return its URL (no database number)."""
    global _redis_proc
    binary = shutil.which("redis-server")
    if binary is None:
        return "redis://127.0.0.1:6379"
    port = _spare_port()
    workdir = tempfile.mkdtemp(prefix="mergetune-test-redis-")
    _redis_proc = subprocess.Popen(
        [
            binary,
            "--bind",
            "127.0.0.1",
            "--port",
            str(port),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            workdir,
            "--databases",
            "32",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return f"redis://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"private redis-server did not start on port {port}")


def _ensure_private_redis() -> None:
    if not os.environ.get("MERGETUNE_TEST_REDIS_URL"):
        os.environ["MERGETUNE_TEST_REDIS_URL"] = _start_private_redis()


# Now, at import: pytest imports the test packages' conftests (which read the URL when imported, e.g.
# tests/worker/worker_support.py) right after this one and before pytest_configure; reading it later
# would leave them on the machine's shared Redis, where another session's worker takes their messages.
_ensure_private_redis()


def pytest_configure(config: pytest.Config) -> None:
    _ensure_private_redis()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _redis_proc is not None:
        _redis_proc.terminate()
        try:
            _redis_proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _redis_proc.kill()


def redis_url() -> str:
    """Base URL (no database number) of this session's Redis."""
    return os.environ.get("MERGETUNE_TEST_REDIS_URL", "redis://127.0.0.1:6379")


def _admin_conninfo() -> str:
    return f"host={PG_HOST} port=5432 user={PG_USER} dbname=postgres"


@pytest.fixture(autouse=True)
def _torch_one_thread() -> Iterator[None]:
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of a fresh, migrated Postgres database for this test session."""
    import psycopg

    from mergetune.common.db import get_engine, upgrade_head

    name = f"mergetune_test_{os.getpid()}"
    with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://{PG_USER}@{PG_HOST}:5432/{name}"
    try:
        upgrade_head(url)
        yield url
    finally:
        get_engine(url).dispose()
        with psycopg.connect(_admin_conninfo(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def make_settings(pg_url: str) -> Callable[..., Any]:
    """Settings on the session database; everything else under ``home`` unless overridden."""
    from mergetune.common.settings import Settings

    def _make(home: Path, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"HOME": home, "DATABASE_URL": pg_url, "BROKER_URL": f"{redis_url()}/10"}
        values.update(overrides)
        settings = Settings(**values)
        settings.ensure_dirs()
        return settings

    return _make
