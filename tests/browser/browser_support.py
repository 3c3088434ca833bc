"""The browser suite's handle on the running stack.

Database, settings, row factories and the API and Celery worker subprocesses are the service suite's
(tests/worker/worker_support.py), imported here rather than duplicated.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: A tiny finished job: 2 epochs on 3 base classes x 4 shots of the builtin set, tiny random CLIP.
TINY_HP = {"epochs": 2, "batch_size": 4, "shots": 4, "bank_views": 2}

if str(REPO / "tests" / "worker") not in sys.path:
    sys.path.insert(0, str(REPO / "tests" / "worker"))
import worker_support as ws  # noqa: E402

ApiProcess = ws.ApiProcess


@dataclass
class Stack:
    url: str
    token: str
    project_id: str
    checkpoint_id: str
    dataset_id: str
    database_url: str
    api: ApiProcess
    worker: ws.WorkerProcess

    def client(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30.0
        )

    def create_job(self, **hp: Any) -> dict[str, Any]:
        body = {
            "checkpoint_id": self.checkpoint_id,
            "dataset_id": self.dataset_id,
            "backbone": dict(ws.TINY_BACKBONE),
            "hyperparameters": {**TINY_HP, **hp},
            "metadata": {"name": "browser-demo"},
        }
        with self.client() as c:
            r = c.post("/v1/jobs", json=body)
        assert r.status_code == 202, r.text
        return r.json()

    def job(self, job_id: str) -> dict[str, Any]:
        with self.client() as c:
            r = c.get(f"/v1/jobs/{job_id}")
        assert r.status_code == 200, r.text
        return r.json()

    def wait_status(self, job_id: str, statuses: set[str], timeout: float) -> dict[str, Any]:
        return ws.wait_for(
            lambda: (j := self.job(job_id))["status"] in statuses and j,
            timeout,
            0.5,
            f"job {job_id} to reach {sorted(statuses)} (worker log:\n{self.worker.log()[-3000:]})",
        )
