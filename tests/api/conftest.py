"""API fixtures: an app on the session Postgres database, a Redis database index of its own as the
broker (jobs are enqueued there and observed, no worker runs), and per-test projects/tokens."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import BROKER_URL, TINY_DATASET, live_server, new_token, upload
from fastapi.testclient import TestClient


@pytest.fixture(scope="session")
def redis_client() -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(BROKER_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def settings(tmp_path: Path, make_settings: Callable[..., Any], redis_client: Any) -> Any:
    return make_settings(tmp_path / "home", BROKER_URL=BROKER_URL)


@pytest.fixture
def make_client(settings: Any) -> Iterator[Callable[..., TestClient]]:
    """Build a started TestClient, optionally with settings overrides."""
    from mergetune.api.main import create_app

    clients: list[TestClient] = []

    def _make(**overrides: Any) -> TestClient:
        s = settings.model_copy(update=overrides) if overrides else settings
        c = TestClient(create_app(s))
        c.__enter__()
        clients.append(c)
        return c

    yield _make
    for c in clients:
        c.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def live_port(settings: Any) -> Iterator[int]:
    """The port of the app served by a real uvicorn, in a thread."""
    with live_server(settings) as port:
        yield port


@pytest.fixture
def live_url(live_port: int) -> str:
    return f"http://127.0.0.1:{live_port}"


@pytest.fixture
def env_settings(monkeypatch: pytest.MonkeyPatch, settings: Any) -> Iterator[Any]:
    """Point get_settings() (what the CLI reads) at the test database."""
    from mergetune.common.settings import get_settings

    monkeypatch.setenv("MERGETUNE_HOME", str(settings.HOME))
    monkeypatch.setenv("MERGETUNE_DATABASE_URL", settings.DATABASE_URL)
    monkeypatch.setenv("MERGETUNE_BROKER_URL", settings.BROKER_URL)
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


@pytest.fixture
def auth(settings: Any) -> dict[str, str]:
    """Authorization headers of a fresh project."""
    return {"Authorization": f"Bearer {new_token(settings.DATABASE_URL)}"}


@pytest.fixture
def other_auth(settings: Any) -> dict[str, str]:
    return {"Authorization": f"Bearer {new_token(settings.DATABASE_URL)}"}


@pytest.fixture(scope="session")
def ctx_and_bytes() -> tuple[Any, bytes]:
    """A Dassl-style CoOp checkpoint written with torch.save: ctx [4, 512] (ViT-B-16 width)."""
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    ctx = torch.randn(4, 512, generator=g)
    state = {
        "state_dict": {
            "ctx": ctx,
            "token_prefix": torch.zeros(3, 1, 512),
            "token_suffix": torch.zeros(3, 72, 512),
        },
        "epoch": 50,
        "optimizer": None,
        "scheduler": None,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return ctx.numpy().copy(), buf.getvalue()


@pytest.fixture
def checkpoint(client: TestClient, auth: dict[str, str], ctx_and_bytes: tuple[Any, bytes]) -> dict[str, Any]:
    r = upload(client, auth, ctx_and_bytes[1])
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "ready", r.text
    return r.json()


@pytest.fixture
def dataset(client: TestClient, auth: dict[str, str]) -> dict[str, Any]:
    r = client.post("/v1/datasets", headers=auth, json=TINY_DATASET)
    assert r.status_code == 201, r.text
    return r.json()


@pytest.fixture
def job_body(checkpoint: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    return {"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"]}
