"""What following jobs costs the API: N open event streams (``GET /v1/jobs/{id}/events/stream``) against
N clients polling ``GET /v1/jobs/{id}`` every second (``mergetune job wait`` before the stream), and
how soon a written event reaches a stream.

    .venv/bin/python bench/event_stream.py                   # N = 1, 25, 100; 10 s each
    .venv/bin/python bench/event_stream.py --clients 50 --seconds 5

One API process (uvicorn, as ``mergetune serve`` runs it) on a fresh Postgres database; a running job
with no worker (nothing changes unless the bench writes). For each N: the API process's CPU (user +
system, from /proc) and the database's transactions per second (pg_stat_database) while the clients
wait. Then the latency from an event's commit (the worker's ``add_event``) to its arrival on an open
stream, 20 events one at a time. The clients run in this process on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "worker"))

import worker_support as ws  # noqa: E402


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def transactions(url: str) -> int:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(f"host={ws.PG_HOST} user={ws.PG_USER} dbname=postgres", autocommit=True) as conn:
        conn.execute("SELECT pg_stat_clear_snapshot()")
        row = conn.execute(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = %s", (name,)
        ).fetchone()
    return int(row[0]) if row else 0


async def hold_streams(base: str, auth: dict[str, str], job_id: str, n: int, seconds: float) -> None:
    async def one(client: httpx.AsyncClient) -> None:
        async with client.stream("GET", f"/v1/jobs/{job_id}/events/stream", headers=auth) as r:
            assert r.status_code == 200, await r.aread()
            async for _ in r.aiter_bytes():
                pass

    async with httpx.AsyncClient(
        base_url=base, timeout=None, limits=httpx.Limits(max_connections=n + 5)
    ) as c:
        tasks = [asyncio.create_task(one(c)) for _ in range(n)]
        try:
            await asyncio.sleep(seconds)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def poll(base: str, auth: dict[str, str], job_id: str, n: int, seconds: float) -> None:
    async def one(client: httpx.AsyncClient, offset: float) -> None:
        await asyncio.sleep(offset)
        while True:
            (await client.get(f"/v1/jobs/{job_id}", headers=auth)).raise_for_status()
            await asyncio.sleep(1.0)

    async with httpx.AsyncClient(base_url=base, timeout=30, limits=httpx.Limits(max_connections=n + 5)) as c:
        tasks = [asyncio.create_task(one(c, i / n)) for i in range(n)]
        try:
            await asyncio.sleep(seconds)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


async def open_streams(base: str) -> float:
    async with httpx.AsyncClient(timeout=10) as c:
        for line in (await c.get(f"{base}/metrics")).text.splitlines():
            if line.startswith("mergetune_event_streams_open "):
                return float(line.split()[1])
    return 0.0


def measure(
    label: str, pid: int, url: str, run: object, warmup: float, seconds: float, ready: object = None
) -> None:
    async def main() -> tuple[float, int]:
        task = asyncio.create_task(run(warmup + seconds + 30))  # type: ignore[operator]
        await asyncio.sleep(warmup)
        while ready is not None and not await ready():  # type: ignore[operator]
            await asyncio.sleep(0.2)  # every stream open and past its first reads
        await asyncio.sleep(1.0)
        cpu0, tx0 = cpu_seconds(pid), transactions(url)
        await asyncio.sleep(seconds)
        cpu, tx = cpu_seconds(pid) - cpu0, transactions(url) - tx0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return cpu, tx

    cpu, tx = asyncio.run(main())
    print(f"| {label} | {100 * cpu / seconds:.1f} % | {tx / seconds:.0f} |", flush=True)


def latency(base: str, auth: dict[str, str], url: str, job_id: str, samples: int) -> list[float]:
    from mergetune._sse import SSEParser
    from mergetune.worker.jobdb import add_event

    out: list[float] = []
    parser = SSEParser()
    with httpx.stream("GET", f"{base}/v1/jobs/{job_id}/events/stream", headers=auth, timeout=30) as r:
        chunks = r.iter_bytes()
        while not any(e.event == "job" for e in parser.feed(next(chunks))):
            pass
        for i in range(samples):
            time.sleep(0.137 * (i % 5))  # writes land anywhere in the stream's poll interval
            add_event(url, job_id, "log", f"sample {i}")
            written = time.perf_counter()
            while not any(e.data.find(f'"sample {i}"') >= 0 for e in parser.feed(next(chunks))):
                pass
            out.append(time.perf_counter() - written)
    return out


async def _all_open(base: str, n: int) -> bool:
    return await open_streams(base) >= n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="1,25,100", help="comma-separated N")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args()
    counts = [int(x) for x in args.clients.split(",")]

    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.storage import get_store

    with tempfile.TemporaryDirectory() as tmp, ws.fresh_database("mt_bench_stream") as url:
        settings = ws.make_settings(Path(tmp) / "home", url, f"{ws.REDIS_URL}/15")
        env = ws.settings_env(settings)
        env["MERGETUNE_MAX_EVENT_STREAMS"] = str(max(counts) + 10)
        env["MERGETUNE_LOG_LEVEL"] = "WARNING"
        api = ws.ApiProcess(env, Path(tmp) / "api.log").start(90)
        try:
            with session_scope(url) as s:
                project = repo.get_or_create_project(s, "bench")
                _, secret = repo.create_token(s, project)
                project_id = project.id
            auth = {"Authorization": f"Bearer {secret}"}
            ckpt = ws.make_checkpoint(url, get_store(settings), project_id, ws.tiny_ctx())
            ds = ws.make_dataset(url, settings, project_id)
            job_id = ws.make_job(url, project_id, ckpt, ds, status="running")
            from mergetune.worker.jobdb import add_event

            for i in range(20):
                add_event(url, job_id, "log", f"event {i}")
            pid = api.proc.pid  # type: ignore[union-attr]
            print(f"{os.cpu_count()} CPU cores; one API process; {args.seconds:.0f} s per row\n")
            print("| clients waiting on one running job | API process CPU | DB transactions/s |")
            print("|---|---|---|")
            measure("idle (none)", pid, url, lambda t: asyncio.sleep(t), 1.0, args.seconds)
            for n in counts:
                measure(
                    f"{n} event streams",
                    pid,
                    url,
                    lambda t, n=n: hold_streams(api.url, auth, job_id, n, t),
                    0.5,
                    args.seconds,
                    lambda n=n: _all_open(api.url, n),
                )
                measure(
                    f"{n} polling GET /v1/jobs/{{id}} every 1 s",
                    pid,
                    url,
                    lambda t, n=n: poll(api.url, auth, job_id, n, t),
                    2.0,
                    args.seconds,
                )
            lat = sorted(latency(api.url, auth, url, job_id, args.samples))
            p95 = lat[min(len(lat) - 1, int(0.95 * len(lat)))]
            print(
                f"\ncommit -> stream: median {1000 * statistics.median(lat):.0f} ms, "
                f"p95 {1000 * p95:.0f} ms, max {1000 * lat[-1]:.0f} ms ({len(lat)} events)"
            )
        finally:
            api.stop()


if __name__ == "__main__":
    main()
