"""Redis restarted without persistence while two jobs wait in the queue (no worker running yet): the
messages are gone, Postgres still says ``queued``; the reconciler re-enqueues each once and both finish
when a worker comes."""

from __future__ import annotations

import json
import os
import time

import httpx
import pytest
import worker_support as ws

pytestmark = pytest.mark.slow


def _queued_ids(r) -> list[str]:
    from mergetune.worker.reconcile import _job_id_of

    return sorted(j for raw in r.lrange("mergetune", 0, -1) if (j := _job_id_of(raw)) is not None)


def test_redis_restart_without_persistence_loses_no_queued_job(
    stack, fault_env, fault_settings, private_redis, tmp_path
):
    url = fault_settings.DATABASE_URL
    api, ck, ds = stack["api"], stack["checkpoint"], stack["dataset"]
    client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {stack['token']}"}, timeout=30)
    body = {
        "checkpoint_id": ck,
        "dataset_id": ds,
        "backbone": ws.TINY_BACKBONE,
        "hyperparameters": {"epochs": 2, "batch_size": 4, "shots": 4},
    }
    ids = []
    for _ in range(2):
        r = client.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        ids.append(r.json()["id"])
    redis = private_redis.client()
    assert _queued_ids(redis) == sorted(ids)

    private_redis.kill()
    private_redis.start()  # same port, empty: no RDB, no AOF
    redis = private_redis.client()
    assert redis.llen("mergetune") == 0
    restarted = time.monotonic()

    # the reconciler (1 s interval, 2 s grace) sends each message again, once
    ws.wait_for(lambda: _queued_ids(redis) == sorted(ids), 30, 0.2, "the reconciler to re-enqueue both jobs")
    resent_after = time.monotonic() - restarted
    time.sleep(3 * fault_settings.RECONCILE_INTERVAL)
    assert _queued_ids(redis) == sorted(ids)  # a message present is never sent twice
    for job_id in ids:
        assert ws.job_row(url, job_id)["status"] == "queued"
        assert any("re-enqueued" in e["message"] for e in ws.events(url, job_id))

    worker = ws.WorkerProcess(fault_env, tmp_path / "worker.log", nodename="faults-w2@test").start(120)
    try:
        for job_id in ids:
            ws.wait_for(
                lambda job_id=job_id: ws.job_row(url, job_id)["status"] in ("succeeded", "failed"),
                120,
                0.3,
                f"job {job_id} to finish",
            )
    finally:
        worker.stop()
        client.close()
    rows = [ws.job_row(url, job_id) for job_id in ids]
    assert [r["status"] for r in rows] == ["succeeded", "succeeded"], [r["error"] for r in rows]
    assert [r["attempts"] for r in rows] == [1, 1]  # each ran once
    for job_id in ids:
        assert [e["data"]["epoch"] for e in ws.events(url, job_id) if e["type"] == "epoch"] == [1, 2]
    report = {"jobs": 2, "finished": 2, "lost": 0, "resent_after_s": round(resent_after, 1)}
    if os.environ.get("MERGETUNE_FAULT_REPORT"):
        with open(os.environ["MERGETUNE_FAULT_REPORT"], "a") as f:
            f.write(json.dumps({"redis_restart": report}) + "\n")
    print(json.dumps(report))
