"""Fault injection on private servers: this package's own Postgres cluster and redis-server (spare
ports, temporary directories), the API (uvicorn), the reconciler (``mergetune reconcile``) and real Celery
workers started as docker-compose starts them, on the tiny model. Short reconcile intervals and stall
timeouts come from settings."""

from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

import fault_support as fs  # noqa: E402
import worker_support as ws  # noqa: E402

#: Reliability settings of the processes under test (seconds).
FAULT_SETTINGS = {
    "DB_RETRY_SECONDS": 7.0,  # a 5 s outage is ridden out in place; a 9 s one hands the job back
    "RECONCILE_INTERVAL": 1.0,
    "RECONCILE_QUEUE_GRACE": 2.0,
    "RECONCILE_STALL_TIMEOUT": 25.0,
}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def private_pg():
    pg = fs.PrivatePostgres().init()
    pg.start()
    try:
        yield pg
    finally:
        pg.destroy()


@pytest.fixture(scope="session")
def private_redis():
    r = fs.PrivateRedis()
    r.start()
    try:
        yield r
    finally:
        r.destroy()


@pytest.fixture(scope="session")
def fault_settings(private_pg, private_redis, tmp_path_factory):
    from mergetune.common.db import get_engine, upgrade_head

    url = private_pg.create_database(f"mt_faults_{uuid.uuid4().hex[:6]}")
    upgrade_head(url)
    home = tmp_path_factory.mktemp("faults") / "home"
    settings = ws.make_settings(home, url, private_redis.url, **FAULT_SETTINGS)
    yield settings
    get_engine(url).dispose()


@pytest.fixture(scope="session")
def fault_env(fault_settings):
    env = ws.settings_env(fault_settings)
    env.update({f"MERGETUNE_{k}": str(v) for k, v in FAULT_SETTINGS.items()})
    return env


@pytest.fixture(scope="session")
def stack(fault_env, fault_settings, tmp_path_factory):
    """The API and the reconciler (workers are started by each test), a project with its bearer token,
    a tiny checkpoint and the built-in dataset."""
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.storage import LocalStore

    logs = tmp_path_factory.mktemp("fault-logs")
    api = ws.ApiProcess(fault_env, logs / "api.log").start(wait=False)
    rec = fs.ReconcilerProcess(fault_env, logs / "reconcile.log").start()
    url = fault_settings.DATABASE_URL
    with session_scope(url) as s:
        project = repo.get_or_create_project(s, "faults")
        _token, secret = repo.create_token(s, project)
        project_id = project.id
    store = LocalStore(fault_settings.ARTIFACT_URL)
    ck = ws.make_checkpoint(url, store, project_id, ws.tiny_ctx())
    ds = ws.make_dataset(url, fault_settings, project_id)
    try:
        api.wait_ready(90)
        yield {"api": api, "reconciler": rec, "token": secret, "checkpoint": ck, "dataset": ds, "logs": logs}
    finally:
        rec.stop()
        api.stop()
