"""``mergetune.Client`` and ``mergetune.AsyncClient`` against the real app (uvicorn on the test Postgres,
jobs enqueued on Redis, no worker): one scenario, run through both, covers every method the CLI uses,
paging, waiting, all-or-nothing downloads and the API's errors."""

from __future__ import annotations

import asyncio
import inspect
import json
from pathlib import Path
from typing import Any

import pytest
from api_support import TINY_DATASET
from tree_writer import coop_tree, zip_bytes

import mergetune
from mergetune import ApiError

OPTS = TINY_DATASET["options"]


async def _(value: Any) -> Any:
    """The result of a client method: awaited for the async client, as is for the sync one."""
    return await value if inspect.isawaitable(value) else value


async def _scenario(c: Any, tmp: Path, ckpt_bytes: bytes) -> None:
    assert (await _(c.health()))["status"] == "ok"
    ckpt_file = tmp / "ft.pth.tar"
    ckpt_file.write_bytes(ckpt_bytes)

    # checkpoints
    ckpt = await _(c.upload_checkpoint(ckpt_file, name="ft", idempotency_key="same-upload"))
    assert ckpt["status"] == "ready" and ckpt["name"] == "ft"
    again = await _(c.upload_checkpoint(ckpt_file, name="ft", idempotency_key="same-upload"))
    assert again["id"] == ckpt["id"]
    assert (await _(c.get_checkpoint(ckpt["id"])))["id"] == ckpt["id"]
    assert [x["id"] for x in await _(c.list_checkpoints())] == [ckpt["id"]]

    # datasets, listed across pages of one
    ds = [await _(c.create_dataset(f"tiny_{n}", "builtin", options=OPTS)) for n in ("a", "b", "c")]
    assert (await _(c.get_dataset(ds[0]["id"])))["name"] == "tiny_a"
    listed = await _(c.list_datasets(page_size=1))
    assert sorted(d["id"] for d in listed) == sorted(d["id"] for d in ds)
    with pytest.raises(ApiError) as exc:
        await _(c.create_dataset("bad", "builtin", options={"num_classes": "six"}))
    assert (exc.value.status, exc.value.param) == (422, "options")

    # jobs: list (newest first, filtered, paged), events, cancel, wait
    jobs = [await _(c.create_job(ckpt["id"], d["id"], hyperparameters={"epochs": 1})) for d in ds[:2]]
    assert all(j["status"] == "queued" for j in jobs)
    newest_first = [j["id"] for j in reversed(jobs)]
    assert [j["id"] for j in await _(c.list_jobs(page_size=1))] == newest_first
    assert [j["id"] for j in await _(c.list_jobs(dataset_id=ds[1]["id"]))] == [jobs[1]["id"]]
    with pytest.raises(TimeoutError, match=f"job {jobs[0]['id']} still queued"):
        await _(c.wait_job(jobs[0]["id"], interval=0.01, timeout=0.05))
    cancelled = await _(c.cancel_job(jobs[0]["id"]))
    assert cancelled["status"] == "cancelled"
    seen: list[str] = []
    done = await _(
        c.wait_job(jobs[0]["id"], interval=0.01, timeout=5, on_update=lambda j: seen.append(j["status"]))
    )
    assert done["status"] == "cancelled" and seen == ["cancelled"]
    assert [j["id"] for j in await _(c.list_jobs(status="cancelled"))] == [jobs[0]["id"]]
    page = await _(c.job_events(jobs[0]["id"]))
    assert len(page["data"]) >= 2 and not page["has_more"]
    every = await _(c.list_job_events(jobs[0]["id"], page_size=1))
    assert every == page["data"]
    first = page["data"][0]["id"]
    assert await _(c.list_job_events(jobs[0]["id"], after=first)) == page["data"][1:]
    assert (await _(c.job_events(jobs[0]["id"], limit=1)))["has_more"] is True

    # artifacts: none yet; a failed download leaves nothing behind
    assert await _(c.list_artifacts(jobs[0]["id"])) == []
    assert await _(c.download_artifacts(jobs[0]["id"], tmp / "none")) == []
    with pytest.raises(ApiError) as exc:
        await _(c.download_artifacts(jobs[0]["id"], tmp / "dl" / "deep", ["report.json"]))
    assert exc.value.status == 404 and not (tmp / "dl").exists()
    with pytest.raises(ApiError):
        await _(c.download_artifact(jobs[0]["id"], "report.json", tmp / "one" / "report.json"))
    assert not (tmp / "one").exists()

    # sweeps: from cells and from a tree; get, list, cancel, wait, the reports
    cells = [{"checkpoint_id": ckpt["id"], "dataset_id": d["id"], "seed": 1} for d in ds[:2]]
    sweep = await _(c.create_sweep({"name": "cells", "cells": cells, "hyperparameters": {"epochs": 1}}))
    assert sweep["progress"]["jobs"] == 2 and sweep["name"] == "cells"
    tree = tmp / "output.zip"
    tree.write_bytes(zip_bytes(coop_tree([("tiny_a", 1, ckpt_bytes), ("tiny_b", 2, ckpt_bytes)])))
    from_tree = await _(c.create_sweep({"name": "tree"}, tree=tree, idempotency_key="tree-1"))
    assert from_tree["source"]["runs"] == 2
    assert (await _(c.create_sweep({"name": "tree"}, tree=tree, idempotency_key="tree-1")))[
        "id"
    ] == from_tree["id"]
    assert (await _(c.get_sweep(sweep["id"])))["id"] == sweep["id"]
    assert {s["id"] for s in await _(c.list_sweeps(page_size=1))} == {sweep["id"], from_tree["id"]}
    assert (await _(c.cancel_sweep(sweep["id"])))["status"] == "cancelled"
    assert (await _(c.wait_sweep(sweep["id"], interval=0.01, timeout=5)))["status"] == "cancelled"
    report = json.loads(await _(c.sweep_report(sweep["id"], "json")))
    assert report["sweep"]["id"] == sweep["id"] and "table" in report
    paths = await _(c.download_sweep_report(sweep["id"], tmp / "report"))
    assert sorted(p.name for p in paths) == sorted(
        f"{sweep['id']}-report.{f}" for f in ("csv", "html", "json", "tex", "txt")
    )
    with pytest.raises(ApiError) as exc:
        await _(c.get_sweep("swp_nope"))
    assert exc.value.status == 404

    # delete: refused while an unfinished job uses the checkpoint, then gone from the API and the store
    with pytest.raises(ApiError) as exc:
        await _(c.delete_checkpoint(ckpt["id"]))
    assert (exc.value.status, exc.value.code) == (409, "in_use")
    await _(c.cancel_job(jobs[1]["id"]))
    await _(c.cancel_sweep(from_tree["id"]))
    deleted = await _(c.delete_checkpoint(ckpt["id"]))
    assert deleted["id"] == ckpt["id"] and deleted["deleted"] is True and deleted["freed_bytes"] > 0
    assert ckpt["id"] not in {x["id"] for x in await _(c.list_checkpoints())}


def test_sync_client(live_url, auth, ctx_and_bytes, tmp_path):
    token = auth["Authorization"].split()[1]
    with mergetune.Client(live_url, token) as c:
        asyncio.run(_scenario(c, tmp_path, ctx_and_bytes[1]))


def test_async_client(live_url, auth, ctx_and_bytes, tmp_path):
    token = auth["Authorization"].split()[1]

    async def run() -> None:
        async with mergetune.AsyncClient(live_url, token) as c:
            await _scenario(c, tmp_path, ctx_and_bytes[1])

    asyncio.run(run())


def test_errors_without_a_server_or_a_token(live_url, tmp_path):
    import httpx

    with mergetune.Client(live_url, "mt_wrong") as c, pytest.raises(ApiError) as exc:
        c.list_jobs()
    assert exc.value.status == 401

    async def unreachable() -> None:
        async with mergetune.AsyncClient("http://127.0.0.1:9", "mt_x", timeout=2) as c:
            await c.get_job("job_x")

    with pytest.raises(httpx.ConnectError):
        asyncio.run(unreachable())
