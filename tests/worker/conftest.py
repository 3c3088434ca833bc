from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worker_support as ws  # noqa: E402

REDIS_DB = ws.WORKER_REDIS_DB


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def worker_pg_url():
    with ws.fresh_database("mt_worker") as url:
        yield url


@pytest.fixture
def wsettings(tmp_path, worker_pg_url):
    ws.flush_redis(REDIS_DB)
    return ws.make_settings(tmp_path / "home", worker_pg_url, f"{ws.REDIS_URL}/{REDIS_DB}")


@pytest.fixture
def store(wsettings):
    from mergetune.common.storage import LocalStore

    return LocalStore(wsettings.ARTIFACT_URL)


@pytest.fixture(scope="session")
def ctx_ft():
    return ws.tiny_ctx()


@pytest.fixture
def clean_queue(wsettings):
    """The worker tests share one database, and a worker takes the next job by fair share, not the
    job its message names: no queued or running job of an earlier test may compete."""
    from sqlalchemy import update

    from mergetune.common.db import session_scope
    from mergetune.common.models import Job, utcnow

    with session_scope(wsettings.DATABASE_URL) as s:
        s.execute(
            update(Job)
            .where(Job.status.in_(["queued", "validating", "running", "evaluating", "cancelling"]))
            .values(status="cancelled", finished_at=utcnow())
        )


@pytest.fixture
def rows(wsettings, store, ctx_ft, clean_queue):
    """(project_id, checkpoint_id, dataset_id) on the tiny backbone and builtin dataset, with no
    unfinished job of an earlier test left in the shared database."""
    url = wsettings.DATABASE_URL
    project = ws.make_project(url)
    ck = ws.make_checkpoint(url, store, project, ctx_ft)
    ds = ws.make_dataset(url, wsettings, project)
    return project, ck, ds


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible HTTP server on a free local port: moto's server mode (``moto[server]``)."""
    moto_server = pytest.importorskip("moto.server")
    port = ws.free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_credentials(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
