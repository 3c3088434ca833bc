"""The browser suite's stack helpers: the API subprocess and a handle on the running stack.

Database, settings, row factories and the Celery worker subprocess are the service suite's
(tests/worker/worker_support.py), imported here rather than duplicated.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ApiProcess:
    """``uvicorn --factory api.main:create_app`` as a subprocess with its own log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> ApiProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "api.main:create_app",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--log-level",
                "warning",
            ],  # fmt: skip
            cwd=REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

        def up() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"API exited with {self.proc.returncode}:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=1.0).status_code == 200
            except httpx.HTTPError:
                return False

        ws.wait_for(up, timeout, 0.2, "the API to answer /healthz")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._log.close()


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
