"""API replicas: two real API processes on one Postgres database and one artifact store. Concurrent
identical uploads with one Idempotency-Key, spread over both processes, are parsed once per key (a
Postgres advisory lock holds the key across processes); every request answers the one object."""

from __future__ import annotations

import asyncio
import io
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

import worker_support as ws  # noqa: E402

REPLICA_REDIS_DB = 16
KEYS = 4
PARALLEL = 8

pytestmark = pytest.mark.slow


#: One API process as a deployment runs it, its mergetune log lines (INFO) on stderr.
SERVE = (
    "import logging, sys, uvicorn; "
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
    "uvicorn.run('mergetune.api.main:create_app', factory=True, host='127.0.0.1', port=int(sys.argv[1]), "
    "log_level='warning')"
)


class LoggingApi(ws.ApiProcess):
    def start(self, wait_ready: float = 60.0, *, wait: bool = True) -> LoggingApi:
        import subprocess

        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", SERVE, str(self.port)],
            cwd=ws.REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        if wait:
            self.wait_ready(wait_ready)
        return self


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    import redis

    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    broker = f"{os.environ.get('MERGETUNE_TEST_REDIS_URL', ws.REDIS_URL)}/{REPLICA_REDIS_DB}"
    root = tmp_path_factory.mktemp("replicas")
    with ws.fresh_database("mt_replicas") as url:
        redis.Redis.from_url(broker).flushdb()
        apis = []
        for name in ("a", "b"):  # each its own home (upload scratch), one shared store and database
            settings = ws.make_settings(root / name, url, broker, PARSE_QUEUE=KEYS * PARALLEL)
            env = ws.settings_env(settings)
            env["MERGETUNE_ARTIFACT_URL"] = str(root / "store")
            env["MERGETUNE_PARSE_QUEUE"] = str(KEYS * PARALLEL)
            env["MERGETUNE_LOG_LEVEL"] = "INFO"
            apis.append(LoggingApi(env, root / f"api-{name}.log").start(wait=False))
        with session_scope(url) as s:
            _, secret = repo.create_token(s, repo.get_or_create_project(s, "replicas"))
        try:
            for api in apis:
                api.wait_ready(90)
            yield apis, {"Authorization": f"Bearer {secret}"}
        finally:
            for api in apis:
                api.stop()
            redis.Redis.from_url(broker).flushdb()


def _checkpoint() -> bytes:
    import torch

    g = torch.Generator().manual_seed(5)
    state = {"state_dict": {"ctx": torch.randn(4, 512, generator=g), "token_prefix": torch.zeros(6, 1, 512)}}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_one_idempotency_key_is_parsed_once_across_processes(replicas):
    import httpx

    apis, auth = replicas
    data = _checkpoint()

    async def one(i: int, key: str) -> tuple[str, int, str]:
        api = apis[i % 2]
        async with httpx.AsyncClient(base_url=api.url, timeout=120) as c:
            r = await c.post(
                "/v1/checkpoints",
                headers={**auth, "Idempotency-Key": key},
                files={"file": ("model.pth.tar-50", data)},
            )
        return key, r.status_code, r.json().get("id", r.text)

    async def race() -> list[tuple[str, int, str]]:
        return await asyncio.gather(*(one(i, f"k{k}") for k in range(KEYS) for i in range(PARALLEL)))

    results = asyncio.run(race())
    assert all(code in (200, 201) for _, code, _ in results), results
    for k in range(KEYS):
        mine = [(code, ident) for key, code, ident in results if key == f"k{k}"]
        assert Counter(code for code, _ in mine) == {201: 1, 200: PARALLEL - 1}, mine
        assert len({ident for _, ident in mine}) == 1
    parses = sum(api.log().count("checkpoint parse:") for api in apis)
    assert parses == KEYS, [api.log()[-2000:] for api in apis]


def test_several_processes_need_the_postgres_deployment(tmp_path):
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGETUNE_")}
    env["MERGETUNE_HOME"] = str(tmp_path / "home")  # SQLite: one process
    for extra in (["--embedded"], []):
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "mergetune.cli",
                "serve",
                "--workers",
                "2",
                "--port",
                str(ws.free_port()),
                *extra,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 2, r.stderr[-2000:]
        assert "--workers needs the Postgres deployment" in r.stderr


def test_a_revoked_token_is_refused_by_every_process_within_the_cache_time(replicas):
    """Each process reuses a token it authenticated for AUTH_CACHE_SECONDS; a revocation made by a
    third process (here, as `mergetune token revoke` would) is refused by both within that time."""
    import time

    import httpx

    from mergetune.api.deps import AUTH_CACHE_SECONDS
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    apis, _ = replicas
    database = apis[0].env["MERGETUNE_DATABASE_URL"]
    with session_scope(database) as s:
        token, secret = repo.create_token(s, repo.get_or_create_project(s, "replicas-revoke"))
        token_id = token.id
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(timeout=30) as c:
        for api in apis:  # both know the token (the first use records last_used_at; then it is kept)
            for _ in range(3):
                assert c.get(f"{api.url}/v1/jobs", headers=headers).status_code == 200
        with session_scope(database) as s:
            repo.revoke_token(s, s.get(type(token), token_id))
        revoked = time.monotonic()
        refused: dict[str, float] = {}
        while len(refused) < len(apis):
            for api in apis:
                if api.url in refused:
                    continue
                r = c.get(f"{api.url}/v1/jobs", headers=headers)
                if r.status_code == 401:
                    assert r.json()["error"]["code"] == "token_revoked"
                    refused[api.url] = time.monotonic() - revoked
                else:
                    assert r.status_code == 200
            assert time.monotonic() - revoked < AUTH_CACHE_SECONDS + 2.0, f"still accepted: {refused}"
            time.sleep(0.1)
    assert max(refused.values()) <= AUTH_CACHE_SECONDS + 2.0
