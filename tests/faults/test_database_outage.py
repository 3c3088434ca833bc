"""Postgres stopped (``pg_ctl stop -m immediate``) for 5, 7 and 9 s in the middle of a job, then started
again: every job finishes, every epoch is reported exactly once, one set of artifacts; while the
database is down the API answers 503 ``database_unavailable`` with ``Retry-After`` (never 500) on one
kept-alive connection, ``/readyz`` 503 and ``/healthz`` 200."""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import httpx
import pytest
import worker_support as ws

pytestmark = pytest.mark.slow

EPOCHS = 20  # batch size 1: 0.2-0.5 s an epoch on the tiny model, so the outage lands mid-training
OUTAGES = (5.0, 7.0, 9.0)


def _probes(job_id: str, ck: str, ds: str) -> list[tuple[str, str, dict | None]]:
    body = {
        "checkpoint_id": ck,
        "dataset_id": ds,
        "backbone": ws.TINY_BACKBONE,
        "hyperparameters": {"epochs": 1},
    }
    return [
        ("GET", "/v1/jobs", None),
        ("GET", f"/v1/jobs/{job_id}", None),
        ("GET", f"/v1/jobs/{job_id}/events", None),
        ("GET", f"/v1/jobs/{job_id}/artifacts", None),
        ("GET", "/v1/checkpoints", None),
        ("GET", f"/v1/checkpoints/{ck}", None),
        ("GET", "/v1/datasets", None),
        ("GET", f"/v1/datasets/{ds}", None),
        ("POST", "/v1/jobs", body),
        (
            "POST",
            "/v1/datasets",
            {"name": "during-outage", "kind": "builtin", "options": ws.TINY_DATASET_OPTIONS},
        ),
        ("POST", "/v1/jobs/job_doesnotexist/cancel", None),
    ]


def test_database_stopped_mid_job_jobs_finish_and_the_api_answers_503(
    stack, fault_env, fault_settings, private_pg, tmp_path
):
    url = fault_settings.DATABASE_URL
    api, ck, ds = stack["api"], stack["checkpoint"], stack["dataset"]
    worker = ws.WorkerProcess(fault_env, tmp_path / "worker.log", nodename="faults-w1@test").start(120)
    client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {stack['token']}"}, timeout=30)
    rounds = []
    outage_statuses: Counter[tuple[str, int, str]] = Counter()
    retry_after: set[str | None] = set()

    try:
        for outage in OUTAGES:
            body = {
                "checkpoint_id": ck,
                "dataset_id": ds,
                "backbone": ws.TINY_BACKBONE,
                "hyperparameters": {"epochs": EPOCHS, "batch_size": 1, "shots": 4},
            }
            r = client.post("/v1/jobs", json=body)
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            ws.wait_for(
                lambda job_id=job_id: (ws.job_row(url, job_id)["progress"] or {}).get("epoch", 0) >= 2,
                90,
                0.1,
                "epoch 2",
            )
            log_mark = len(worker.log())

            private_pg.stop_immediate()
            stopped = time.monotonic()
            while time.monotonic() - stopped < outage - 1.0:
                for method, path, payload in _probes(job_id, ck, ds):
                    resp = client.request(method, path, json=payload)
                    code = resp.json().get("error", {}).get("code") if resp.status_code >= 400 else "ok"
                    outage_statuses[(method, resp.status_code, code)] += 1
                    retry_after.add(resp.headers.get("Retry-After"))
                assert client.get("/healthz").status_code == 200
                ready = client.get("/readyz")
                assert ready.status_code == 503, ready.text
                time.sleep(0.2)
            time.sleep(max(0.0, outage - (time.monotonic() - stopped)))
            private_pg.start()
            down_for = time.monotonic() - stopped

            def finished(job_id: str = job_id) -> dict | None:
                r = client.get(f"/v1/jobs/{job_id}")
                return (
                    r.json()
                    if r.status_code == 200 and r.json()["status"] in ("succeeded", "failed")
                    else None
                )

            job = ws.wait_for(finished, 120, 0.3, f"job {job_id} to finish after a {outage} s outage")
            assert job["status"] == "succeeded", (job.get("error"), worker.log()[-4000:])
            evs = ws.events(url, job_id)
            epochs = [e["data"]["epoch"] for e in evs if e["type"] == "epoch"]
            assert epochs == list(range(1, EPOCHS + 1)), (
                epochs,
                worker.log()[log_mark:][-6000:],
            )  # none lost, none twice
            arts = ws.artifacts(url, job_id)
            assert len(arts) == len({a["name"] for a in arts}) and {"prompts.safetensors", "report.json"} <= {
                a["name"] for a in arts
            }
            handed_back = "handed back to the broker" in worker.log()[log_mark:]
            row = ws.job_row(url, job_id)
            rounds.append(
                {
                    "outage_s": round(down_for, 1),
                    "status": job["status"],
                    "attempts": row["attempts"],
                    "handed_back": handed_back,
                    "epoch_events": len(epochs),
                    "run_seconds": round(row["run_seconds"], 1),
                }
            )
        # the same client (kept-alive connection) works after the outages
        assert client.get("/v1/jobs").status_code == 200
        assert client.get("/readyz").status_code == 200
    finally:
        client.close()
        worker.stop()

    report = {
        "rounds": rounds,
        "outage_responses": {f"{m} {s} {c}": n for (m, s, c), n in sorted(outage_statuses.items())},
        "retry_after": sorted(v for v in retry_after if v),
    }
    if os.environ.get("MERGETUNE_FAULT_REPORT"):
        with open(os.environ["MERGETUNE_FAULT_REPORT"], "a") as f:
            f.write(json.dumps({"database_outage": report}) + "\n")
    print(json.dumps(report))
    assert len(rounds) == 3 and all(r["status"] == "succeeded" for r in rounds)
    assert outage_statuses and all(s == 503 and c == "database_unavailable" for (_m, s, c) in outage_statuses)
    assert retry_after == {"5"}
