"""Service fixtures shared by every test package.

- ``pg_url``: a fresh Postgres database for this test session (``mergetune_test_<pid>`` on
  127.0.0.1:5432, user postgres, trust auth), migrated with Alembic to head, dropped at the end.
- ``make_settings(home, **overrides)``: a :class:`common.settings.Settings` for that database.
- One torch thread in every test that has torch loaded (the machine is shared).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

PG_HOST = "127.0.0.1"
PG_USER = "postgres"
REDIS_URL = "redis://127.0.0.1:6379"


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

    from common.db import get_engine, upgrade_head

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
    from common.settings import Settings

    def _make(home: Path, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"HOME": home, "DATABASE_URL": pg_url, "BROKER_URL": f"{REDIS_URL}/10"}
        values.update(overrides)
        settings = Settings(**values)
        settings.ensure_dirs()
        return settings

    return _make
