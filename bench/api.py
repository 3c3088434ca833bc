"""API benchmark against the running service: GET /v1/jobs/{id} latency and upload peak RSS growth.

    .venv/bin/python bench/api.py                         # embedded (SQLite) and Postgres/Redis modes
    .venv/bin/python bench/api.py --modes embedded --requests 20
    .venv/bin/python bench/api.py --replicas 1,2 --requests 60   # 1 vs 2 API processes, GET only

For each mode a fresh service is started in its own state directory:

- ``embedded``: ``mergetune serve --embedded`` (API + one worker, SQLite, filesystem queue);
- ``postgres``: ``mergetune migrate`` + ``mergetune serve`` (uvicorn) with MERGETUNE_DATABASE_URL on a
  fresh Postgres database (created here, dropped at the end) and MERGETUNE_BROKER_URL on a Redis
  database number (flushed at the end). No worker is started: the job stays ``queued``.

Measurements:

1. one small job (tiny backbone, 2 epochs) is created; in embedded mode the bench waits for it to
   finish so that the worker does not compete with the measurement (its upload-to-succeeded time is
   printed);
2. GET latency, closed loop: ``--clients`` concurrent clients (httpx async, one connection each), each
   issuing ``--requests`` GETs back to back; p50/p99 and throughput. The client shares the 2 cores with
   the server, so this is a pessimistic figure. Also an open loop at ``--poll-rate`` requests/s per
   client (what polling dashboards/CLIs do);
3. upload: a Dassl-style ``model.pth.tar`` (ctx [4, 512], token_prefix [1000, 1, 512], token_suffix
   [1000, 72, 512] fp32, ~150 MB) streamed by httpx; the API process's peak RSS growth is read from
   ``/proc/<pid>/status`` VmHWM after resetting it (``clear_refs`` 5), cross-checked by sampling
   VmRSS every 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/api.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.benchlib import ROOT, cpu_model, free_port, machine  # noqa: E402

BIN = Path(sys.executable).parent
MERGETUNE = str(BIN / "mergetune")
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0]) // 1024  # MiB
    return out


def make_dassl_file(path: Path, n_cls: int = 1000, n_ctx: int = 4, dim: int = 512) -> int:
    """A CoOp/Dassl ``model.pth.tar`` as the reference writes it (scheduler pickled as an object)."""
    import torch

    ctx = torch.randn(n_ctx, dim) * 0.02
    param = torch.nn.Parameter(ctx.clone())
    opt = torch.optim.SGD([param], lr=0.002)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 50)
    torch.save(
        {
            "state_dict": {
                "ctx": ctx,
                "token_prefix": torch.randn(n_cls, 1, dim),
                "token_suffix": torch.randn(n_cls, 77 - 1 - n_ctx, dim),
            },
            "epoch": 50,
            "optimizer": opt.state_dict(),
            "scheduler": sched,  # a pickled object: not weights_only-loadable, like the real files
        },
        path,
    )
    return path.stat().st_size


def small_checkpoint(path: Path, dim: int) -> None:
    import torch

    torch.save({"state_dict": {"ctx": torch.randn(4, dim) * 0.02}, "epoch": 1}, path)


class Service:
    def __init__(self, mode: str, home: Path, args: argparse.Namespace, processes: int = 1) -> None:
        self.mode, self.home, self.args, self.processes = mode, home, args, processes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("MERGETUNE_")}
        self.env.update(MERGETUNE_HOME=str(home), MERGETUNE_LOG_LEVEL=args.log_level)
        self.db_name = f"mergetune_bench_{os.getpid()}"
        self.proc: subprocess.Popen | None = None
        self.log = None
        if mode == "postgres":
            self.env["MERGETUNE_DATABASE_URL"] = (
                f"postgresql+psycopg://postgres@127.0.0.1:5432/{self.db_name}"
            )
            self.env["MERGETUNE_BROKER_URL"] = f"redis://127.0.0.1:6379/{args.redis_db}"

    def _cli(self, *a: str) -> str:
        return subprocess.run(
            [MERGETUNE, *a], env=self.env, check=True, capture_output=True, text=True, cwd=ROOT
        ).stdout

    def start(self) -> None:
        cmd = [MERGETUNE, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        if self.processes > 1:
            cmd += ["--workers", str(self.processes)]
        if self.mode == "embedded":
            cmd.insert(2, "--embedded")
        else:
            import psycopg

            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.db_name}"')
                c.execute(f'CREATE DATABASE "{self.db_name}"')
            self._cli("migrate")
        self.log = open(self.home / "service.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, env=self.env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited: {(self.home / 'service.log').read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        else:
            raise RuntimeError("service did not become healthy in 120 s")
        self.token = self._cli("token", "create", "--project", "bench").strip().splitlines()[-1]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.log is not None:
            self.log.close()
        if self.mode == "postgres":
            import psycopg
            import redis

            with psycopg.connect(PG_ADMIN, autocommit=True) as c:
                c.execute(f'DROP DATABASE IF EXISTS "{self.db_name}" WITH (FORCE)')
            redis.Redis.from_url(self.env["MERGETUNE_BROKER_URL"]).flushdb()


def create_job(svc: Service, client: httpx.Client, workdir: Path) -> tuple[str, float]:
    from mergetune.core.builtin import model as builtin_model

    if Path(builtin_model.WEIGHTS_PATH).is_file():
        backbone, dim = {"model": "tiny-clip", "pretrained": "builtin"}, 128
    else:
        backbone, dim = {"model": "tiny-test", "pretrained": "random"}, 64
    ck = workdir / "small.pth.tar"
    small_checkpoint(ck, dim)
    t0 = time.perf_counter()
    with open(ck, "rb") as f:
        r = client.post("/v1/checkpoints", files={"file": ("model.pth.tar-1", f)}, data={"method": "coop"})
    r.raise_for_status()
    ckpt = r.json()["id"]
    r = client.post("/v1/datasets", json={"name": "bench", "kind": "builtin", "options": {"num_classes": 10}})
    r.raise_for_status()
    ds = r.json()["id"]
    body = {"checkpoint_id": ckpt, "dataset_id": ds, "backbone": backbone, "hyperparameters": {"epochs": 2}}
    r = client.post("/v1/jobs", json=body)
    r.raise_for_status()
    return r.json()["id"], t0


async def closed_loop(
    url: str, token: str, path: str, clients: int, per_client: int
) -> tuple[list[float], float]:
    lat: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:
        await asyncio.gather(*(c.get(path) for _ in range(clients)))  # open the connections (warm-up)

        async def one() -> None:
            for _ in range(per_client):
                t = time.perf_counter()
                r = await c.get(path)
                lat.append(time.perf_counter() - t)
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        wall = time.perf_counter() - t0
    return lat, wall


async def open_loop(
    url: str, token: str, path: str, clients: int, rate: float, seconds: float
) -> list[float]:
    lat: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=60) as c:

        async def one(i: int) -> None:
            await asyncio.sleep(i / clients / rate)  # spread the clients over one period
            end = time.perf_counter() + seconds
            while time.perf_counter() < end:
                t = time.perf_counter()
                r = await c.get(path)
                lat.append(time.perf_counter() - t)
                r.raise_for_status()
                await asyncio.sleep(max(0.0, 1.0 / rate - (time.perf_counter() - t)))

        await asyncio.gather(*(one(i) for i in range(clients)))
    return lat


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def measure_upload(svc: Service, client: httpx.Client, big: Path) -> dict:
    assert svc.proc is not None
    pid = svc.proc.pid
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        hwm_reset = True
    except OSError:
        hwm_reset = False
    before = proc_status(pid)["VmRSS"]
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            try:
                peak[0] = max(peak[0], proc_status(pid)["VmRSS"])
            except (OSError, KeyError):
                pass
            time.sleep(0.005)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    with open(big, "rb") as f:
        r = client.post("/v1/checkpoints", files={"file": ("model.pth.tar-50", f)}, timeout=600)
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    st = proc_status(pid)
    hwm = st["VmHWM"] if hwm_reset else peak[0]
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else {}
    return {
        "status": r.status_code,
        "ckpt_status": body.get("status"),
        "error": body.get("error"),
        "seconds": wall,
        "rss_before": before,
        "peak": max(hwm, peak[0]),
        "growth": max(hwm, peak[0]) - before,
        "hwm_reset": hwm_reset,
    }


def handler_time(svc: Service, job_id: str, n: int) -> dict[str, float]:
    """Median seconds of the GET handler's own work (auth dependency, job lookup, ``job_read`` with its
    queries, JSON rendering) called in this process on the service's database: no HTTP, no threadpool."""
    from mergetune.api.deps import get_principal
    from mergetune.api.routes.jobs import _get_job
    from mergetune.api.services.jobs import job_read
    from mergetune.common.db import get_sessionmaker
    from mergetune.common.settings import Settings

    url = svc.env.get("MERGETUNE_DATABASE_URL") or f"sqlite:///{(svc.home / 'mergetune.db').resolve()}"
    settings = Settings(HOME=svc.home, DATABASE_URL=url)
    from sqlalchemy import event, text

    from mergetune.common.db import get_engine

    sm = get_sessionmaker(url)
    engine = get_engine(url)
    statements = [0]

    def count(*_a: object) -> None:
        statements[0] += 1

    event.listen(engine, "before_cursor_execute", count)
    parts: dict[str, list[float]] = {"auth": [], "lookup": [], "job_read": [], "render": [], "total": []}
    for _ in range(n):
        t0 = time.perf_counter()
        s = sm()
        p = get_principal(s, f"Bearer {svc.token}")
        t1 = time.perf_counter()
        job = _get_job(s, p.project_id, job_id)
        t2 = time.perf_counter()
        r = job_read(s, settings, job)
        t3 = time.perf_counter()
        r.model_dump_json()
        s.rollback()
        s.close()
        t4 = time.perf_counter()
        for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t4 - t0), strict=True):
            parts[k].append(v)
    event.remove(engine, "before_cursor_execute", count)
    out = {k: statistics.median(v) for k, v in parts.items()}
    out["statements_per_get"] = statements[0] / max(1, n)
    rt = []
    with engine.connect() as c:
        for _ in range(n):
            t0 = time.perf_counter()
            c.execute(text("SELECT 1")).scalar()
            rt.append(time.perf_counter() - t0)
    out["select1_roundtrip"] = statistics.median(rt)
    return out


def run_mode(mode: str, args: argparse.Namespace, big: Path, workdir: Path) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"mt-bench-{mode}-", dir=workdir))
    svc = Service(mode, home, args)
    out: dict = {"mode": mode}
    try:
        svc.start()
        client = httpx.Client(base_url=svc.url, headers={"Authorization": f"Bearer {svc.token}"}, timeout=120)
        job_id, t0 = create_job(svc, client, workdir)
        path = f"/v1/jobs/{job_id}"
        if mode == "embedded":
            deadline = time.time() + args.job_timeout
            status = ""
            while time.time() < deadline:
                status = client.get(path).json()["status"]
                if status in ("succeeded", "failed", "cancelled"):
                    break
                time.sleep(0.5)
            out["job"] = f"small job {status} {time.perf_counter() - t0:.1f} s after its upload"
        else:
            out["job"] = f"job {client.get(path).json()['status']} (no worker in this mode)"
        lat, wall = asyncio.run(closed_loop(svc.url, svc.token, path, args.clients, args.requests))
        out["closed"] = {
            "n": len(lat),
            "p50": pct(lat, 0.5),
            "p99": pct(lat, 0.99),
            "mean": statistics.mean(lat),
            "rps": len(lat) / wall,
        }
        lat, wall = asyncio.run(closed_loop(svc.url, svc.token, "/healthz", args.clients, args.requests))
        out["healthz"] = {"n": len(lat), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99), "rps": len(lat) / wall}
        lat = asyncio.run(
            open_loop(svc.url, svc.token, path, args.clients, args.poll_rate, args.poll_seconds)
        )
        out["open"] = {"n": len(lat), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99)}
        lat, _ = asyncio.run(closed_loop(svc.url, svc.token, path, 1, args.sequential))
        out["sequential"] = {"n": len(lat), "p50": pct(lat, 0.5), "p99": pct(lat, 0.99)}
        out["handler"] = handler_time(svc, job_id, args.sequential)
        out["upload"] = measure_upload(svc, client, big)
        client.close()
    except Exception as exc:  # report and go on with the other mode
        out["error"] = f"{type(exc).__name__}: {exc}"
        log = home / "service.log"
        if log.exists():
            out["log_tail"] = log.read_text(errors="replace")[-2000:]
    finally:
        svc.stop()
        shutil.rmtree(home, ignore_errors=True)
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def _process_tree(root: int) -> list[int]:
    """``root`` and every process below it (uvicorn's supervisor and its API processes)."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            parents.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(parents.get(pid, []))
    return out


def _postgres_backends(db_name: str) -> tuple[list[int], int]:
    """The pids of the Postgres processes serving ``db_name`` now, and how many sessions it has had."""
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as c:
        rows = c.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()", (db_name,)
        ).fetchall()
        c.execute("SELECT pg_stat_clear_snapshot()")
        sessions = c.execute(
            "SELECT sessions FROM pg_stat_database WHERE datname = %s", (db_name,)
        ).fetchone()
    return [r[0] for r in rows], int(sessions[0] if sessions else 0)


class CpuMeter:
    """CPU seconds used between :meth:`start` and :meth:`stop` by the service's processes and by the
    Postgres backends serving its database (a backend opened meanwhile counts from zero; one opened
    and closed meanwhile is not seen: :meth:`stop` also says how many connections were opened)."""

    def __init__(self, svc: Service) -> None:
        self.svc = svc

    def _sample(self) -> tuple[dict[int, float], dict[int, float], int]:
        assert self.svc.proc is not None
        server = {p: _cpu_seconds(p) for p in _process_tree(self.svc.proc.pid)}
        pids, sessions = _postgres_backends(self.svc.db_name)
        return server, {p: _cpu_seconds(p) for p in pids}, sessions

    def start(self) -> None:
        self.before = self._sample()

    def stop(self) -> tuple[float, float, int]:
        time.sleep(0.6)  # pg_stat_database counts a closed session within PGSTAT_MIN_INTERVAL (0.5 s)
        after = self._sample()
        server = sum(v - self.before[0].get(p, 0.0) for p, v in after[0].items())
        pg = sum(v - self.before[1].get(p, 0.0) for p, v in after[1].items())
        return server, pg, after[2] - self.before[2]


def _replica_jobs(svc: Service, client: httpx.Client, workdir: Path) -> dict[str, str]:
    """Three jobs of one project: the first made ``running`` (progress half way through its first
    epoch), the other two ``queued`` behind it. Answers {"queued": the last, "running": the first}."""
    import psycopg

    first, _ = create_job(svc, client, workdir)
    job = client.get(f"/v1/jobs/{first}").json()
    body = {k: job[k] for k in ("checkpoint_id", "dataset_id", "backbone", "hyperparameters")}
    ids = [first] + [client.post("/v1/jobs", json=body).raise_for_status().json()["id"] for _ in range(2)]
    progress = '{"epoch": 1, "epochs": 2, "step": 5, "steps": 10, "loss": 1.25}'
    with psycopg.connect(svc.env["MERGETUNE_DATABASE_URL"].replace("+psycopg", ""), autocommit=True) as c:
        c.execute(
            "UPDATE jobs SET status = 'running', worker_host = 'bench@host', started_at = now() - "
            "interval '60 seconds', attempt_started_at = now() - interval '60 seconds', progress = %s, "
            "progress_at = now() WHERE id = %s",
            (progress, first),
        )
    return {"queued": ids[-1], "running": first}


def statements_per_get(svc: Service, path: str, n: int = 20) -> tuple[float, float]:
    """(SQL statements, pool checkouts) per authenticated GET of ``path`` after warm-up: the service's
    app built in this process on the same database, called through ASGI (every middleware, dependency
    and the route). A checkout costs one more round trip (the pool's liveness ping), not counted."""
    from sqlalchemy import event
    from starlette.testclient import TestClient

    from mergetune.api.main import create_app
    from mergetune.common.db import get_engine
    from mergetune.common.settings import Settings

    url = svc.env["MERGETUNE_DATABASE_URL"]
    settings = Settings(
        HOME=svc.home / "in-process", DATABASE_URL=url, BROKER_URL=svc.env["MERGETUNE_BROKER_URL"]
    )
    engine = get_engine(url)
    counts = [0, 0]

    def statement(*_a: object) -> None:
        counts[0] += 1

    def checkout(*_a: object) -> None:
        counts[1] += 1

    headers = {"Authorization": f"Bearer {svc.token}"}
    with TestClient(create_app(settings)) as c:
        for _ in range(3):
            c.get(path, headers=headers).raise_for_status()
        event.listen(engine, "before_cursor_execute", statement)
        event.listen(engine.pool, "checkout", checkout)
        try:
            for _ in range(n):
                c.get(path, headers=headers).raise_for_status()
        finally:
            event.remove(engine, "before_cursor_execute", statement)
            event.remove(engine.pool, "checkout", checkout)
    return counts[0] / n, counts[1] / n


def run_replicas(args: argparse.Namespace, workdir: Path) -> None:
    """GET /v1/jobs/{id} of a queued and of a running job, ``--clients`` back to back, against 1 and N
    API processes (``mergetune serve --workers N``) on Postgres/Redis, one after the other in this run."""
    from bench.httpload import build_get, closed_loop, percentile

    counts = [int(x) for x in args.replicas.split(",") if x]
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; load average at start {os.getloadavg()[0]:.2f}")
    print(
        "client: raw asyncio HTTP/1.1 keep-alive connections (uvloop), one pre-built request, in this process; "
        f"service log level {args.log_level} (no access log below INFO)"
    )
    import importlib.util

    stack = [m for m in ("uvloop", "httptools") if importlib.util.find_spec(m) is not None]
    print(f"server: uvicorn, {' + '.join(stack) or 'asyncio + h11'} (its 'auto' choice)")
    rows, statements = [], {}
    for n in counts:
        home = Path(tempfile.mkdtemp(prefix=f"mt-bench-x{n}-", dir=workdir))
        svc = Service("postgres", home, args, processes=n)
        try:
            svc.start()
            with httpx.Client(
                base_url=svc.url, headers={"Authorization": f"Bearer {svc.token}"}, timeout=120
            ) as cl:
                jobs = _replica_jobs(svc, cl, workdir)
            for kind, job_id in jobs.items():
                path = f"/v1/jobs/{job_id}"
                request = build_get("127.0.0.1", svc.port, path, {"Authorization": f"Bearer {svc.token}"})
                if kind not in statements:
                    statements[kind] = statements_per_get(svc, path)
                closed_loop("127.0.0.1", svc.port, request, args.clients, 5)  # warm every process
                for clients, per_client in ((args.clients, args.requests), (1, args.single)):
                    if not per_client:
                        continue
                    loads: list[float] = []
                    stop = threading.Event()

                    def sample(loads: list[float] = loads, stop: threading.Event = stop) -> None:
                        while not stop.wait(1.0):
                            loads.append(os.getloadavg()[0])

                    sampler = threading.Thread(target=sample, daemon=True)
                    meter = CpuMeter(svc)
                    meter.start()
                    sampler.start()
                    res = closed_loop("127.0.0.1", svc.port, request, clients, per_client)
                    stop.set()
                    sampler.join()
                    server_cpu, pg_cpu, opened = meter.stop()
                    bad = {s: c for s, c in res.statuses.items() if s != 200}
                    if bad or res.reconnects:
                        print(
                            f"{n} process(es), {kind}: answers other than 200 {bad}, reconnects {res.reconnects}"
                        )
                    k = len(res.latencies)
                    rows.append(
                        {
                            "n": n,
                            "job": kind,
                            "clients": clients,
                            "requests": k,
                            "rps": res.rps,
                            "p50": percentile(res.latencies, 0.5),
                            "p99": percentile(res.latencies, 0.99),
                            "load": max(loads or [os.getloadavg()[0]]),
                            "server_ms": server_cpu / k * 1e3,
                            "pg_ms": pg_cpu / k * 1e3,
                            "client_ms": res.cpu_seconds / k * 1e3,
                            "opened": opened,
                        }
                    )
        finally:
            svc.stop()
            shutil.rmtree(home, ignore_errors=True)
    print(
        "\nGET /v1/jobs/{id}, closed loop (each client sends its next request when the answer is in), Postgres + Redis"
    )
    print(
        "CPU ms per request: the API processes / the Postgres backends of its database / the load generator"
    )
    print(
        "| API processes | job | clients | requests | req/s | p50 ms | p99 ms | CPU ms: API / Postgres / client | connections opened | load average (1 min, peak) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']} | {r['job']} | {r['clients']} | {r['requests']} | {r['rps']:.0f} | {r['p50'] * 1e3:.1f} | "
            f"{r['p99'] * 1e3:.1f} | {r['server_ms']:.2f} / {r['pg_ms']:.2f} / {r['client_ms']:.2f} | {r['opened']} | {r['load']:.2f} |"
        )
    for kind, (st, co) in statements.items():
        print(f"SQL statements per GET of the {kind} job after warm-up: {st:.2f} ({co:.2f} pool checkouts)")
    many = [r for r in rows if r["clients"] == args.clients]
    for kind in statements:
        by_n = {r["n"]: r for r in many if r["job"] == kind}
        if len(counts) >= 2 and counts[0] in by_n and counts[-1] in by_n:
            lo, hi = by_n[counts[0]], by_n[counts[-1]]
            goal = "MET" if hi["rps"] >= 250 and hi["p99"] <= 0.3 else "MISSED"
            print(
                f"{kind} job: {counts[-1]} : {counts[0]} processes {hi['rps'] / lo['rps']:.2f}x req/s; goal with "
                f"{counts[-1]} processes (>= 250 req/s, p99 <= 300 ms at {args.clients} clients): {goal}"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default="embedded,postgres")
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--requests", type=int, default=40, help="GETs per client in the closed loop")
    ap.add_argument("--poll-rate", type=float, default=1.0, help="GETs/s per client in the open loop")
    ap.add_argument("--poll-seconds", type=float, default=10.0)
    ap.add_argument("--sequential", type=int, default=200, help="GETs of the one-client / in-process runs")
    ap.add_argument("--redis-db", type=int, default=13)
    ap.add_argument(
        "--log-level",
        default=None,
        help="MERGETUNE_LOG_LEVEL of the service (default INFO; WARNING with --replicas: no access log)",
    )
    ap.add_argument(
        "--single",
        type=int,
        default=200,
        help="with --replicas: GETs of the one-client run after each (0: none)",
    )
    ap.add_argument("--job-timeout", type=float, default=180.0)
    ap.add_argument(
        "--replicas", default="", help="e.g. 1,2: only the GET closed loop against that many API processes"
    )
    args = ap.parse_args()
    if args.log_level is None:
        args.log_level = "WARNING" if args.replicas else "INFO"
    if args.replicas:
        workdir = Path(tempfile.mkdtemp(prefix="mt-bench-api-"))
        try:
            run_replicas(args, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        return

    print(f"machine: {machine(__import__('torch').device('cpu'))}")
    print(
        f"client: httpx async in this process (shares the CPU with the service); log level {args.log_level}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="mt-bench-api-"))
    try:
        big = workdir / "model.pth.tar-50"
        size = make_dassl_file(big)
        print(f"upload file: Dassl model.pth.tar, {size / 1e6:.1f} MB (token_suffix 1000x72x512 fp32)")
        for mode in [m for m in args.modes.split(",") if m]:
            r = run_mode(mode, args, big, workdir)
            print(f"\n== {mode}")
            if "error" in r:
                print(f"FAILED: {r['error']}\n{r.get('log_tail', '')}")
                continue
            print(r["job"])
            c, o, u = r["closed"], r["open"], r["upload"]
            ok = "MET" if c["p99"] <= 0.025 else "MISSED"
            print(
                f"GET /v1/jobs/{{id}}, {args.clients} clients closed loop ({c['n']} requests): "
                f"p50 {c['p50'] * 1e3:.1f} ms, p99 {c['p99'] * 1e3:.1f} ms, {c['rps']:.0f} req/s "
                f"-> target p99 <= 25 ms {ok}"
            )
            hz = r["healthz"]
            print(
                f"GET /healthz (no auth, no DB), same closed loop: p50 {hz['p50'] * 1e3:.1f} ms, "
                f"p99 {hz['p99'] * 1e3:.1f} ms, {hz['rps']:.0f} req/s (floor set by HTTP stack + client + CPU)"
            )
            print(
                f"GET /v1/jobs/{{id}}, {args.clients} clients x {args.poll_rate:g} req/s open loop "
                f"({o['n']} requests): p50 {o['p50'] * 1e3:.1f} ms, p99 {o['p99'] * 1e3:.1f} ms"
            )
            q, h = r["sequential"], r["handler"]
            print(
                f"GET, one client sequential ({q['n']} requests): p50 {q['p50'] * 1e3:.1f} ms, "
                f"p99 {q['p99'] * 1e3:.1f} ms; handler work in-process (no HTTP): "
                + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in h.items() if k != "statements_per_get")
                + f"; {h['statements_per_get']:.1f} SQL statements per GET (pool pre-ping not counted)"
            )
            ok = "MET" if u["growth"] <= 64 else "MISSED"
            print(
                f"upload {size / 1e6:.0f} MB: HTTP {u['status']} ({u['ckpt_status']}"
                f"{', ' + str(u['error']) if u['error'] else ''}) in {u['seconds']:.1f} s; API RSS "
                f"{u['rss_before']} MB -> peak {u['peak']} MB: growth {u['growth']} MB "
                f"(VmHWM reset: {u['hwm_reset']}) -> target <= 64 MB {ok}"
            )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
