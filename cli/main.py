"""The ``mergetune`` command.

Server side::

    mergetune serve [--embedded] [--host H] [--port P]   API (+ one worker and migrations with --embedded)
    mergetune worker [--concurrency N] [--loglevel L]    a Celery worker (exec'd, worker.celery_app)
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cli.client import ApiError, Client
from common.settings import Settings, get_settings
from common.tasks import JOBS_QUEUE

log = logging.getLogger("mergetune")


# -- helpers --------------------------------------------------------------------------------------
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
            raise SystemExit(f"expected key=value, got {item!r}")
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
        "worker.celery_app",
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
    from common.db import upgrade_head

    settings.ensure_dirs()
    upgrade_head(settings.DATABASE_URL)
    log.info("database at head: %s", settings.DATABASE_URL.split("@")[-1])
    return 0


def cmd_reconcile(args: argparse.Namespace, settings: Settings) -> int:
    """The reconciler (worker.reconcile): every RECONCILE_INTERVAL s, or one pass with --once."""
    from worker.reconcile import reconcile_once, run_forever

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


def _open_token_db(settings: Settings) -> None:
    from common.db import DatabaseNotMigrated, check_migrated, get_engine, upgrade_head

    settings.ensure_dirs()
    try:
        check_migrated(get_engine(settings.DATABASE_URL))
    except DatabaseNotMigrated:
        if not settings.is_sqlite:
            raise
        upgrade_head(settings.DATABASE_URL)  # the embedded database is ours to create


def cmd_token_create(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import timedelta

    from common import repositories as repo
    from common.db import session_scope
    from common.models import utcnow

    _open_token_db(settings)
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
    from common import repositories as repo
    from common.db import session_scope
    from common.models import utcnow

    _open_token_db(settings)
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
    from common import repositories as repo
    from common.db import session_scope

    _open_token_db(settings)
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

    from api.main import create_app

    settings.ensure_dirs()
    worker: subprocess.Popen[bytes] | None = None
    if args.embedded:
        from common.db import upgrade_head

        log.info("embedded mode: state under %s", settings.HOME.resolve())
        upgrade_head(settings.DATABASE_URL)
        settings = settings.model_copy(update={"EMBEDDED": True})  # the API may check this machine's disk
        worker = subprocess.Popen(
            worker_command(settings, concurrency=1, hostname="embedded@%h"),
            env=settings_env(settings),
            start_new_session=True,  # we forward signals ourselves
        )
        log.info("worker started (pid %d)", worker.pid)
        from worker.reconcile import start_thread

        start_thread(settings)  # in-process reconciler (daemon thread)
    elif settings.REQUIRE_MIGRATED:
        from common.db import DatabaseNotMigrated, check_migrated, get_engine

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
    try:
        server.run()  # returns after SIGINT/SIGTERM (graceful shutdown)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
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
        raise SystemExit("no token: pass --token or set MERGETUNE_TOKEN (see `mergetune token create`)")
    return Client(args.url or settings.URL, token, timeout=args.timeout)


def cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
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
    options = json.loads(args.options) if args.options else None
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
    hp = json.loads(args.hyperparameters) if args.hyperparameters else {}
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
        filled = int(frac * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        detail = ""
        if p.get("epoch") is not None:
            detail = f" epoch {p.get('epoch')}/{p.get('epochs')}"
            if p.get("loss") is not None:
                detail += f" loss {float(p['loss']):.4f}"
        if job.get("queue_position"):
            detail += f" (queue position {job['queue_position']})"
        line = f"\r{job['id']} [{bar}] {frac * 100:5.1f}% {job['status']}{detail}"
        if line != self.last:
            self.stream.write(line.ljust(len(self.last)))
            self.stream.flush()
            self.last = line

    def close(self) -> None:
        if self.last:
            self.stream.write("\n")
            self.stream.flush()


def cmd_job_wait(args: argparse.Namespace, settings: Settings) -> int:
    bar = _ProgressBar()
    with _client(args, settings) as c:
        try:
            job = c.wait_job(
                args.job,
                interval=args.interval,
                timeout=args.wait_timeout,
                on_update=None if args.quiet else bar,
            )
        finally:
            bar.close()
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


def _simple(method: str) -> Any:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        with _client(args, settings) as c:
            _print_json(getattr(c, method)(args.job))
        return 0

    return run


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
        raise SystemExit(f"--cell takes CHECKPOINT_ID:DATASET_ID[:SEED], got {text!r}")
    cell: dict[str, Any] = {"checkpoint_id": parts[0], "dataset_id": parts[1]}
    if len(parts) == 3:
        cell["seed"] = int(parts[2])
    return cell


def cmd_sweep_create(args: argparse.Namespace, settings: Settings) -> int:
    if bool(args.tree) == bool(args.cell):
        raise SystemExit("give --tree ARCHIVE or --cell CHECKPOINT:DATASET[:SEED] (repeatable), not both")
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
    hp = json.loads(args.hyperparameters) if args.hyperparameters else {}
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
        filled = int(p["fraction"] * self.width)
        bar = "#" * filled + "-" * (self.width - filled)
        detail = f"{p['succeeded']}/{p['jobs']} succeeded, {p['running']} running, {p['queued']} queued"
        if p["failed"] or p["cancelled"]:
            detail += f", {p['failed']} failed, {p['cancelled']} cancelled"
        line = f"\r{sweep['id']} [{bar}] {p['fraction'] * 100:5.1f}% {sweep['status']} ({detail})"
        if line != self.last:
            self.stream.write(line.ljust(len(self.last)))
            self.stream.flush()
            self.last = line


def cmd_sweep_wait(args: argparse.Namespace, settings: Settings) -> int:
    from core.sweep_table import to_text

    bar = _SweepProgress()
    with _client(args, settings) as c:
        try:
            sweep = c.wait_sweep(
                args.sweep,
                interval=args.interval,
                timeout=args.wait_timeout,
                on_update=None if args.quiet else bar,
            )
        finally:
            bar.close()
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


def _sweep_simple(method: str) -> Any:
    def run(args: argparse.Namespace, settings: Settings) -> int:
        with _client(args, settings) as c:
            _print_json(getattr(c, method)(*([args.sweep] if hasattr(args, "sweep") else [])))
        return 0

    return run


# -- parser ---------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mergetune", description="MergeTune recovery service")
    sub = parser.add_subparsers(dest="command", required=True)

    def client_opts(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--url", help="API base URL (MERGETUNE_URL, default http://127.0.0.1:8000)")
        p.add_argument("--token", help="bearer token (MERGETUNE_TOKEN)")
        p.add_argument("--timeout", type=float, default=300.0, help="HTTP timeout in seconds")
        return p

    p = sub.add_parser("serve", help="run the API (with --embedded: plus a worker, SQLite, filesystem queue)")
    p.add_argument("--embedded", action="store_true", help="migrate, then run the API and one worker")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("worker", help="run a Celery worker (one per GPU)")
    p.add_argument("--concurrency", type=int, default=None)
    p.add_argument("--loglevel", default=None)
    p.add_argument("--hostname", "-n", default=None, help="Celery node name, e.g. gpu0@%%h")
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("migrate", help="apply database migrations (alembic upgrade head)")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("reconcile", help="requeue stalled/orphaned jobs and resend lost broker messages")
    p.add_argument("--once", action="store_true", help="one pass, print what changed as JSON, exit")
    p.set_defaults(func=cmd_reconcile)

    tok = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    p = tok.add_parser("create", help="create a bearer token for a project (created if new)")
    p.add_argument("--project", required=True)
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
    p.add_argument("token_ref", metavar="PREFIX_OR_ID")
    p.set_defaults(func=cmd_token_revoke)

    p = client_opts(sub.add_parser("upload", help="upload a checkpoint"))
    p.add_argument("file", type=Path)
    p.add_argument("--method", choices=["coop", "kgcoop", "linear_head"])
    p.add_argument("--name")
    p.add_argument(
        "--class-token-position", choices=["end", "middle", "front"], help="CoOp's CLASS_TOKEN_POSITION"
    )
    p.add_argument("--idempotency-key")
    p.set_defaults(func=cmd_upload)

    ds = sub.add_parser("dataset", help="datasets").add_subparsers(dest="dataset_command", required=True)
    p = client_opts(ds.add_parser("create", help="register a dataset"))
    p.add_argument("--name", required=True)
    p.add_argument("--kind", required=True, choices=["builtin", "coop", "imagefolder"])
    p.add_argument("--path", help="relative to the server's data root")
    p.add_argument("--coop-name")
    p.add_argument("--options", help="JSON object of kind-specific options")
    p.set_defaults(func=cmd_dataset_create)
    p = client_opts(ds.add_parser("list"))
    p.set_defaults(func=cmd_dataset_list)

    job = sub.add_parser("job", help="jobs").add_subparsers(dest="job_command", required=True)
    p = client_opts(job.add_parser("create", help="create a recovery job"))
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True)
    p.add_argument("--model", help="backbone model, e.g. ViT-B-16 or tiny-clip")
    p.add_argument("--pretrained", help="backbone weights tag, e.g. openai or builtin")
    p.add_argument("--hp", action="append", metavar="KEY=VALUE", help="a hyperparameter (repeatable)")
    p.add_argument("--hyperparameters", help="JSON object of hyperparameters")
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE")
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
    p.add_argument("--idempotency-key")
    p.set_defaults(func=cmd_job_create)
    p = client_opts(job.add_parser("wait", help="wait for a job with a progress bar on stderr"))
    p.add_argument("job")
    p.add_argument("--interval", type=float, default=1.0)
    p.add_argument("--wait-timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_job_wait)
    for name, method in (("get", "get_job"), ("cancel", "cancel_job"), ("events", "job_events")):
        p = client_opts(job.add_parser(name))
        p.add_argument("job")
        p.set_defaults(func=_simple(method))
    p = client_opts(job.add_parser("list"))
    p.add_argument("--status")
    p.add_argument("--dataset")
    p.set_defaults(func=cmd_job_list)

    p = client_opts(sub.add_parser("download", help="download a job's artifacts"))
    p.add_argument("job")
    p.add_argument("--name", action="append", help="artifact name (repeatable; default: all)")
    p.add_argument("--out", type=Path, default=Path("."))
    p.set_defaults(func=cmd_download)
    return parser
    sw = sub.add_parser("sweep", help="sweeps: many jobs from a CoOp output tree or a grid").add_subparsers(
        dest="sweep_command", required=True
    )
    p = client_opts(sw.add_parser("create", help="create a sweep from a tree archive or from cells"))
    p.add_argument("--tree", type=Path, help="zip/tar of a CoOp output directory")
    p.add_argument("--cell", action="append", metavar="CKPT:DATASET[:SEED]", help="a cell (repeatable)")
    p.add_argument(
        "--dataset-map", action="append", metavar="TREE_NAME=DATASET_ID", help="default: datasets by name"
    )
    p.add_argument("--name")
    p.add_argument("--model", help="backbone model, e.g. ViT-B-16 or tiny-clip")
    p.add_argument("--pretrained", help="backbone weights tag, e.g. openai or builtin")
    p.add_argument("--hp", action="append", metavar="KEY=VALUE", help="a shared hyperparameter (repeatable)")
    p.add_argument("--hyperparameters", help="JSON object of shared hyperparameters")
    p.add_argument("--grid", action="append", metavar="KEY=V1,V2", help="a grid axis (repeatable)")
    p.add_argument("--protocol", choices=["base2novel", "all"])
    p.add_argument("--class-token-position", choices=["end", "middle", "front"])
    p.add_argument("--metadata", action="append", metavar="KEY=VALUE")
    p.add_argument("--idempotency-key")
    p.set_defaults(func=cmd_sweep_create)
    p = client_opts(sw.add_parser("wait", help="wait for a sweep (progress on stderr), then print its table"))
    p.add_argument("sweep")
    p.add_argument("--interval", type=float, default=2.0)
    p.add_argument("--wait-timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_sweep_wait)
    p = client_opts(sw.add_parser("download", help="download the report (json, csv, tex, html)"))
    p.add_argument("sweep")
    p.add_argument("--format", action="append", choices=["json", "csv", "tex", "html"])
    p.add_argument("--out", type=Path, default=Path("."))
    p.set_defaults(func=cmd_sweep_download)
    for name, method in (("get", "get_sweep"), ("cancel", "cancel_sweep")):
        p = client_opts(sw.add_parser(name))
        p.add_argument("sweep")
        p.set_defaults(func=_sweep_simple(method))
    p = client_opts(sw.add_parser("list"))
    p.set_defaults(func=_sweep_simple("list_sweeps"))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = get_settings()
    logging.basicConfig(
        level=getattr(logging, settings.LOG_LEVEL.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("httpx").setLevel(logging.WARNING)
    try:
        return int(args.func(args, settings) or 0)
    except ApiError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
