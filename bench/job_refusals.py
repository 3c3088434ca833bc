"""How fast POST /v1/jobs refuses a job that cannot run, next to an accepted job, over HTTP.

    .venv/bin/python bench/job_refusals.py                       # embedded and Postgres modes
    .venv/bin/python bench/job_refusals.py --modes embedded --requests 20

Each mode starts a fresh service in its own state directory (see bench/api.py):

- ``embedded``: ``mergetune serve --embedded`` (SQLite, filesystem queue, one real worker whose heartbeat
  reports the weights under its model root: one file, ``ViT-B-16.pt``);
- ``postgres``: ``mergetune serve`` on a fresh Postgres database and a private redis-server on a spare port
  (never the shared one); no worker runs, so a heartbeat row with the same weights report is written
  through ``mergetune.worker.jobdb.heartbeat`` (what a worker writes).

Cases (each answered synchronously; the refusals name the field): an accepted job (tiny model, random
weights; it is cancelled right away), unknown backbone, weights outside the model root (existing file and
missing file), weights no live worker reports, a CSC checkpoint whose class count does not fit the
protocol, a bad class-token position. Median and p90 over ``--requests`` sequential requests per case.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/job_refusals.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.api import Service, free_port  # noqa: E402
from bench.benchlib import machine  # noqa: E402


def _ckpt_bytes(rows: int | None, dim: int = 64) -> bytes:
    import torch

    ctx = torch.randn((rows, 4, dim) if rows else (4, dim)) * 0.02
    buf = io.BytesIO()
    torch.save({"state_dict": {"ctx": ctx}, "epoch": 1}, buf)
    return buf.getvalue()


class PrivateRedisService(Service):
    """bench/api.py's Postgres mode, with the broker on a redis-server of its own."""

    def start(self) -> None:
        port = free_port()
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.env["MERGETUNE_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
        super().start()

    def stop(self) -> None:
        self.mode = "stopped"  # skip the parent's flush of a shared Redis database
        super().stop()
        import psycopg

        from bench.api import PG_ADMIN

        with psycopg.connect(PG_ADMIN, autocommit=True) as c:
            c.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
        self.redis.terminate()
        self.redis.wait(10)


def run_mode(mode: str, args: argparse.Namespace) -> list[tuple[str, int, str, float, float]]:
    home = Path(tempfile.mkdtemp(prefix=f"mergetune-refusals-{mode}-"))
    (home / "models").mkdir(parents=True)
    (home / "models" / "ViT-B-16.pt").write_bytes(b"weights placeholder")
    (home / "secret.pt").write_bytes(b"outside the model root")
    svc = (PrivateRedisService if mode == "postgres" else Service)(mode, home, args)
    rows = []
    try:
        svc.start()
        h = {"Authorization": f"Bearer {svc.token}"}
        c = httpx.Client(base_url=svc.url, headers=h, timeout=30)
        if mode == "postgres":
            from mergetune.worker import jobdb

            jobdb.heartbeat(
                svc.env["MERGETUNE_DATABASE_URL"],
                "bench@gpu0",
                {"weights": {"files": ["ViT-B-16.pt"], "tags": []}},
            )
        else:  # wait for the embedded worker's first heartbeat (it reports the weights)
            time.sleep(args.worker_wait)

        def upload(rows_: int | None) -> str:
            r = c.post("/v1/checkpoints", files={"file": ("model.pth.tar", _ckpt_bytes(rows_))})
            r.raise_for_status()
            return str(r.json()["id"])

        ds = c.post(
            "/v1/datasets",
            json={"name": "tiny", "kind": "builtin", "options": {"num_classes": 6, "train_per_class": 2}},
        ).json()["id"]
        generic, csc6 = upload(None), upload(6)
        tiny = {"model": "tiny-test", "pretrained": "random"}
        cases = {
            "accepted (tiny-test, random)": {"checkpoint_id": generic, "backbone": tiny},
            "unknown backbone ViT-Z-99": {"checkpoint_id": generic, "backbone": {"model": "ViT-Z-99"}},
            "weights /etc/shadow": {
                "checkpoint_id": generic,
                "backbone": {"model": "tiny-test", "pretrained": "/etc/shadow"},
            },
            "weights /nonexistent/file.pt": {
                "checkpoint_id": generic,
                "backbone": {"model": "tiny-test", "pretrained": "/nonexistent/file.pt"},
            },
            "weights ../secret.pt (exists)": {
                "checkpoint_id": generic,
                "backbone": {"model": "tiny-test", "pretrained": "../secret.pt"},
            },
            "weights no live worker has": {
                "checkpoint_id": generic,
                "backbone": {"model": "tiny-test", "pretrained": "missing.pt"},
            },
            "CSC 6 rows, base2novel (3 base)": {"checkpoint_id": csc6, "backbone": tiny},
            "bad class_token_position": {
                "checkpoint_id": generic,
                "backbone": tiny,
                "prompt": {"class_token_position": "diagonal"},
            },
        }
        for name, body in cases.items():
            times, status, param = [], 0, ""
            n = args.accepted if name.startswith("accepted") else args.requests
            for _ in range(n):
                t = time.perf_counter()
                r = c.post("/v1/jobs", json={"dataset_id": ds, "hyperparameters": {"epochs": 1}, **body})
                times.append((time.perf_counter() - t) * 1000)
                status = r.status_code
                if r.status_code == 202:
                    c.post(f"/v1/jobs/{r.json()['id']}/cancel")
                else:
                    param = str(r.json()["error"].get("param"))
            times.sort()
            p90 = times[min(len(times) - 1, int(0.9 * len(times)))]
            rows.append((name, status, param, statistics.median(times), p90))
    finally:
        svc.stop()
        shutil.rmtree(home, ignore_errors=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--modes", default="embedded,postgres")
    p.add_argument("--requests", type=int, default=30)
    p.add_argument("--accepted", type=int, default=10)
    p.add_argument("--worker-wait", type=float, default=20.0, help="seconds for the embedded worker to start")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument("--redis-db", type=int, default=0, help=argparse.SUPPRESS)  # bench.api.Service reads it
    args = p.parse_args()
    import torch

    print(f"machine: {machine(torch.device('cpu'))}; {os.cpu_count()} CPUs")
    for mode in args.modes.split(","):
        print(f"\n[{mode}] POST /v1/jobs, sequential, ms")
        print(f"{'case':36} {'status':>6} {'param':>28} {'p50':>8} {'p90':>8}")
        for name, status, param, p50, p90 in run_mode(mode, args):
            print(f"{name:36} {status:>6} {param:>28} {p50:8.1f} {p90:8.1f}")


if __name__ == "__main__":
    main()
