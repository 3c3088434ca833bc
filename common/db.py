"""Engines and sessions (sync SQLAlchemy 2; psycopg 3 on Postgres, sqlite3 in embedded mode).

The edge owns the transaction: an HTTP request or a Celery task opens one session with
:func:`session_scope` (or the API's ``SessionDep``), which commits on success and rolls back on error.
Repositories only ``add``/``flush``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

log = logging.getLogger(__name__)

#: The Alembic scripts (``migrations/`` at the repository root, shipped as a package).
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


class DatabaseNotMigrated(RuntimeError):
    """The database has no Alembic version or an older/unknown one."""


class DatabaseUnavailable(RuntimeError):
    """The database could not be reached (within the caller's retry budget, if any)."""


def is_unavailable(exc: BaseException) -> bool:
    """True for errors that mean "the database is down or the connection was lost" (retry later), as
    opposed to errors in the statement itself: a refused or dropped connection, a server shutting down
    or starting up, an exhausted pool, and :class:`DatabaseUnavailable`."""
    from sqlalchemy import exc as sa_exc

    if isinstance(exc, DatabaseUnavailable | sa_exc.OperationalError | sa_exc.InterfaceError):
        return True
    if isinstance(exc, sa_exc.TimeoutError):  # QueuePool limit reached while connections hang
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return False


def rowcount(result: Result[Any]) -> int:
    """Rows matched by an UPDATE/DELETE run through ``Session.execute``, which is typed as returning a
    ``Result`` but returns a ``CursorResult`` (the class that has ``rowcount``) for such statements."""
    return cast(CursorResult[Any], result).rowcount


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``. SQLite gets WAL, a busy timeout and foreign keys (API and worker are
    separate processes writing the same file)."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    # Enough connections for the API's 40 request threads, so none waits for the pool under load.
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 30)
    return create_engine(url, **kwargs)


@lru_cache(maxsize=8)
def get_engine(url: str) -> Engine:
    """Process-wide cached engine per URL."""
    return make_engine(url)


@lru_cache(maxsize=8)
def get_sessionmaker(url: str) -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(url), expire_on_commit=False, autoflush=True)


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any exception."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision stamped in the database, or None when there is none."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        return row[0] if row else None


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` for ``url`` that works from any working directory."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["database_url"] = url
    return cfg


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()
    if head is None:  # pragma: no cover - the repository always ships migrations
        raise RuntimeError(f"no Alembic revisions under {MIGRATIONS_DIR}")
    return head


def upgrade_head(url: str) -> None:
    """Apply all migrations (``alembic upgrade head``) to the database at ``url``."""
    from alembic import command

    command.upgrade(alembic_config(url), "head")


def check_migrated(engine: Engine) -> None:
    """Raise :class:`DatabaseNotMigrated` unless the database is at the Alembic head."""
    rev = current_revision(engine)
    head = head_revision()
    if rev != head:
        where = engine.url.render_as_string(hide_password=True)
        raise DatabaseNotMigrated(
            f"database {where} is at migration {rev or '(none)'} but this code needs {head}; "
            "run `mergetune migrate` (or `alembic upgrade head`) first"
        )


def ping(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
