"""The operator's commands of ``mergetune``: serve, worker, migrate, reconcile and token.

They come with the server (this package is not in the client's distribution): the client's Typer app
(:mod:`mergetune.cli`) calls :func:`register` when ``mergetune.ops`` can be imported. Importing this
package stays light (settings only); each command imports the server code it runs.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

import typer

from mergetune.cli.options import UserError

if TYPE_CHECKING:
    from mergetune.common.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])
#: Libraries whose INFO lines never reach the terminal (MERGETUNE_LOG_LEVEL=DEBUG shows them).
LIBRARY_LOGGERS = ("alembic", "httpx", "httpcore")


def load_settings() -> Settings:
    """The server's settings (MERGETUNE_*), with logging set up at their LOG_LEVEL on stderr (the
    libraries' own loggers at WARNING unless it is DEBUG); a malformed variable is one line
    (``error: configuration: ...``)."""
    from mergetune.common.settings import get_settings

    try:
        settings = get_settings()
    except Exception as exc:
        raise UserError(f"configuration: {str(exc).splitlines()[0]}") from exc
    level = getattr(logging, settings.LOG_LEVEL.upper(), logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if level > logging.DEBUG:  # libraries' INFO lines (alembic's migration steps, httpx's requests) are noise
        for name in LIBRARY_LOGGERS:
            logging.getLogger(name).setLevel(max(level, logging.WARNING))
    return settings


def server_errors(fn: F) -> F:
    """A command whose database-not-migrated refusal is one line (``error: ...``), as the client's are."""

    @wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        from mergetune.common.db import DatabaseNotMigrated

        try:
            return fn(*args, **kwargs)
        except DatabaseNotMigrated as exc:
            raise UserError(str(exc)) from exc

    return run  # type: ignore[return-value]


def register(app: typer.Typer) -> None:
    """Add serve, worker, migrate, reconcile and the token group to the ``mergetune`` app."""
    from mergetune.ops import projects, secret_keys, serve, tokens, worker

    serve.register(app)
    worker.register(app)
    tokens.register(app)
    projects.register(app)
    secret_keys.register(app)
