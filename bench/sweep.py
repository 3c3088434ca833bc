"""Sweep throughput with 1 and 2 (or more) Celery workers, side by side in one run.

    .venv/bin/python bench/sweep.py                      # 3 builtin datasets x 2 seeds, tiny-test, 1 vs 2 workers
    .venv/bin/python bench/sweep.py --workers 1 2 4 --epochs 5 --model tiny-clip --pretrained builtin

For each worker count the whole service is started fresh: a new database (a uniquely named Postgres
database on MERGETUNE_BENCH_PG when it answers, else SQLite under a temporary HOME), a private broker
(a redis-server on a spare port when one is installed, else kombu's filesystem queue), uvicorn and N
``celery worker --pool solo -c 1`` processes. The same CoOp output tree (zip: datasets x seeds of
``prompt_learner/model.pth.tar-<E>``) is posted with ``POST /v1/sweeps``; the clock runs from the
request to the last job finishing. Prints create time (archive checks + every checkpoint through the
sandboxed parse + job validation), run wall time, jobs per minute, the speed-up, then the sweep's table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: python bench/sweep.py
    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))  # the CoOp tree writer the tests use

from bench.benchlib import free_port, machine, uvicorn_command, worker_command  # noqa: E402

DATASET_OPTIONS = {"num_classes": 6, "train_per_class": 4, "val_per_class": 2, "test_per_class": 4}


def _wait(pred: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _postgres(dsn_host: str) -> bool:
    try:
        import psycopg

        with psycopg.connect(f"host={dsn_host} user=postgres dbname=postgres", connect_timeout=2):
            return True
    except Exception:
        return False


@contextlib.contextmanager
def _stack(args: argparse.Namespace, workers: int, home: Path) -> Iterator[tuple[str, str, str]]:
    """(API url, token, database URL) of a fresh service with ``workers`` worker processes."""
    procs: list[subprocess.Popen[bytes]] = []
    logs = home / "logs"
    logs.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGETUNE_")}
    env.update(
        MERGETUNE_HOME=str(home), MERGETUNE_DATA_ROOT=str(home / "data"),
        MERGETUNE_ARTIFACT_URL=str(home / "artifacts"), MERGETUNE_DEVICE=args.device,
        MERGETUNE_LOG_LEVEL="INFO", PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1",
    )  # fmt: skip
    if args.device == "cpu":
        env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    dbname = None
    if args.backend == "services":
        dbname = f"mt_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
        import psycopg

        with psycopg.connect(f"host={args.pg_host} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{dbname}"')
        env["MERGETUNE_DATABASE_URL"] = f"postgresql+psycopg://postgres@{args.pg_host}:5432/{dbname}"
        port = free_port()
        redis = subprocess.Popen(
            ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=open(logs / "redis.log", "wb"),  # noqa: SIM115 - closed with the process
            stderr=subprocess.STDOUT,
        )
        procs.append(redis)
        env["MERGETUNE_BROKER_URL"] = f"redis://127.0.0.1:{port}/0"
    db_url = env.get("MERGETUNE_DATABASE_URL") or f"sqlite:///{home / 'mergetune.db'}"
    py = sys.executable
    try:
        subprocess.run(
            [py, "-m", "mergetune.cli", "migrate"], cwd=REPO, env=env, check=True, capture_output=True
        )
        token = subprocess.run(
            [py, "-m", "mergetune.cli", "token", "create", "--project", "bench"],
            cwd=REPO, env=env, check=True, capture_output=True, text=True,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        api_port = free_port()
        procs.append(
            subprocess.Popen(
                uvicorn_command(api_port),
                cwd=REPO,
                env=env,
                stdout=open(logs / "api.log", "wb"),
                stderr=subprocess.STDOUT,  # noqa: SIM115
            )
        )
        worker_logs = []
        for k in range(workers):
            log = logs / f"worker{k}.log"
            worker_logs.append(log)
            procs.append(
                subprocess.Popen(
                    worker_command(f"w{k}@bench"),
                    cwd=REPO,
                    env=env,
                    stdout=open(log, "wb"),
                    stderr=subprocess.STDOUT,  # noqa: SIM115
                )
            )
        url = f"http://127.0.0.1:{api_port}"
        import httpx

        def api_up() -> bool:
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        _wait(api_up, 120, "the API")
        _wait(lambda: all(b" ready." in p.read_bytes() for p in worker_logs), 180, "the workers")
        yield url, token, db_url
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        if dbname is not None:
            import psycopg

            with psycopg.connect(f"host={args.pg_host} user=postgres dbname=postgres", autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{dbname}" WITH (FORCE)')


def _tree(args: argparse.Namespace, out: Path) -> Path:
    """The CoOp output tree of datasets x seeds as a zip (each checkpoint: the init context + noise)."""
    import torch
    from tree_writer import coop_tree, zip_bytes

    from mergetune.core.checkpoints.export import export_prompts
    from mergetune.core.config import BackboneSpec, PromptLearnerSpec
    from mergetune.core.model.backbone import load_backbone
    from mergetune.core.model.prompts import init_ctx

    bb = load_backbone(BackboneSpec(model=args.model, pretrained=args.pretrained))
    ctx0 = init_ctx(bb, PromptLearnerSpec(n_ctx=4, ctx_init="a photo of a"))
    runs = []
    for d in range(args.datasets):
        for seed in range(1, args.seeds + 1):
            g = torch.Generator().manual_seed(100 * d + seed)
            ctx = (ctx0 + 0.02 * torch.randn(ctx0.shape, generator=g)).float().contiguous()
            paths = export_prompts(out / f"ck{d}-{seed}", ctx, token_prefix=None, token_suffix=None,
                                   metadata={"method": "coop"}, epoch=args.epochs)  # fmt: skip
            runs.append((f"bench_{d}", seed, paths["prompts.pth.tar"].read_bytes()))
    path = out / "output.zip"
    path.write_bytes(zip_bytes(coop_tree(runs, epoch=args.epochs)))
    return path


def run_one(args: argparse.Namespace, workers: int, tree: Path) -> dict[str, Any]:
    from mergetune.client import Client

    home = Path(tempfile.mkdtemp(prefix=f"mt-bench-sweep-{workers}w-"))
    try:
        with _stack(args, workers, home) as (url, token, _db), Client(url, token, timeout=300) as c:
            for d in range(args.datasets):
                c.create_dataset(f"bench_{d}", "builtin", options={**args.dataset_options, "seed": d})
            spec = {
                "name": f"bench-{workers}w",
                "backbone": {"model": args.model, "pretrained": args.pretrained},
                "hyperparameters": {"epochs": args.epochs, "batch_size": 4, "shots": 4},
            }
            t0 = time.perf_counter()
            sweep = c.create_sweep(spec, tree=tree)
            t1 = time.perf_counter()
            done = c.wait_sweep(sweep["id"], interval=0.25, timeout=args.timeout)
            t2 = time.perf_counter()
            report = json.loads(c.sweep_report(sweep["id"], "json"))
            jobs = [c.get_job(j["id"]) for j in done["jobs"]]
    except BaseException:
        for log in sorted((home / "logs").glob("*.log")):  # what the service said, before it is removed
            sys.stderr.write(
                f"--- {log.name} (last 3000 bytes)\n{log.read_bytes()[-3000:].decode(errors='replace')}\n"
            )
        raise
    finally:
        shutil.rmtree(home, ignore_errors=True)
    from datetime import datetime

    def secs(j: dict[str, Any]) -> float:
        if not j.get("started_at") or not j.get("finished_at"):
            return float("nan")
        return (
            datetime.fromisoformat(j["finished_at"]) - datetime.fromisoformat(j["started_at"])
        ).total_seconds()

    return {
        "workers": workers,
        "status": done["status"],
        "jobs": len(jobs),
        "create_s": t1 - t0,
        "run_s": t2 - t1,
        "mean_job_s": sum(secs(j) for j in jobs) / max(1, len(jobs)),
        "report": report,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--datasets", type=int, default=3)
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--model", default="tiny-test")
    p.add_argument("--pretrained", default="random")
    p.add_argument("--device", default="cpu", help="cpu | cuda | auto (the workers' MERGETUNE_DEVICE)")
    p.add_argument("--backend", choices=["auto", "services", "embedded"], default="auto")
    p.add_argument("--pg-host", default=os.environ.get("MERGETUNE_BENCH_PG", "127.0.0.1"))
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument(
        "--repeats",
        type=int,
        default=1,
        help="runs per worker count, in alternating order (medians reported)",
    )
    p.add_argument(
        "--dataset-options", type=json.loads, default=DATASET_OPTIONS, help="builtin options (JSON)"
    )
    args = p.parse_args(argv)
    if args.backend == "auto":
        ok = shutil.which("redis-server") is not None and _postgres(args.pg_host)
        args.backend = "services" if ok else "embedded"
    import torch

    torch.set_num_threads(1)
    n_jobs = args.datasets * args.seeds
    dev = torch.device("cuda" if args.device in ("cuda", "auto") and torch.cuda.is_available() else "cpu")
    print(f"machine: {machine(dev)}")
    print(
        f"sweep: {args.datasets} builtin datasets x {args.seeds} seeds = {n_jobs} jobs, {args.model}/"
        f"{args.pretrained}, {args.epochs} epochs, device {args.device}; backend "
        + ("Postgres + redis-server" if args.backend == "services" else "SQLite + filesystem queue")
    )
    with tempfile.TemporaryDirectory(prefix="mt-bench-tree-") as tmp:
        tree = _tree(args, Path(tmp))
        runs: dict[int, list[dict[str, Any]]] = {w: [] for w in args.workers}
        for rep in range(args.repeats):  # alternate the order so that drifting load hits both alike
            for w in args.workers if rep % 2 == 0 else list(reversed(args.workers)):
                runs[w].append(run_one(args, w, tree))
    rows = []
    for w in args.workers:
        ordered = sorted(runs[w], key=lambda r: r["run_s"])
        rows.append({**ordered[len(ordered) // 2], "all_run_s": [r["run_s"] for r in runs[w]]})
    print(
        f"\n{'workers':>7} {'status':>10} {'create s':>9} {'run wall s':>11} {'jobs/min':>9} {'mean job s':>11}"
    )
    for r in rows:
        print(
            f"{r['workers']:>7} {r['status']:>10} {r['create_s']:>9.2f} {r['run_s']:>11.2f} "
            f"{60 * r['jobs'] / r['run_s']:>9.2f} {r['mean_job_s']:>11.2f}"
            + (f"   (runs: {', '.join(f'{x:.1f}' for x in r['all_run_s'])} s)" if args.repeats > 1 else "")
        )
    base = rows[0]
    for r in rows[1:]:
        line = f"throughput {r['workers']} vs {base['workers']} workers: {base['run_s'] / r['run_s']:.2f}x"
        if args.repeats > 1:  # on a shared machine the fastest runs are the least disturbed ones
            line += f" (median runs); {min(base['all_run_s']) / min(r['all_run_s']):.2f}x (fastest runs)"
        print(line)
    from mergetune.core.evaluation.sweep_table import to_text

    print(f"\nthe sweep's table ({rows[-1]['workers']} workers):")
    print(to_text(rows[-1]["report"]["table"]))
    return 0 if all(r["status"] == "succeeded" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
