"""The browser suite's handle on the running stack.

Database, settings, row factories and the API and Celery worker subprocesses are the service suite's
(tests/worker/worker_support.py), imported here rather than duplicated.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
#: A tiny finished job: 2 epochs on 3 base classes x 4 shots of the builtin set, tiny random CLIP.
TINY_HP = {"epochs": 2, "batch_size": 4, "shots": 4, "bank_views": 2}
#: The HTTP dashboard tests' broker (no worker reads it; jobs are enqueued and observed).
BROKER_URL = f"{os.environ.get('MERGETUNE_TEST_REDIS_URL', 'redis://127.0.0.1:6379')}/11"  # api tests use 10, browser stack 12, worker 13, e2e 14

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


# ---------------------------------------------------------------------------------------------------
# rows and a logged-in TestClient for the HTTP dashboard tests (no browser, no worker)


def new_project(url: str) -> tuple[str, str]:
    """(project_id, token secret) of a fresh project."""
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    with session_scope(url) as s:
        project = repo.get_or_create_project(s, f"dash-{uuid.uuid4().hex[:10]}")
        _, secret = repo.create_token(s, project)
        return project.id, secret


def dataset_row(project_id: str) -> Any:
    """An unsaved ready builtin Dataset row of 6 classes (abc base, def novel) in ``project_id``."""
    from mergetune.common.models import Dataset

    return Dataset(
        project_id=project_id, name=f"set-{uuid.uuid4().hex[:6]}", kind="builtin", path="",
        num_classes=6, classnames=list("abcdef"), base_classes=list("abc"), novel_classes=list("def"),
        split_sizes={"train": 24, "val": 12, "test": 24}, template="a photo of a {}.",
        sha256_of_split="cd" * 32,
    )  # fmt: skip


def make_rows(url: str, project_id: str, *, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    """A ready checkpoint, a dataset and jobs (dicts of Job column overrides) in ``project_id``."""
    from mergetune.common.db import session_scope
    from mergetune.common.models import Checkpoint, Job, new_id

    with session_scope(url) as s:
        ck = Checkpoint(
            project_id=project_id, name="coop-ckpt", filename="m.pth.tar", bytes=100, sha256="ab" * 32,
            format="dassl", method="coop", status="ready", n_ctx=4, ctx_dim=64, csc=False,
        )  # fmt: skip
        ds = dataset_row(project_id)
        s.add_all([ck, ds])
        s.flush()
        ids = []
        for i, overrides in enumerate(jobs):
            job = Job(
                id=new_id("job")[:-2] + f"{i:02x}",  # distinct and ordered even within one millisecond
                project_id=project_id,
                checkpoint_id=ck.id,
                dataset_id=ds.id,
                job_type="prompt",
                backbone={"model": "tiny-test", "pretrained": "random"},
                hyperparameters={"epochs": 2},
                **overrides,
            )
            s.add(job)
            s.flush()
            ids.append(job.id)
        return {"checkpoint_id": ck.id, "dataset_id": ds.id, "job_ids": ids}


def login(client: TestClient, secret: str) -> None:
    r = client.post("/login", data={"token": secret, "next": "/"}, follow_redirects=False)
    assert r.status_code == 303, r.text


def csrf_token(html: str) -> str:
    match = re.search(r'name="csrf" value="([0-9a-f]{64})"', html)
    assert match, "no CSRF field on the page"
    return match.group(1)
