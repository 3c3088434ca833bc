"""``mergetune serve [--embedded]`` (the API; embedded: plus migrations, one worker and the reconciler,
all state under MERGETUNE_HOME) and ``mergetune migrate``; a running server records its home so that
``mergetune token create`` finds the database it uses."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from mergetune.ops import load_settings, server_errors
from mergetune.ops.worker import settings_env, worker_command

if TYPE_CHECKING:
    from mergetune.common.settings import Settings

log = logging.getLogger("mergetune")


@server_errors
def migrate() -> None:
    """Apply database migrations (alembic upgrade head)."""
    from mergetune.common.db import upgrade_head

    settings = load_settings()
    settings.ensure_dirs()
    upgrade_head(settings.DATABASE_URL)
    log.info("database at head: %s", settings.DATABASE_URL.split("@")[-1])


def serve(
    embedded: Annotated[
        bool, typer.Option("--embedded", help="migrate, then run the API and one worker")
    ] = False,
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="API processes sharing the port (a Postgres deployment)")
    ] = 1,
) -> None:
    """Run the API (with --embedded: plus a worker, SQLite, filesystem queue)."""
    import uvicorn

    from mergetune.api.main import create_app

    settings = load_settings()
    settings.ensure_dirs()
    if workers > 1 and (embedded or settings.is_sqlite):
        log.critical("--workers needs the Postgres deployment: the embedded mode and SQLite are one process")
        raise typer.Exit(2)
    worker: subprocess.Popen[bytes] | None = None
    if embedded:
        from mergetune.common.db import upgrade_head

        log.info("embedded mode: state under %s", settings.HOME.resolve())
        upgrade_head(settings.DATABASE_URL)
        settings = settings.model_copy(update={"EMBEDDED": True})  # the API may check this machine's disk
        worker = subprocess.Popen(
            worker_command(settings, concurrency=1, hostname="embedded@%h"),
            env=settings_env(settings),
            start_new_session=True,  # we forward signals ourselves
        )
        log.info("worker started (pid %d)", worker.pid)
        from mergetune.worker.reconcile import start_thread

        start_thread(settings)  # in-process reconciler (daemon thread)
    elif settings.REQUIRE_MIGRATED:
        from mergetune.common.db import DatabaseNotMigrated, check_migrated, get_engine

        try:
            check_migrated(get_engine(settings.DATABASE_URL))
        except DatabaseNotMigrated as exc:
            log.critical("refusing to start: %s", exc)
            raise typer.Exit(1) from None

    if workers > 1:  # uvicorn's supervisor: N processes accept on one socket, each builds the app
        log.info("%d API processes on %s:%d", workers, host, port)
        uvicorn.run(
            "mergetune.api.main:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            proxy_headers=True,
            log_config=_log_config(settings.LOG_LEVEL),
            log_level=settings.LOG_LEVEL.lower(),  # as one process: no access log below INFO
        )
        return
    config = uvicorn.Config(
        create_app(settings), host=host, port=port, log_level=settings.LOG_LEVEL.lower(), proxy_headers=True
    )
    server = _server_class()(config)
    if worker is not None:
        child = worker

        def watch() -> None:
            code = child.wait()
            if not server.should_exit:
                log.error("the worker exited with code %s; stopping", code)
                server.should_exit = True

        threading.Thread(target=watch, name="worker-watch", daemon=True).start()

    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    log.info("home %s, database %s", settings.HOME.resolve(), settings.DATABASE_URL.split("@")[-1])
    record = _record_server(settings, f"http://{host}:{port}")  # found by `token create`
    try:
        server.run()  # returns after SIGINT/SIGTERM (graceful shutdown)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if record is not None:
            record.unlink(missing_ok=True)
        if worker is not None:
            _stop_child(worker)
    if not server.started:  # the port was taken, the app failed to start, or the worker died first
        raise typer.Exit(1)


def _log_config(level: str) -> dict[str, Any]:
    """uvicorn's logging set-up plus the service's own loggers on stderr, applied in every process."""
    import copy

    from uvicorn.config import LOGGING_CONFIG

    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["mergetune"] = {"handlers": ["default"], "level": level.upper(), "propagate": False}
    return config


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises the captured SIGINT/SIGTERM after shutdown, which would kill this process
        before it stops the worker; here the signals only trigger the graceful shutdown."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return Server


def _stop_child(proc: subprocess.Popen[bytes], grace: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    log.info("stopping worker (pid %d)", proc.pid)
    try:
        proc.send_signal(signal.SIGTERM)  # celery: warm shutdown (the task is redelivered if unfinished)
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# -- the records of running servers ---------------------------------------------------------------
def _servers_dir() -> Path:
    """Where ``mergetune serve`` records its home while it runs (one small JSON file per process)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mergetune" / "servers"


def _record_server(settings: Settings, url: str) -> Path | None:
    try:
        folder = _servers_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{os.getpid()}.json"
        record = {
            "pid": os.getpid(),
            "home": str(settings.HOME.resolve()),
            "database_url": settings.DATABASE_URL,
            "url": url,
        }
        path.write_text(json.dumps(record))
        return path
    except OSError:  # a read-only home directory must not stop the server
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_servers() -> list[dict[str, Any]]:
    """The homes of the ``mergetune serve`` processes of this user that are alive."""
    found = []
    folder = _servers_dir()
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            rec = json.loads(path.read_text())
            alive = _pid_alive(int(rec["pid"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if alive:
            found.append(rec)
        else:
            path.unlink(missing_ok=True)  # a server that died without cleaning up
    return found


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
    app.command("migrate")(migrate)
