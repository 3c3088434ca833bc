"""Shared by tests/worker and tests/e2e: a fresh Postgres database per test session (Alembic migrations
applied), a Redis database index, row factories, and a real Celery worker process."""

from __future__ import annotations

import hashlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg

REPO = Path(__file__).resolve().parents[2]
PG_HOST = "127.0.0.1"
PG_USER = "postgres"
#: This session's private Redis (started by tests/conftest.py), no database number.
REDIS_URL = os.environ.get("MERGETUNE_TEST_REDIS_URL", "redis://127.0.0.1:6379")
#: Redis database indexes of these suites (flushed at start): tests/worker and tests/e2e.
WORKER_REDIS_DB = 13
E2E_REDIS_DB = 14

#: Tiny everything: the random tiny-test CLIP and 6 builtin classes (3 base + 3 novel).
TINY_BACKBONE = {"model": "tiny-test", "pretrained": "random"}
TINY_DATASET_OPTIONS = {"num_classes": 6, "train_per_class": 4, "val_per_class": 2, "test_per_class": 4}


def pg_url(dbname: str) -> str:
    return f"postgresql+psycopg://{PG_USER}@{PG_HOST}:5432/{dbname}"


@contextmanager
def fresh_database(prefix: str) -> Iterator[str]:
    """CREATE a uniquely named database, migrate it to head, yield its URL, DROP it."""
    from mergetune.common.db import get_engine, upgrade_head

    name = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(f"host={PG_HOST} user={PG_USER} dbname=postgres", autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = pg_url(name)
    try:
        upgrade_head(url)
        yield url
    finally:
        get_engine(url).dispose()
        with psycopg.connect(f"host={PG_HOST} user={PG_USER} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def create_token(env: dict[str, str], project: str) -> str:
    """``mergetune token create --project NAME``: the token is alone on the last line of stdout."""
    out = subprocess.run(
        [sys.executable, "-m", "mergetune.cli", "token", "create", "--project", project],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def flush_redis(db: int) -> None:
    import redis

    redis.Redis.from_url(f"{REDIS_URL}/{db}").flushdb()


def make_settings(home: Path, database_url: str, broker_url: str, **extra: Any):
    from mergetune.common.settings import Settings

    s = Settings(
        HOME=home,
        DATABASE_URL=database_url,
        BROKER_URL=broker_url,
        DATA_ROOT=home / "data",
        ARTIFACT_URL=str(home / "artifacts"),
        DEVICE="cpu",
        **extra,
    )
    s.ensure_dirs()
    return s


def settings_env(settings: Any) -> dict[str, str]:
    """The MERGETUNE_* environment that reproduces ``settings`` in a subprocess."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGETUNE_")}
    env.update(
        MERGETUNE_HOME=str(settings.HOME),
        MERGETUNE_DATABASE_URL=settings.DATABASE_URL,
        MERGETUNE_BROKER_URL=settings.BROKER_URL,
        MERGETUNE_DATA_ROOT=str(settings.DATA_ROOT),
        MERGETUNE_ARTIFACT_URL=settings.ARTIFACT_URL,
        MERGETUNE_DEVICE=settings.DEVICE,
        MERGETUNE_VISIBILITY_TIMEOUT=str(settings.VISIBILITY_TIMEOUT),
        MERGETUNE_PARSE_WORKERS=str(settings.PARSE_WORKERS),
        MERGETUNE_PARSE_QUEUE=str(settings.PARSE_QUEUE),
        MERGETUNE_LOG_LEVEL="INFO",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONUNBUFFERED="1",
        PYTHONPATH=str(REPO),
    )
    return env


# ---- row factories ------------------------------------------------------------------------------


def make_project(url: str, name: str | None = None) -> str:
    from mergetune.common.db import session_scope
    from mergetune.common.models import Project

    with session_scope(url) as s:
        p = Project(name=name or f"proj-{uuid.uuid4().hex[:8]}")
        s.add(p)
        s.flush()
        return p.id


def tiny_ctx(n_ctx: int = 4, seed: int = 0):
    """A 'fine-tuned' context for the tiny-test backbone: the "a photo of a" init plus a little noise."""
    import torch

    from mergetune.core.config import BackboneSpec, PromptLearnerSpec
    from mergetune.core.model.backbone import load_backbone
    from mergetune.core.model.prompts import init_ctx

    bb = load_backbone(BackboneSpec(**TINY_BACKBONE))
    ctx = init_ctx(bb, PromptLearnerSpec(n_ctx=n_ctx, ctx_init="a photo of a" if n_ctx == 4 else None))
    g = torch.Generator().manual_seed(seed)
    return (ctx + 0.02 * torch.randn(ctx.shape, generator=g)).float().contiguous()


def make_checkpoint(
    url: str,
    store: Any,
    project_id: str,
    ctx: Any,
    *,
    method: str = "coop",
    head: dict[str, Any] | None = None,
) -> str:
    """A ready checkpoint row whose extracted tensors ({"ctx"}, or ``head`` {"weight", "bias"}) are stored."""
    from safetensors.torch import save as st_save

    from mergetune.common.db import session_scope
    from mergetune.common.models import Checkpoint, new_id

    ck_id = new_id("ckpt")
    data = st_save(head if head is not None else {"ctx": ctx})
    key = f"checkpoints/{ck_id}/tensors.safetensors"
    store.put_bytes(key, data)
    with session_scope(url) as s:
        s.add(
            Checkpoint(
                id=ck_id,
                project_id=project_id,
                name="tiny",
                filename="tiny.safetensors",
                bytes=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
                format="safetensors",
                method=method,
                status="ready",
                n_ctx=None if head is not None else int(ctx.shape[-2]),
                ctx_dim=None if head is not None else int(ctx.shape[-1]),
                csc=None if head is not None else ctx.dim() == 3,
                n_cls=int(head["weight"].shape[0]) if head is not None else None,
                original_key=key,
                tensors_key=key,
            )
        )
    return ck_id


def make_dataset(
    url: str,
    settings: Any,
    project_id: str,
    options: dict[str, Any] | None = None,
    name: str = "builtin-tiny",
) -> str:
    from mergetune.common.db import session_scope
    from mergetune.common.models import Dataset
    from mergetune.core.config import DatasetKind
    from mergetune.core.data import base_to_novel, open_dataset

    options = dict(TINY_DATASET_OPTIONS if options is None else options)
    ds = open_dataset(DatasetKind.builtin, settings.DATA_ROOT, "", options=options)
    task = base_to_novel(ds, 4, 1)
    with session_scope(url) as s:
        row = Dataset(
            project_id=project_id,
            name=name,
            kind="builtin",
            path="",
            options=options,
            num_classes=ds.num_classes,
            classnames=list(ds.classnames),
            base_classes=list(task.base_classnames),
            novel_classes=list(task.novel_classnames),
            split_sizes={k: len(v) for k, v in ds.splits.items()},
            template=ds.template,
            sha256_of_split=ds.split_sha256(),
        )
        s.add(row)
        s.flush()
        return row.id


def make_job(
    url: str,
    project_id: str,
    checkpoint_id: str,
    dataset_id: str,
    *,
    status: str = "queued",
    job_type: str = "prompt",
    eval_dataset_ids: list[str] | None = None,
    **hp: Any,
) -> str:
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job, utcnow
    from mergetune.core.config import HeadHyperparameters, Hyperparameters

    if job_type == "linear_head":
        params = {"epochs": 2, "batch_size": 8, "shots": 4, **hp}
        resolved = HeadHyperparameters(**params).model_dump(mode="json")
    else:
        params = {"epochs": 2, "batch_size": 4, "shots": 4, "bank_views": 2, **hp}
        resolved = Hyperparameters(**params).model_dump(mode="json")
    with session_scope(url) as s:
        job = Job(
            project_id=project_id,
            checkpoint_id=checkpoint_id,
            dataset_id=dataset_id,
            job_type=job_type,
            backbone=dict(TINY_BACKBONE),
            hyperparameters=resolved,
            metadata_={"test": "yes"},
            eval_dataset_ids=eval_dataset_ids,
            status=status,
            queued_at=utcnow(),
        )
        s.add(job)
        s.flush()
        return job.id


def job_row(url: str, job_id: str) -> dict[str, Any]:
    from mergetune.worker.jobdb import load_job_inputs

    return load_job_inputs(url, job_id)["job"]


def events(url: str, job_id: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from mergetune.common.db import session_scope
    from mergetune.common.models import JobEvent

    with session_scope(url) as s:
        rows = s.execute(select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)).scalars()
        return [{"type": e.type, "level": e.level, "message": e.message, "data": e.data} for e in rows]


def artifacts(url: str, job_id: str) -> list[dict[str, Any]]:
    from sqlalchemy import select

    from mergetune.common.db import session_scope
    from mergetune.common.models import Artifact

    with session_scope(url) as s:
        rows = s.execute(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)).scalars()
        return [
            {"name": a.name, "bytes": a.bytes, "sha256": a.sha256, "key": a.key, "id": a.id} for a in rows
        ]


def wait_for(pred: Callable[[], Any], timeout: float, interval: float = 0.1, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def load_safetensors_bytes(data: bytes) -> dict[str, Any]:
    from safetensors.torch import load

    return load(data)


# ---- a real Celery worker process ----------------------------------------------------------------


def terminate(proc: subprocess.Popen[bytes] | None, log: Any, *, grace: float) -> None:
    """SIGTERM, ``grace`` seconds for a warm shutdown, then SIGKILL; closes the process's log file."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    log.close()


class WorkerProcess:
    """``celery -A mergetune.worker.celery_app worker --pool solo -c 1`` as a subprocess with its own log file."""

    def __init__(self, env: dict[str, str], log_path: Path, nodename: str = "w1@test") -> None:
        self.env, self.log_path, self.nodename = env, log_path, nodename
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: float = 60.0, *, wait: bool = True) -> WorkerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "mergetune.worker.celery_app",
                "worker",
                "--pool",
                "solo",
                "-c",
                "1",
                "-Q",
                "mergetune",
                "-n",
                self.nodename,
                "--without-gossip",
                "--without-mingle",
                "--loglevel",
                "INFO",
            ],  # fmt: skip
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready(wait_ready)
        return self

    def wait_ready(self, timeout: float = 60.0) -> WorkerProcess:
        assert self.proc is not None
        wait_for(lambda: self.ready() or self._died(), timeout, 0.2, "the celery worker to be ready")
        if self.proc.poll() is not None:
            raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.log()}")
        return self

    def _died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def log(self) -> str:
        return self.log_path.read_bytes()[self._offset :].decode(errors="replace")

    def ready(self) -> bool:
        return " ready." in self.log()

    def kill(self) -> None:
        """SIGKILL: no warm shutdown, no ack, no cleanup: a node lost mid-job."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self._log.close()

    def stop(self) -> None:
        terminate(self.proc, self._log, grace=20)


class ApiProcess:
    """``uvicorn --factory mergetune.api.main:create_app`` as a subprocess with its own log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: float = 60.0, *, wait: bool = True) -> ApiProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "mergetune.api.main:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],  # fmt: skip
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self.wait_ready(wait_ready) if wait else self

    def wait_ready(self, timeout: float = 60.0) -> ApiProcess:
        import httpx

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"API exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(up, timeout, 0.2, "the API to answer /healthz")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        terminate(self.proc, self._log, grace=15)


def io_bytes(data: bytes) -> io.BytesIO:
    return io.BytesIO(data)
