"""Fuzz the REST API with schemathesis against a real uvicorn + Postgres + Redis and count server errors.

Everything is private to the run: a fresh Postgres database on the configured server (dropped at the
end), a throw-away ``redis-server`` on a spare port, a temporary MERGETUNE_HOME and a uvicorn process
with its access log on. Seeds one project with a ready checkpoint, a dataset and a queued job, so that
generated ids sometimes hit real objects, then runs schemathesis over every operation of
``/openapi.json`` (NUL bytes allowed in generated strings) with the ``not_a_server_error`` check.

Prints the number of generated cases (schemathesis' count), the number of HTTP requests the server
answered and how many of them were 5xx (both read from uvicorn's access log, independent of
schemathesis), and exits 1 when any 5xx was seen.

    pip install schemathesis        # not a test dependency
    .venv/bin/python bench/fuzz_api.py --max-examples 200

Options: ``--max-examples N`` per operation (default 100), ``--seed S``, ``--workers W`` (default 2),
``--pg`` the Postgres server (default ``host=127.0.0.1 port=5432 user=postgres``), ``--keep`` to
leave the temporary directory (logs, schemathesis reports) behind.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: python bench/fuzz_api.py
    sys.path.insert(0, str(REPO))

from bench.benchlib import cpu_model, free_port, uvicorn_command  # noqa: E402

ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[\d.]+" (?P<status>\d{3})')


def _wait_port(port: int, proc: subprocess.Popen[bytes], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


def _seed(database_url: str) -> str:
    """Migrate and make the fuzz project's token."""
    sys.path.insert(0, str(REPO))
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope, upgrade_head

    upgrade_head(database_url)
    with session_scope(database_url) as s:
        _, secret = repo.create_token(s, repo.get_or_create_project(s, "fuzz"))
    return secret


def _seed_objects(url: str, token: str) -> None:
    """A ready checkpoint (safetensors ctx), a builtin dataset and a queued job of the fuzz project."""
    import httpx
    import numpy as np
    from safetensors.numpy import save

    auth = {"Authorization": f"Bearer {token}"}
    blob = save({"ctx": np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)})
    ck = httpx.post(
        f"{url}/v1/checkpoints", headers=auth, files={"file": ("ctx.safetensors", blob)}, timeout=60
    )
    ds = httpx.post(
        f"{url}/v1/datasets",
        headers=auth,
        json={
            "name": "tiny",
            "kind": "builtin",
            "options": {"num_classes": 6, "train_per_class": 4, "val_per_class": 2, "test_per_class": 4},
        },
        timeout=60,
    )
    if ck.status_code == 201 and ds.status_code == 201:
        httpx.post(
            f"{url}/v1/jobs",
            headers=auth,
            json={"checkpoint_id": ck.json()["id"], "dataset_id": ds.json()["id"]},
            timeout=60,
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--max-examples", type=int, default=100)
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--pg", default="host=127.0.0.1 port=5432 user=postgres")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()

    schemathesis = shutil.which("schemathesis", path=str(Path(sys.executable).parent)) or shutil.which(
        "schemathesis"
    )
    if schemathesis is None:
        raise SystemExit("schemathesis is not installed: pip install schemathesis")
    import psycopg

    work = Path(tempfile.mkdtemp(prefix="mergetune-fuzz-"))
    dbname = f"mergetune_fuzz_{uuid.uuid4().hex[:8]}"
    pg = dict(kv.split("=", 1) for kv in args.pg.split())
    database_url = f"postgresql+psycopg://{pg.get('user', 'postgres')}@{pg.get('host', '127.0.0.1')}:{pg.get('port', '5432')}/{dbname}"
    redis_proc = api_proc = None
    try:
        with psycopg.connect(f"{args.pg} dbname=postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{dbname}"')
        redis_port = free_port()
        redis_proc = subprocess.Popen(
            [
                "redis-server",
                "--bind",
                "127.0.0.1",
                "--port",
                str(redis_port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(work),
            ],  # fmt: skip
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_port(redis_port, redis_proc, "redis-server")
        env = {k: v for k, v in os.environ.items() if not k.startswith("MERGETUNE_")}
        env.update(
            MERGETUNE_HOME=str(work / "home"),
            MERGETUNE_DATABASE_URL=database_url,
            MERGETUNE_BROKER_URL=f"redis://127.0.0.1:{redis_port}/0",
            MERGETUNE_DATA_ROOT=str(work / "home" / "data"),
            OMP_NUM_THREADS="1",
            PYTHONPATH=str(REPO),
        )
        (work / "home" / "data").mkdir(parents=True)
        token = _seed(database_url)
        port = free_port()
        api_log = work / "api.log"
        with open(api_log, "wb") as log:
            api_proc = subprocess.Popen(
                uvicorn_command(port, log_level="info"),
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            _wait_port(port, api_proc, "uvicorn")
            url = f"http://127.0.0.1:{port}"
            _seed_objects(url, token)
            seeded = sum(1 for _ in ACCESS.finditer(api_log.read_text(errors="replace")))
            started = time.perf_counter()
            run = subprocess.run(
                [
                    schemathesis,
                    "run",
                    f"{url}/openapi.json",
                    "-H",
                    f"Authorization: Bearer {token}",
                    "--checks",
                    "not_a_server_error",
                    "--max-examples",
                    str(args.max_examples),
                    "--seed",
                    str(args.seed),
                    "--workers",
                    str(args.workers),
                    "--generation-allow-x00",
                    "true",
                    "--continue-on-failure",
                    "--no-color",
                    "--report",
                    "junit",
                    "--report-dir",
                    str(work / "report"),
                ],  # fmt: skip
                cwd=work,
                env=env,
                capture_output=True,
                text=True,
            )
            elapsed = time.perf_counter() - started
        (work / "schemathesis.txt").write_text(run.stdout + run.stderr)
        lines = list(ACCESS.finditer(api_log.read_text(errors="replace")))[seeded:]
        statuses = Counter(int(m["status"]) for m in lines)
        errors = Counter(
            f"{m['method']} {m['path'][:80]} -> {m['status']}" for m in lines if int(m["status"]) >= 500
        )
        summary = [
            ln for ln in run.stdout.splitlines() if re.search(r"test cases|generated|passed|failed", ln, re.I)
        ]
        cases = None
        m = re.search(r"(\d+) generated", run.stdout)
        if m:
            cases = int(m.group(1))
        print("machine:", _machine())
        print(f"schemathesis {run.returncode=} in {elapsed:.0f} s; summary lines:")
        for ln in summary[-6:]:
            print("   ", ln.strip())
        print(f"generated cases: {cases if cases is not None else 'see schemathesis.txt'}")
        print(f"requests answered: {len(lines)}, by status: {dict(sorted(statuses.items()))}")
        print(f"5xx responses: {sum(n for s, n in statuses.items() if s >= 500)}")
        for line, n in errors.most_common(20):
            print(f"   {n} x {line}")
        if args.keep:
            print(f"logs and reports: {work}")
        return 1 if any(s >= 500 for s in statuses) else 0
    finally:
        _stop(api_proc)
        _stop(redis_proc)
        try:
            with psycopg.connect(f"{args.pg} dbname=postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')
        except Exception as exc:  # report, but do not hide the run's outcome
            print(f"could not drop {dbname}: {exc}", file=sys.stderr)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def _machine() -> str:
    return f"{os.cpu_count()}-core {cpu_model() or 'unknown CPU'}"


if __name__ == "__main__":
    sys.exit(main())
