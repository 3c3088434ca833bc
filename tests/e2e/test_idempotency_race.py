"""Idempotency under real concurrency: a real uvicorn process on its own Postgres database, 20
Idempotency-Keys x 20 simultaneous identical requests each, for job creation and for checkpoint uploads.

Every request answers the winner's object: exactly one 202/201 (the request that created it) and 200 for
the others, with the same id; never a 5xx. One row per key, one queue message per job, and the artifact
store holds the files of the committed checkpoints only (losers' bytes and temporary upload files are
removed)."""

from __future__ import annotations

import asyncio
import io
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

import worker_support as ws  # noqa: E402

KEYS = 20
PARALLEL = 20
RACE_REDIS_DB = 15  # api 10, dashboard 11/12, worker 13, e2e 14

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def race_api(tmp_path_factory):
    import redis

    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    # This session's private Redis (read now: worker_support may have been imported before it started).
    broker = f"{os.environ.get('MERGETUNE_TEST_REDIS_URL', ws.REDIS_URL)}/{RACE_REDIS_DB}"
    home = tmp_path_factory.mktemp("race") / "home"
    with ws.fresh_database("mt_race") as url:
        redis.Redis.from_url(broker).flushdb()
        # every upload of the race waits for a parse slot (no 503 from a full parse queue)
        settings = ws.make_settings(home, url, broker, PARSE_QUEUE=KEYS * PARALLEL)
        env = ws.settings_env(settings)
        # Room for the 20 first-of-their-key uploads to wait for a parse slot: the bounded parse queue
        # answers 503 busy when full (by design, with Retry-After), which is not what this race is about.
        env["MERGETUNE_PARSE_QUEUE"] = str(KEYS * PARALLEL)
        api = ws.ApiProcess(env, home.parent / "api.log").start(wait=False)
        with session_scope(url) as s:
            _, secret = repo.create_token(s, repo.get_or_create_project(s, "race"))
        try:
            api.wait_ready(90)
            yield api, settings, {"Authorization": f"Bearer {secret}"}
        finally:
            api.stop()
            redis.Redis.from_url(broker).flushdb()


@pytest.fixture(scope="module")
def dassl_checkpoint() -> bytes:
    """A Dassl-layout CoOp checkpoint of about 1.8 MB (ctx [4, 512] with 12 classes' token buffers)."""
    import torch

    g = torch.Generator().manual_seed(3)
    state = {
        "state_dict": {
            "ctx": torch.randn(4, 512, generator=g),
            "token_prefix": torch.zeros(12, 1, 512),
            "token_suffix": torch.zeros(12, 72, 512),
        },
        "epoch": 50,
        "optimizer": None,
        "scheduler": None,
    }
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


async def _race(
    url: str, requests: list[tuple[str, dict[str, Any]]]
) -> list[tuple[str, int, dict[str, Any]]]:
    """Send every request at once (one connection each); (key, status, json body) per request."""
    import httpx

    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=180.0, limits=limits) as client:

        async def one(key: str, kwargs: dict[str, Any]) -> tuple[str, int, dict[str, Any]]:
            r = await client.post(**kwargs)
            try:
                body = r.json()
            except ValueError:
                body = {"raw": r.text}
            return key, r.status_code, body

        return await asyncio.gather(*(one(k, kw) for k, kw in requests))


def _check_race(results: list[tuple[str, int, dict[str, Any]]], created_status: int) -> dict[str, str]:
    """Per key: one created_status, the rest 200, one id. Returns key -> id."""
    statuses = Counter(status for _, status, _ in results)
    assert not [s for s in statuses if s >= 500], f"server errors: {statuses}"
    ids: dict[str, set[str]] = {}
    per_key: dict[str, Counter[int]] = {}
    for key, status, body in results:
        assert status in (created_status, 200), (status, body)
        ids.setdefault(key, set()).add(body["id"])
        per_key.setdefault(key, Counter())[status] += 1
    assert len(ids) == KEYS
    for key in ids:
        assert len(ids[key]) == 1, f"{key}: answered with {ids[key]}"
        assert per_key[key] == Counter({created_status: 1, 200: PARALLEL - 1}), (key, per_key[key])
    return {k: next(iter(v)) for k, v in ids.items()}


def test_20_keys_x_20_parallel_job_creations(race_api, dassl_checkpoint):
    import httpx
    import redis
    from sqlalchemy import func, select

    from mergetune.common.db import session_scope
    from mergetune.common.models import IdempotencyKey, Job
    from mergetune.common.tasks import JOBS_QUEUE

    api, settings, auth = race_api
    ck = httpx.post(
        f"{api.url}/v1/checkpoints",
        headers=auth,
        files={"file": ("prompts.pth.tar", dassl_checkpoint)},
    )
    assert ck.status_code == 201, ck.text
    ds = httpx.post(
        f"{api.url}/v1/datasets",
        headers=auth,
        json={"name": "tiny", "kind": "builtin", "options": ws.TINY_DATASET_OPTIONS},
    )
    assert ds.status_code == 201, ds.text
    queue = redis.Redis.from_url(settings.BROKER_URL)
    before = queue.llen(JOBS_QUEUE)

    body = {"checkpoint_id": ck.json()["id"], "dataset_id": ds.json()["id"], "metadata": {"race": "jobs"}}
    requests = [
        (
            f"job-key-{k}",
            {"url": "/v1/jobs", "json": body, "headers": {**auth, "Idempotency-Key": f"job-key-{k}"}},
        )
        for _ in range(PARALLEL)
        for k in range(KEYS)
    ]
    t0 = time.perf_counter()
    results = asyncio.run(_race(api.url, requests))
    elapsed = time.perf_counter() - t0
    ids = _check_race(results, created_status=202)

    with session_scope(settings.DATABASE_URL) as s:
        assert s.scalar(select(func.count()).select_from(Job)) == KEYS
        assert (
            s.scalar(
                select(func.count()).select_from(IdempotencyKey).where(IdempotencyKey.key.like("job-key-%"))
            )
            == KEYS
        )
        assert set(s.scalars(select(Job.id))) == set(ids.values())
    assert queue.llen(JOBS_QUEUE) - before == KEYS  # one queue message per created job
    print(f"jobs race: {len(results)} requests in {elapsed:.1f} s, statuses {Counter(r[1] for r in results)}")


def test_20_keys_x_20_parallel_uploads_leave_no_orphaned_bytes(race_api, dassl_checkpoint):
    from sqlalchemy import select

    from mergetune.common.db import session_scope
    from mergetune.common.models import Checkpoint

    api, settings, auth = race_api
    requests = [
        (
            f"upload-key-{k}",
            {
                "url": "/v1/checkpoints",
                "files": {"file": ("prompts.pth.tar", dassl_checkpoint)},
                "data": {"name": f"race-{k}"},
                "headers": {**auth, "Idempotency-Key": f"upload-key-{k}"},
            },
        )
        for _ in range(PARALLEL)
        for k in range(KEYS)
    ]
    t0 = time.perf_counter()
    results = asyncio.run(_race(api.url, requests))
    elapsed = time.perf_counter() - t0
    ids = _check_race(results, created_status=201)
    not_ready = Counter(
        (
            body["name"],
            body["status"],
            (body.get("error") or {}).get("code"),
            (body.get("error") or {}).get("message"),
        )
        for _, _, body in results
        if body["status"] != "ready"
    )
    assert not not_ready, f"valid uploads answered as not ready: {dict(not_ready)}"

    with session_scope(settings.DATABASE_URL) as s:
        rows = set(s.scalars(select(Checkpoint.id).where(Checkpoint.name.like("race-%"))))
        all_rows = set(s.scalars(select(Checkpoint.id)))
    assert rows == set(ids.values())
    # The store holds exactly the committed checkpoints' folders, each with its two files.
    store_root = Path(settings.ARTIFACT_URL) / "checkpoints"
    folders = {p.name for p in store_root.iterdir()}
    assert folders == all_rows, f"orphaned: {folders - all_rows}, missing: {all_rows - folders}"
    for ck_id in rows:
        files = sorted(
            p.relative_to(store_root / ck_id).as_posix()
            for p in (store_root / ck_id).rglob("*")
            if p.is_file()
        )
        assert files == ["original/prompts.pth.tar", "tensors.safetensors"], files
    assert [p.name for p in settings.tmp_dir.iterdir()] == []  # no spooled upload left behind
    print(
        f"uploads race: {len(results)} requests in {elapsed:.1f} s, statuses {Counter(r[1] for r in results)}"
    )
