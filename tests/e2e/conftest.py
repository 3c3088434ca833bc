"""End-to-end fixtures: a fresh Postgres database, Redis database index 14, a real uvicorn API process, a
real Celery worker process and a bearer token made by the real ``mergetune token create``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

import worker_support as ws  # noqa: E402

REDIS_DB = ws.E2E_REDIS_DB


@pytest.fixture(autouse=True)
def _one_torch_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def e2e_settings(tmp_path_factory):
    home = tmp_path_factory.mktemp("e2e") / "home"
    with ws.fresh_database("mt_e2e") as url:
        ws.flush_redis(REDIS_DB)
        yield ws.make_settings(home, url, f"{ws.REDIS_URL}/{REDIS_DB}")


@pytest.fixture(scope="module")
def e2e_env(e2e_settings):
    return ws.settings_env(e2e_settings)


@pytest.fixture(scope="module")
def stack(e2e_env, tmp_path_factory):
    """API + worker started together (their imports overlap), then both waited for."""
    logs = tmp_path_factory.mktemp("logs")
    w = ws.WorkerProcess(e2e_env, logs / "worker.log", nodename="e2e@test").start(wait=False)
    p = ws.ApiProcess(e2e_env, logs / "api.log").start(wait=False)
    tok = subprocess.Popen(
        [sys.executable, "-m", "mergetune.cli", "token", "create", "--project", "e2e"],
        cwd=ws.REPO,
        env=e2e_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = tok.communicate(timeout=120)
        assert tok.returncode == 0, err
        p.wait_ready(90)
        w.wait_ready(90)
        yield p, w, out.strip().splitlines()[-1]
    finally:
        p.stop()
        w.stop()


@pytest.fixture(scope="module")
def api(stack):
    return stack[0]


@pytest.fixture(scope="module")
def celery_worker(stack):
    return stack[1]


@pytest.fixture(scope="module")
def token(stack):
    """Made by the real ``mergetune token create`` (same database), while the processes start."""
    return stack[2]


@pytest.fixture(scope="session")
def checkpoint_file(tmp_path_factory):
    """A Dassl-layout prompts.pth.tar of a 'fine-tuned' tiny-test context, the way users upload them."""
    from mergetune.core.checkpoints.export import export_prompts

    out = tmp_path_factory.mktemp("ckpt")
    paths = export_prompts(
        out, ws.tiny_ctx(), token_prefix=None, token_suffix=None, metadata={"method": "coop"}, epoch=50
    )
    return paths["prompts.pth.tar"]
