"""The ``mergetune`` command.

Server side::

    mergetune serve [--embedded] [--host H] [--port P]   API (+ one worker and migrations with --embedded)
    mergetune worker [--concurrency N] [--loglevel L]    a Celery worker (exec'd, mergetune.worker.celery_app)
    mergetune migrate                                    alembic upgrade head on MERGETUNE_DATABASE_URL
    mergetune reconcile [--once]                         requeue stuck jobs, resend lost messages (loop)
    mergetune token create --project NAME [--expires-in 30d]  prints a new bearer token alone on its last line
    mergetune token list [--project NAME] [--json]        prefix, project, created, last used, expires, revoked
    mergetune token revoke PREFIX_OR_ID                   refused (401) from the next request on

Client side (``--url`` / MERGETUNE_URL, ``--token`` / MERGETUNE_TOKEN)::

    mergetune upload FILE [--method M] [--name N] [--class-token-position end|middle|front]
    mergetune dataset create --name N --kind builtin|coop|imagefolder [--path P] [--coop-name C] [--options JSON]
    mergetune job create --checkpoint ID --dataset ID [--model M --pretrained P] [--hp key=value ...]
                         [--eval-dataset ID ...] [--protocol base2novel|all] [--class-token-position P]
    mergetune job wait JOB        (progress bar on stderr; exit 0 when succeeded)
    mergetune job get|cancel|events JOB, mergetune job list
    mergetune download JOB [--name NAME ...] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mergetune.client import ApiError, Client
from mergetune.common.settings import Settings, get_settings
from mergetune.common.tasks import JOBS_QUEUE

log = logging.getLogger("mergetune")


class UserError(Exception):
    """A mistake the user can fix: printed as one line on stderr (exit 1), never as a traceback."""


# -- helpers --------------------------------------------------------------------------------------
def _json_object(text: str | None, option: str) -> dict[str, Any] | None:
    """The JSON object given to ``option`` (None when not given); bad JSON names the option."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{option}: not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UserError(f"{option}: expected a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value


def _input_file(path: Path, option: str) -> Path:
    """A readable regular file, or a one-line error naming ``option``."""
    if not path.exists():
        raise UserError(f"{option}: {path}: no such file")
    if path.is_dir():
        raise UserError(f"{option}: {path} is a directory; give the file itself")
    if not os.access(path, os.R_OK):
        raise UserError(f"{option}: {path}: permission denied")
    return path


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
    sys.stdout.flush()


def _parse_value(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _pairs(items: list[str] | None, *, typed: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = _parse_value(value) if typed else value
    return out


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


# -- server commands ------------------------------------------------------------------------------
def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from mergetune.common.db import upgrade_head

    settings.ensure_dirs()
    upgrade_head(settings.DATABASE_URL)
    log.info("database at head: %s", settings.DATABASE_URL.split("@")[-1])
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """The reconciler (mergetune.worker.reconcile): every RECONCILE_INTERVAL s, or one pass with --once."""
    from mergetune.worker.reconcile import reconcile_once, run_forever

    if args.once:
        rep = reconcile_once(settings)
        _print_json({"orphaned": rep.orphaned, "stalled": rep.stalled, "lost": rep.lost, "swept": rep.swept})
        return 1 if rep.errors else 0
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    run_forever(settings, stop)
    return 0


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """``30d``, ``12h``, ``90m``, ``45s``, ``2w`` or plain seconds (``3600``) -> seconds (> 0)."""
    raw = text.strip().lower()
    unit = raw[-1:] if raw[-1:] in _DURATION_UNITS else "s"
    number = raw[:-1] if raw[-1:] in _DURATION_UNITS else raw
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration: use seconds or a number with s, m, h, d or w (e.g. 30d)"
        )
    return int(number) * _DURATION_UNITS[unit]


def _servers_dir() -> Path:
    """Where ``mergetune serve`` records its home while it runs (one small JSON file per process)."""
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "mergetune" / "servers"


def _record_server(settings: Settings, url: str) -> Path | None:
    try:
        folder = _servers_dir()
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{os.getpid()}.json"
        path.write_text(
            json.dumps(
                {
                    "pid": os.getpid(),
                    "home": str(settings.HOME.resolve()),
                    "database_url": settings.DATABASE_URL,
                    "url": url,
                }
            )
        )
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
    for path in sorted(_servers_dir().glob("*.json")) if _servers_dir().is_dir() else []:
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


def _sqlite_path(url: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(url[len(prefix) :]) if url.startswith(prefix) and url != prefix + ":memory:" else None


def _open_token_db(settings: Settings, *, init: bool = False) -> Settings:
    """The settings whose database holds the tokens: the configured one when it exists; otherwise the
    home of the one running ``mergetune serve`` (so that the token is one that server accepts); a new
    embedded database only with ``--init``. Never creates a database silently."""
    from mergetune.common.db import DatabaseNotMigrated, check_migrated, get_engine, upgrade_head

    db_file = _sqlite_path(settings.DATABASE_URL)
    if db_file is not None and not db_file.exists() and not init:
        explicit = bool(os.environ.get("MERGETUNE_HOME") or os.environ.get("MERGETUNE_DATABASE_URL"))
        homes = {r["database_url"]: r for r in running_servers()} if not explicit else {}
        homes = {u: r for u, r in homes.items() if (f := _sqlite_path(u)) is None or f.exists()}
        if len(homes) == 1:
            rec = next(iter(homes.values()))
            sys.stderr.write(
                f"using the home of the running server at {rec['url']} (pid {rec['pid']}): {rec['home']}\n"
            )
            settings = settings.model_copy(
                update={"HOME": Path(rec["home"]), "DATABASE_URL": rec["database_url"]}
            )
        elif len(homes) > 1:
            listed = ", ".join(f"{r['home']} ({r['url']})" for r in homes.values())
            raise UserError(
                f"no database at {db_file} and several servers are running: {listed}; "
                "set MERGETUNE_HOME to the home of the one the token is for"
            )
        else:
            raise UserError(
                f"no database at {db_file}: run this where the server runs or set MERGETUNE_HOME to its "
                "home (`mergetune serve` logs it), or pass --init to create a new embedded database"
            )
        return settings
    settings.ensure_dirs()
    try:
        check_migrated(get_engine(settings.DATABASE_URL))
    except DatabaseNotMigrated as exc:
        if not (settings.is_sqlite and init):
            raise UserError(str(exc)) from None
        upgrade_head(settings.DATABASE_URL)  # --init: the embedded database is ours to create
    return settings


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.models import utcnow

    settings = _open_token_db(settings, init=args.init)
    expires_at = utcnow() + timedelta(seconds=args.expires_in) if args.expires_in else None
    with session_scope(settings.DATABASE_URL) as s:
        project = repo.get_or_create_project(s, args.project)
        token, secret = repo.create_token(s, project, expires_at=expires_at)
        project_id, token_id = project.id, token.id
    until = f", expires {expires_at.isoformat(timespec='seconds')}" if expires_at else ""
    sys.stderr.write(f"created token {token_id} for project {args.project} ({project_id}){until}\n")
    sys.stdout.write(secret + "\n")
    return 0


def _when(value: Any) -> str:
    return value.isoformat(timespec="seconds") if value is not None else "-"


def cmd_token_list(args: argparse.Namespace, settings: Settings) -> int:
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.models import utcnow

    settings = _open_token_db(settings)
    now = utcnow()
    with session_scope(settings.DATABASE_URL) as s:
        rows = [
            {
                "id": t.id,
                "prefix": t.prefix,
                "project": project,
                "created": _when(t.created_at),
                "last_used": _when(t.last_used_at),
                "expires": _when(t.expires_at),
                "revoked": _when(t.revoked_at),
                "state": repo.token_refusal(t, now) or "active",
            }
            for t, project in repo.list_tokens(s, args.project)
        ]
    if args.json:
        _print_json(rows)
        return 0
    cols = ["id", "prefix", "project", "created", "last_used", "expires", "revoked", "state"]
    widths = {c: max([len(c), *(len(str(r[c])) for r in rows)]) for c in cols}
    sys.stdout.write("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip() + "\n")
    for r in rows:
        sys.stdout.write("  ".join(str(r[c]).ljust(widths[c]) for c in cols).rstrip() + "\n")
    return 0


def cmd_token_revoke(args: argparse.Namespace, settings: Settings) -> int:
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    settings = _open_token_db(settings)
    with session_scope(settings.DATABASE_URL) as s:
        try:
            token = repo.resolve_token(s, args.token_ref)
        except repo.TokenLookupError as exc:
            sys.stderr.write(f"error: {exc}\n")
            return 1
        changed = repo.revoke_token(s, token)
        token_id, prefix, when = token.id, token.prefix, token.revoked_at
    state = "revoked" if changed else "was already revoked"
    sys.stderr.write(f"token {token_id} ({prefix}...) {state} at {_when(when)}\n")
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    settings.ensure_dirs()
    cmd = worker_command(
        settings, concurrency=args.concurrency, loglevel=args.loglevel, hostname=args.hostname
    )
    os.execvpe(cmd[0], cmd, settings_env(settings))
    return 0  # pragma: no cover - exec does not return


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from mergetune.api.main import create_app

    settings.ensure_dirs()
    worker: subprocess.Popen[bytes] | None = None
    if args.embedded:
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
            return 1

    config = uvicorn.Config(
        create_app(settings),
        host=args.host,
        port=args.port,
        log_level=settings.LOG_LEVEL.lower(),
        proxy_headers=True,
    )
    server = _make_server_class()(config)

    if worker is not None:

        def watch() -> None:
            code = worker.wait()
            if not server.should_exit:
                log.error("the worker exited with code %s; stopping", code)
                server.should_exit = True

        threading.Thread(target=watch, name="worker-watch", daemon=True).start()

    previous = {sig: signal.signal(sig, server.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
    log.info("home %s, database %s", settings.HOME.resolve(), settings.DATABASE_URL.split("@")[-1])
    record = _record_server(settings, f"http://{args.host}:{args.port}")  # found by `token create`
    try:
        server.run()  # returns after SIGINT/SIGTERM (graceful shutdown)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if record is not None:
            record.unlink(missing_ok=True)
        if worker is not None:
            _stop_child(worker)
    if worker is not None and worker.returncode not in (0, -signal.SIGTERM, None) and not server.started:
        return 1
    return 0 if server.started else 1


def _make_server_class() -> type:
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


# -- client commands ------------------------------------------------------------------------------
def _client(args: argparse.Namespace, settings: Settings) -> Client:
    token = args.token or settings.TOKEN
    if not token:
        raise UserError("no token: pass --token or set MERGETUNE_TOKEN (see `mergetune token create`)")
    return Client(args.url or settings.URL, token, timeout=args.timeout)


def cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
    _input_file(args.file, "FILE")
    with _client(args, settings) as c:
        ckpt = c.upload_checkpoint(
            args.file,
            method=args.method,
            name=args.name,
            idempotency_key=args.idempotency_key,
            class_token_position=args.class_token_position,
        )
    _print_json(ckpt)
    return 0 if ckpt["status"] == "ready" else 2


def cmd_dataset_create(args: argparse.Namespace, settings: Settings) -> int:
    options = _json_object(args.options, "--options")
    with _client(args, settings) as c:
        _print_json(
            c.create_dataset(args.name, args.kind, args.path, coop_name=args.coop_name, options=options)
        )
    return 0


def cmd_dataset_list(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as c:
        _print_json(c.list_datasets())
    return 0


def cmd_job_create(args: argparse.Namespace, settings: Settings) -> int:
    hp = _json_object(args.hyperparameters, "--hyperparameters") or {}
    hp.update(_pairs(args.hp, typed=True))
    backbone = None
    if args.model or args.pretrained:
        backbone = {k: v for k, v in {"model": args.model, "pretrained": args.pretrained}.items() if v}
    with _client(args, settings) as c:
        job = c.create_job(
            args.checkpoint,
            args.dataset,
            backbone=backbone,
            hyperparameters=hp,
            metadata=_pairs(args.metadata, typed=False),
            idempotency_key=args.idempotency_key,
            eval_dataset_ids=args.eval_dataset,
            protocol=args.protocol,
            class_token_position=args.class_token_position,
        )
    _print_json(job)
    return 0


class _ProgressBar:
    """A one-line progress bar on stderr (no extra dependency)."""

    def __init__(self, stream: Any = sys.stderr, width: int = 30) -> None:
        self.stream, self.width, self.last = stream, width, ""

    def __call__(self, job: dict[str, Any]) -> None:
        p = job.get("progress") or {}
        frac = 0.0
        try:
            epochs, steps = int(p["epochs"]), max(1, int(p.get("steps") or 1))
            frac = min(1.0, ((int(p["epoch"]) - 1) + int(p.get("step") or 0) / steps) / max(1, epochs))
        except (KeyError, TypeError, ValueError):
            pass
        if job["status"] == "succeeded":
            frac = 1.0
        detail = ""
        if p.get("epoch") is not None:
            detail = f" epoch {p.get('epoch')}/{p.get('epochs')}"
            if p.get("loss") is not None:
                detail += f" loss {float(p['loss']):.4f}"
        if job.get("queue_position"):
            detail += f" (queue position {job['queue_position']})"
        self.draw(job["id"], frac, f"{job['status']}{detail}")

    def draw(self, ident: str, frac: float, status: str) -> None:
        """Redraw the line ``<id> [###---] <percent> <status>`` when it changed."""
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        line = f"\r{ident} [{bar}] {frac * 100:5.1f}% {status}"
        if line != self.last:
            self.stream.write(line.ljust(len(self.last)))
            self.stream.flush()
            self.last = line

    def close(self) -> None:
        if self.last:
            self.stream.write("\n")
            self.stream.flush()


def _wait_with_progress(
    args: argparse.Namespace, bar: _ProgressBar, wait: Callable[..., dict[str, Any]], ident: str
) -> dict[str, Any]:
    """``wait(ident)`` with the --interval/--wait-timeout options, drawing ``bar`` unless --quiet."""
    try:
        return wait(
            ident, interval=args.interval, timeout=args.wait_timeout, on_update=None if args.quiet else bar
        )
    finally:
        bar.close()


def cmd_job_wait(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as c:
        job = _wait_with_progress(args, _ProgressBar(), c.wait_job, args.job)
    _print_json(job)
    # the last line a person sees (stderr, so stdout stays one JSON document): the verdict or the error
    verdict, error = job.get("verdict") or {}, job.get("error") or {}
    if verdict.get("text"):
        sys.stderr.write(f"{verdict['text']}\n")
    elif error:
        sys.stderr.write(f"{job['status']}: {error.get('code', 'error')}: {error.get('message', '')}\n")
    else:
        sys.stderr.write(f"{job['status']}\n")
    return 0 if job["status"] == "succeeded" else 1


def _simple(method: str, arg: str = "job") -> Any:
    """A command that prints ``Client.<method>(args.<arg>)`` as JSON (no argument where it has none)."""

    def run(args: argparse.Namespace, settings: Settings) -> int:
        with _client(args, settings) as c:
            _print_json(getattr(c, method)(*([getattr(args, arg)] if hasattr(args, arg) else [])))
        return 0

    return run


def cmd_job_events(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as c:
        page = c.job_events(args.job, after=args.after, limit=args.limit)
        if args.all:
            events = list(page["data"])
            while page.get("has_more"):
                page = c.job_events(args.job, after=page["next_cursor"], limit=args.limit)
                events.extend(page["data"])
            page = {"object": "list", "data": events, "has_more": False, "next_cursor": None}
    _print_json(page)
    return 0


def cmd_job_list(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as c:
        _print_json(c.list_jobs(status=args.status, dataset_id=args.dataset))
    return 0


def cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as c:
        paths = c.download_artifacts(args.job, args.out, args.name or None)
    for p in paths:
        sys.stdout.write(f"{p}\n")
    return 0


# -- sweeps ---------------------------------------------------------------------------------------
def _grid(items: list[str] | None) -> dict[str, list[Any]]:
    """``--grid w_zs=1,10`` -> {"w_zs": [1, 10]}."""
    grid: dict[str, list[Any]] = {}
    for key, raw in _pairs(items, typed=False).items():
        grid[key] = [_parse_value(v.strip()) for v in str(raw).split(",") if v.strip()]
    return grid


def _cell(text: str) -> dict[str, Any]:
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise UserError(f"--cell takes CHECKPOINT_ID:DATASET_ID[:SEED], got {text!r}")
    cell: dict[str, Any] = {"checkpoint_id": parts[0], "dataset_id": parts[1]}
    if len(parts) == 3:
        if not parts[2].isdigit():
            raise UserError(f"--cell: the seed must be a whole number, got {parts[2]!r}")
        cell["seed"] = int(parts[2])
    return cell


def cmd_sweep_create(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.tree) == bool(args.cell):
        raise UserError("give --tree ARCHIVE or --cell CHECKPOINT:DATASET[:SEED] (repeatable), not both")
    if args.tree:
        _input_file(args.tree, "--tree")
    spec: dict[str, Any] = {}
    if args.name:
        spec["name"] = args.name
    if args.cell:
        spec["cells"] = [_cell(c) for c in args.cell]
    if args.dataset_map:
        spec["dataset_map"] = _pairs(args.dataset_map, typed=False)
    if args.model or args.pretrained:
        spec["backbone"] = {
            k: v for k, v in {"model": args.model, "pretrained": args.pretrained}.items() if v
        }
    hp = _json_object(args.hyperparameters, "--hyperparameters") or {}
    hp.update(_pairs(args.hp, typed=True))
    if hp:
        spec["hyperparameters"] = hp
    if args.grid:
        spec["grid"] = _grid(args.grid)
    if args.protocol:
        spec["protocol"] = args.protocol
    if args.class_token_position:
        spec["prompt"] = {"class_token_position": args.class_token_position}
    if args.metadata:
        spec["metadata"] = _pairs(args.metadata, typed=False)
    with _client(args, settings) as c:
        sweep = c.create_sweep(spec, tree=args.tree, idempotency_key=args.idempotency_key)
    _print_json(sweep)
    return 0


class _SweepProgress(_ProgressBar):
    def __call__(self, sweep: dict[str, Any]) -> None:  # type: ignore[override]
        p = sweep["progress"]
        detail = f"{p['succeeded']}/{p['jobs']} succeeded, {p['running']} running, {p['queued']} queued"
        if p["failed"] or p["cancelled"]:
            detail += f", {p['failed']} failed, {p['cancelled']} cancelled"
        self.draw(sweep["id"], p["fraction"], f"{sweep['status']} ({detail})")


def cmd_sweep_wait(args: argparse.Namespace, settings: Settings) -> int:
    from mergetune.core.evaluation.sweep_table import to_text

    with _client(args, settings) as c:
        sweep = _wait_with_progress(args, _SweepProgress(), c.wait_sweep, args.sweep)
        report = json.loads(c.sweep_report(sweep["id"], "json"))
    _print_json(sweep)
    sys.stderr.write(to_text(report["table"]))  # the table a person reads; stdout stays one JSON document
    sys.stderr.write(f"{sweep['status']}\n")
    return 0 if sweep["status"] == "succeeded" else 1


def cmd_sweep_download(args: argparse.Namespace, settings: Settings) -> int:
    with _client(args, settings) as c:
        paths = c.download_sweep_report(
            args.sweep, args.out, tuple(args.format or ("json", "csv", "tex", "html"))
        )
    for p in paths:
        sys.stdout.write(f"{p}\n")
    return 0


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mergetune",
        description="MergeTune recovery service",
        epilog="--debug (anywhere on the line) prints the full traceback of an error.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    parser.add_argument("--debug", action="store_true", help="print the traceback of an error")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def client_opts(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", help="API base URL (MERGETUNE_URL, default http://127.0.0.1:8000)")
        p.add_argument("--token", help="bearer token (MERGETUNE_TOKEN)")
        p.add_argument(
            "--timeout",
            type=float,
            default=300.0,
            metavar="SECONDS",
            help="HTTP timeout in seconds (default 300)",
        )
        return p

    def wait_opts(p: argparse.ArgumentParser, interval: float) -> None:
        p.add_argument(
            "--interval",
            type=float,
            default=interval,
            metavar="SECONDS",
            help=f"poll interval (default {interval:g})",
        )
        p.add_argument("--wait-timeout", type=float, default=None, help="give up after this many seconds")
        p.add_argument("--quiet", action="store_true", help="no progress bar")

    p = sub.add_parser("serve", help="run the API (with --embedded: plus a worker, SQLite, filesystem queue)")
    p.add_argument("--embedded", action="store_true", help="migrate, then run the API and one worker")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker (one per GPU)")
    p.add_argument(
        "--concurrency",
        type=int,
        default=None,
        metavar="N",
        help="jobs at once (default MERGETUNE_WORKER_CONCURRENCY)",
    )
    p.add_argument(
        "--loglevel", default=None, help="DEBUG, INFO, WARNING or ERROR (default MERGETUNE_LOG_LEVEL)"
    )
    p.add_argument("--hostname", "-n", default=None, help="Celery node name, e.g. gpu0@%%h")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("reconcile", help="requeue stalled/orphaned jobs and resend lost broker messages")
    p.add_argument("--once", action="store_true", help="one pass, print what changed as JSON, exit")
    p.set_defaults(func=cmd_reconcile)

    tok = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    p = tok.add_parser("create", help="create a bearer token for a project (created if new)")
    p.add_argument("--project", required=True, help="project name (created if new)")
    p.add_argument(
        "--init",
        action="store_true",
        help="create a new embedded database under MERGETUNE_HOME if there is none (default: refuse)",
    )
    p.add_argument(
        "--expires-in",
        type=parse_duration,
        default=None,
        metavar="DURATION",
        help="expire after this long: seconds or e.g. 90m, 12h, 30d, 2w (default: never)",
    )
    p.set_defaults(func=cmd_token_create)
    p = tok.add_parser("list", help="list tokens: prefix, project, created, last used, expires, revoked")
    p.add_argument("--project", default=None, help="only this project's tokens")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_token_list)
    p = tok.add_parser("revoke", help="revoke a token at once (by id tok_... or prefix mt_...)")
    p.add_argument("token_ref", metavar="PREFIX_OR_ID", help="token id (tok_...) or prefix (mt_...)")
    p.set_defaults(func=cmd_token_revoke)

    p = client_opts(sub.add_parser("upload", help="upload a checkpoint"))
    p.add_argument(
        "file", type=Path, metavar="FILE", help="Dassl .pth.tar, .pth/.pt state dict or .safetensors"
    )
    p.add_argument(
        "--method", choices=["coop", "kgcoop", "linear_head", "mma"], help="default: detected from the file"
    )
    p.add_argument("--name", help="display name (default: the file name)")
    p.add_argument(
        "--class-token-position", choices=["end", "middle", "front"], help="CoOp's CLASS_TOKEN_POSITION"
    )
    p.add_argument(
        "--idempotency-key", metavar="KEY", help="a retried request with the same key creates nothing new"
    )
    p.set_defaults(func=cmd_upload)

    ds = sub.add_parser("dataset", help="datasets").add_subparsers(dest="dataset_command", required=True)
    p = client_opts(ds.add_parser("create", help="register a dataset"))
    p.add_argument("--name", required=True, help="dataset name")
    p.add_argument("--kind", required=True, choices=["builtin", "coop", "imagefolder"], help="layout on disk")
    p.add_argument("--path", help="folder relative to the server's data root (coop, imagefolder)")
    p.add_argument("--coop-name", help="CoOp's dataset name, e.g. eurosat (kind coop)")
    p.add_argument(
        "--options", metavar="JSON", help="JSON object of kind-specific options, e.g. '{\"num_classes\": 6}'"
    )
    p.set_defaults(func=cmd_dataset_create)
    p = client_opts(ds.add_parser("list", help="list the project's datasets as JSON"))
    p.set_defaults(func=cmd_dataset_list)

    job = sub.add_parser("job", help="jobs").add_subparsers(dest="job_command", required=True)
    p = client_opts(job.add_parser("create", help="create a recovery job"))
    p.add_argument("--checkpoint", required=True, metavar="ID", help="checkpoint id (ckpt_...)")
    p.add_argument("--dataset", required=True, metavar="ID", help="dataset id (ds_...)")
    p.add_argument("--model", help="backbone model, e.g. ViT-B-16 or tiny-clip")
    p.add_argument("--pretrained", help="backbone weights tag, e.g. openai or builtin")
    p.add_argument(
        "--hp", action="append", metavar="KEY=VALUE", help="a hyperparameter, e.g. epochs=10 (repeatable)"
    )
    p.add_argument("--hyperparameters", metavar="JSON", help="JSON object of hyperparameters")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="a free-form label (repeatable)")
    p.add_argument(
        "--eval-dataset",
        action="append",
        metavar="ID",
        help="another dataset to evaluate the result on (cross-dataset / shift; repeatable)",
    )
    p.add_argument(
        "--protocol",
        choices=["base2novel", "all"],
        help="classes the checkpoint was trained on: the base half (default) or all",
    )
    p.add_argument(
        "--class-token-position", choices=["end", "middle", "front"], help="overrides the upload's"
    )
    p.add_argument(
        "--idempotency-key", metavar="KEY", help="default: a fresh key (a retry never makes two jobs)"
    )
    p.set_defaults(func=cmd_job_create)
    p = client_opts(job.add_parser("wait", help="wait for a job with a progress bar on stderr"))
    p.add_argument("job", metavar="JOB", help="job id (job_...)")
    wait_opts(p, interval=1.0)
    p.set_defaults(func=cmd_job_wait)
    for name, method, text in (
        ("get", "get_job", "print a job (status, progress, metrics, verdict, error) as JSON"),
        ("cancel", "cancel_job", "cancel a queued or running job"),
    ):
        p = client_opts(job.add_parser(name, help=text, description=text))
        p.add_argument("job", metavar="JOB", help="job id (job_...)")
        p.set_defaults(func=_simple(method))
    text = "print a job's events as JSON, oldest first (one page, or every page with --all)"
    p = client_opts(job.add_parser("events", help=text, description=text))
    p.add_argument("job", metavar="JOB", help="job id (job_...)")
    p.add_argument(
        "--after",
        type=int,
        default=None,
        metavar="EVENT_ID",
        help="only events after this event id (the next_cursor of the previous page)",
    )
    p.add_argument(
        "--limit", type=int, default=100, metavar="N", help="events per page (1-1000, default 100)"
    )
    p.add_argument("--all", action="store_true", help="follow next_cursor until the last event")
    p.set_defaults(func=cmd_job_events)
    text = "list the project's jobs as JSON, newest first"
    p = client_opts(job.add_parser("list", help=text, description=text))
    p.add_argument(
        "--status",
        choices=["queued", "running", "succeeded", "failed", "cancelled"],
        help="only jobs in this state",
    )
    p.add_argument("--dataset", metavar="ID", help="only jobs on this dataset (ds_...)")
    p.set_defaults(func=cmd_job_list)

    p = client_opts(sub.add_parser("download", help="download a job's artifacts (all or nothing)"))
    p.add_argument("job", metavar="JOB", help="job id (job_...)")
    p.add_argument("--name", action="append", help="artifact name (repeatable; default: all)")
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="folder (default: here)")
    p.set_defaults(func=cmd_download)

    sw = sub.add_parser("sweep", help="sweeps: many jobs from a CoOp output tree or a grid").add_subparsers(
        dest="sweep_command", required=True
    )
    p = client_opts(sw.add_parser("create", help="create a sweep from a tree archive or from cells"))
    p.add_argument("--tree", type=Path, help="zip/tar of a CoOp output directory")
    p.add_argument("--cell", action="append", metavar="CKPT:DATASET[:SEED]", help="a cell (repeatable)")
    p.add_argument(
        "--dataset-map", action="append", metavar="TREE_NAME=DATASET_ID", help="default: datasets by name"
    )
    p.add_argument("--name", help="display name")
    p.add_argument("--model", help="backbone model, e.g. ViT-B-16 or tiny-clip")
    p.add_argument("--pretrained", help="backbone weights tag, e.g. openai or builtin")
    p.add_argument("--hp", action="append", metavar="KEY=VALUE", help="a shared hyperparameter (repeatable)")
    p.add_argument("--hyperparameters", metavar="JSON", help="JSON object of shared hyperparameters")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="a grid axis (repeatable)")
    p.add_argument(
        "--protocol", choices=["base2novel", "all"], help="classes the checkpoints were trained on"
    )
    p.add_argument(
        "--class-token-position", choices=["end", "middle", "front"], help="CoOp's CLASS_TOKEN_POSITION"
    )
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="a free-form label (repeatable)")
    p.add_argument("--idempotency-key", metavar="KEY", help="default: a fresh key")
    p.set_defaults(func=cmd_sweep_create)
    p = client_opts(sw.add_parser("wait", help="wait for a sweep (progress on stderr), then print its table"))
    p.add_argument("sweep", metavar="SWEEP", help="sweep id (swp_...)")
    wait_opts(p, interval=2.0)
    p.set_defaults(func=cmd_sweep_wait)
    p = client_opts(sw.add_parser("download", help="download the report (json, csv, tex, html)"))
    p.add_argument("sweep", metavar="SWEEP", help="sweep id (swp_...)")
    p.add_argument(
        "--format", action="append", choices=["json", "csv", "tex", "html"], help="repeatable (default: all)"
    )
    p.add_argument("--out", type=Path, default=Path("."), metavar="DIR", help="folder (default: here)")
    p.set_defaults(func=cmd_sweep_download)
    for name, method, text in (
        ("get", "get_sweep", "print a sweep as JSON"),
        ("cancel", "cancel_sweep", "cancel every unfinished job of a sweep"),
    ):
        p = client_opts(sw.add_parser(name, help=text))
        p.add_argument("sweep", metavar="SWEEP", help="sweep id (swp_...)")
        p.set_defaults(func=_simple(method, "sweep"))
    p = client_opts(sw.add_parser("list", help="list the project's sweeps as JSON"))
    p.set_defaults(func=_simple("list_sweeps", "sweep"))
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mergetune-service")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
        return "unknown"


def describe_error(exc: BaseException, args: argparse.Namespace | None = None) -> str:
    """One line for a person: what went wrong and, where it helps, what to do."""
    import httpx

    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, ApiError):
        where = f" (field: {exc.param})" if exc.param else ""
        return f"{exc.message or exc.code}{where} [HTTP {exc.status} {exc.code}]"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        url = str(exc.request.url.copy_with(path="/", query=None)) if _has_request(exc) else "the server"
        return (
            f"cannot connect to {url.rstrip('/')}: {_reason(exc)}; is `mergetune serve` running there? "
            "(set --url or MERGETUNE_URL)"
        )
    if isinstance(exc, httpx.TimeoutException):
        return f"the server did not answer in time ({type(exc).__name__}); raise --timeout SECONDS"
    if isinstance(exc, httpx.HTTPError):
        return f"HTTP error talking to the server: {_reason(exc)}"
    if isinstance(exc, TimeoutError):
        return str(exc)
    if isinstance(exc, FileNotFoundError | IsADirectoryError | NotADirectoryError | PermissionError):
        return f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc)
    if isinstance(exc, OSError):
        return f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else "")
    from mergetune.common.db import DatabaseNotMigrated

    if isinstance(exc, DatabaseNotMigrated):
        return str(exc)
    return f"{type(exc).__name__}: {exc} (rerun with --debug for the traceback)"


def _has_request(exc: Exception) -> bool:
    try:
        exc.request  # type: ignore[attr-defined]  # noqa: B018
    except RuntimeError:
        return False
    return True


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lower = text.lower()
    if "refused" in lower:
        return "connection refused"
    if "name or service not known" in lower or "nodename nor servname" in lower:
        return "unknown host name"
    return text.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or os.environ.get("MERGETUNE_DEBUG", "") not in ("", "0")
    argv = [a for a in argv if a != "--debug"]  # accepted anywhere on the line
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except Exception as exc:  # e.g. a malformed MERGETUNE_* variable
        if debug:
            raise
        sys.stderr.write(f"error: configuration: {str(exc).splitlines()[0]}\n")
        return 1
    logging.basicConfig(
        level=getattr(logging, settings.LOG_LEVEL.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.func(args, settings) or 0)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        raise
    except Exception as exc:
        if debug:
            raise
        sys.stderr.write(f"error: {describe_error(exc, args)}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
