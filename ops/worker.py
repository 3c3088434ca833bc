"""``mergetune worker`` (a Celery worker, exec'd) and ``mergetune reconcile`` (requeue stuck jobs,
resend lost broker messages), and the worker command line ``serve --embedded`` starts too."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from mergetune.cli.output import print_json
from mergetune.ops import load_settings, server_errors

if TYPE_CHECKING:
    from mergetune.common.settings import Settings


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to resolve exactly these settings."""
    env = dict(os.environ)
    for name in (
        "HOME",
        "DATABASE_URL",
        "BROKER_URL",
        "DATA_ROOT",
        "ARTIFACT_URL",
        "MODEL_CACHE_DIR",
        "MODEL_ROOT",
        "LOG_LEVEL",
    ):
        value = getattr(settings, name)
        if value is not None:
            env[f"MERGETUNE_{name}"] = str(Path(value).resolve()) if isinstance(value, Path) else str(value)
    env["MERGETUNE_ARTIFACT_ROOT"] = env["MERGETUNE_ARTIFACT_URL"]
    return env


def worker_command(
    settings: Settings,
    *,
    concurrency: int | None = None,
    loglevel: str | None = None,
    hostname: str | None = None,
) -> list[str]:
    """``python -m celery -A mergetune.worker.celery_app worker ...`` on the jobs queue."""
    from mergetune.common.tasks import JOBS_QUEUE

    n = concurrency or settings.WORKER_CONCURRENCY
    cmd = [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "mergetune.worker.celery_app",
        "worker",
        "--pool",
        "solo" if n == 1 else "prefork",
        "--concurrency",
        str(n),
        "-Q",
        JOBS_QUEUE,
        "--loglevel",
        (loglevel or settings.LOG_LEVEL).upper(),
        "--without-gossip",
        "--without-mingle",
    ]
    if hostname:
        cmd += ["-n", hostname]
    return cmd


def worker(
    concurrency: Annotated[
        int | None,
        typer.Option(metavar="N", help="jobs at once (default MERGETUNE_WORKER_CONCURRENCY)"),
    ] = None,
    loglevel: Annotated[
        str | None, typer.Option(help="DEBUG, INFO, WARNING or ERROR (default MERGETUNE_LOG_LEVEL)")
    ] = None,
    hostname: Annotated[
        str | None, typer.Option("--hostname", "-n", help="Celery node name, e.g. gpu0@%h")
    ] = None,
) -> None:
    """Run a Celery worker (one per GPU)."""
    settings = load_settings()
    settings.ensure_dirs()
    cmd = worker_command(settings, concurrency=concurrency, loglevel=loglevel, hostname=hostname)
    os.execvpe(cmd[0], cmd, settings_env(settings))


@server_errors
def reconcile(
    once: Annotated[bool, typer.Option("--once", help="one pass, print what changed as JSON, exit")] = False,
) -> None:
    """Requeue stalled/orphaned jobs and resend lost broker messages (every RECONCILE_INTERVAL s)."""
    from mergetune.worker.reconcile import reconcile_once, run_forever

    settings = load_settings()
    if once:
        rep = reconcile_once(settings)
        print_json({"orphaned": rep.orphaned, "stalled": rep.stalled, "lost": rep.lost, "swept": rep.swept})
        if rep.errors:
            raise typer.Exit(1)
        return
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_forever(settings, stop)


def register(app: typer.Typer) -> None:
    app.command("worker")(worker)
    app.command("reconcile")(reconcile)
