"""Fixtures for the dashboard tests: a real stack (Postgres database, Redis broker, uvicorn serving the
API + dashboard, a Celery worker on the tiny random CLIP and the builtin dataset) and a real headless
Chromium from the distribution (/usr/bin/chromium) driven by Playwright.

The stack helpers (fresh database, settings, row factories, the worker subprocess) are the service
suite's, from tests/worker/worker_support.py. Screenshots of failed browser tests go to
test-artifacts/<test>.png, with the worker and API logs next to them.

The HTTP dashboard tests (no browser, no worker) use ``settings`` and ``app_client``: the app on the
session Postgres database with a Redis database index of their own as the broker.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_support import BROKER_URL, REPO, ApiProcess, Stack, ws
from fastapi.testclient import TestClient

ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
    "--disable-quic",
]
REDIS_DB = 12  # this suite's Redis database index (worker tests use 13, e2e 14)


def _chromium_missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is not installed (apt-get install -y chromium chromium-driver)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright Python package is not installed (.venv/bin/pip install playwright)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _chromium_missing()
    if reason is None:
        return
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"no headless Chromium: {reason}"))


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.models import Project
    from mergetune.common.storage import LocalStore

    home = tmp_path_factory.mktemp("browser-stack")
    with ws.fresh_database("mt_browser") as db_url:
        ws.flush_redis(REDIS_DB)
        settings = ws.make_settings(home / "home", db_url, f"{ws.REDIS_URL}/{REDIS_DB}")
        project_id = ws.make_project(db_url, name="browser-tests")
        with session_scope(db_url) as s:
            _, token = repo.create_token(s, s.get(Project, project_id))
        ckpt_id = ws.make_checkpoint(db_url, LocalStore(settings.ARTIFACT_URL), project_id, ws.tiny_ctx())
        dataset_id = ws.make_dataset(db_url, settings, project_id)
        env = ws.settings_env(settings)
        worker = ws.WorkerProcess(env, home / "worker.log", nodename="browser@test").start()
        api = ApiProcess(env, home / "api.log").start()
        stack = Stack(api.url, token, project_id, ckpt_id, dataset_id, db_url, api, worker)
        try:
            yield stack
        finally:
            api.stop()
            worker.stop()
            for log in (home / "worker.log", home / "api.log"):
                if log.exists():
                    ARTIFACTS.mkdir(exist_ok=True)
                    shutil.copy(log, ARTIFACTS / f"browser-{log.name}")


@pytest.fixture(scope="session")
def finished_job(stack: Stack) -> dict[str, Any]:
    """A demo job run to completion by the real worker (created through the REST API)."""
    job = stack.create_job()
    return stack.wait_status(job["id"], {"succeeded", "failed", "cancelled"}, timeout=240)


# ------------------------------------------------------------------------------------------ the browser


@pytest.fixture
def browser_context(request: pytest.FixtureRequest, tmp_path: Path):
    """A fresh Chromium with an empty profile per test; screenshots of every open page on failure."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1280, "height": 900},
        )
        context.set_default_timeout(20_000)
        try:
            yield context
        finally:
            failed = any(
                getattr(getattr(request.node, f"rep_{when}", None), "failed", False)
                for when in ("setup", "call")
            )
            if failed:
                ARTIFACTS.mkdir(exist_ok=True)
                for i, page in enumerate(context.pages):
                    path = ARTIFACTS / f"{request.node.name}-{i}.png"
                    try:
                        page.screenshot(path=str(path), full_page=True)
                    except Exception:  # noqa: BLE001 - a crashed page must not hide the real failure
                        pass
            context.close()


@pytest.fixture
def page(browser_context):
    return browser_context.pages[0] if browser_context.pages else browser_context.new_page()


@pytest.fixture
def logged_in(page, stack: Stack):
    """The page, logged in through the login form."""
    page.goto(f"{stack.url}/login")
    page.fill("#token", stack.token)
    page.click("#login-submit")
    page.wait_for_selector("#jobs")
    return page


# ---------------------------------------------------------------------------------------------------
# the HTTP dashboard tests


@pytest.fixture(scope="module")
def _redis() -> Iterator[None]:
    import redis

    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    yield
    client.flushdb()
    client.close()


@pytest.fixture
def settings(tmp_path: Path, make_settings: Callable[..., Any], _redis: None) -> Any:
    return make_settings(tmp_path / "home", BROKER_URL=BROKER_URL)


@pytest.fixture
def app_client(settings: Any) -> Iterator[TestClient]:
    from mergetune.api.main import create_app

    with TestClient(create_app(settings)) as client:
        yield client
