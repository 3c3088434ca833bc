"""Hostile sweep archives against a real API process: each archive sent N times in parallel.

    .venv/bin/python bench/hostile_archives.py                  # every archive, 8 in parallel
    .venv/bin/python bench/hostile_archives.py --parallel 8 --only zeros_bomb.tar.bz2

The service is ``mergetune serve`` (uvicorn, no worker) on a fresh Postgres database and a Redis
database number (both dropped / flushed at the end), as in bench/api.py's ``postgres`` mode, with
``PARSE_QUEUE`` = N and ``PARSE_PROJECT_SHARE`` = 1 so that all N requests of one project are really
read (with the defaults a project gets half the pool and the rest of its requests 503
``parser_busy``: ``--default-pool``). The archives are those of tests/hostile_archives.py at the
review's sizes: a GNU long name declaring 1 GiB (.tar.bz2), a 256 MiB pax header (.tar.gz), 4 GiB
of zeros (.tar.bz2 and .gz), a zip of 200,000 directory entries (55 MB), and the small malformed,
sparse, control-character, overlapping and polyglot ones.

While each archive's N requests run, the resident memory of the API process and all its descendants
(the parse server and its children) is sampled from /proc every 20 ms, ``/healthz`` is polled every
100 ms, and a second project uploads a valid checkpoint every 0.5 s. Printed: one row per archive with
the answers (status and code, how many of each), the slowest answer, the peak RSS growth over the
baseline (after one valid upload has started the parse server), the slowest ``/healthz`` and the
second project's slowest upload.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/hostile_archives.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import hostile_archives as ha  # noqa: E402
import httpx  # noqa: E402
from dos_corpus import state, torch_zip  # noqa: E402

from bench.api import Service  # noqa: E402

FULL_SIZE: dict[str, Callable[[], bytes]] = {
    "gnu_long_name_1gib.tar.bz2": lambda: ha.gnu_long_name(scale=True),
    "pax_256mib.tar.gz": lambda: ha.pax_huge(scale=True),
    "zeros_bomb.tar.bz2": lambda: ha.bz2_bomb(scale=True),
    "zeros_bomb.gz": lambda: ha.gz_bomb(scale=True),
    "dirs.zip": lambda: ha.zip_dirs(200_000, 100),
}


def tree_rss(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants, in bytes."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(ln.split()[1]) * 1024 for ln in f if ln.startswith("VmRSS:"))
            for tid in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except (OSError, StopIteration):
            continue
    return total


class Watch:
    """RSS sampler, /healthz poller and a second project's valid uploads, in background threads."""

    def __init__(self, pid: int, url: str, bystander: dict[str, str], ok_file: Path) -> None:
        self.pid, self.url, self.bystander, self.ok_file = pid, url, bystander, ok_file
        self.stop = threading.Event()
        self.reset()
        self.threads = [
            threading.Thread(target=t, daemon=True) for t in (self._rss, self._health, self._other)
        ]

    def reset(self) -> None:
        self.peak = 0
        self.health_max = 0.0
        self.health_fail = 0
        self.other_max = 0.0
        self.other_codes: Counter[int] = Counter()

    def _rss(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(0.02)

    def _health(self) -> None:
        with httpx.Client(timeout=10) as c:
            while not self.stop.is_set():
                t = time.monotonic()
                try:
                    ok = c.get(f"{self.url}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.health_max = max(self.health_max, time.monotonic() - t)
                self.health_fail += not ok
                time.sleep(0.1)

    def _other(self) -> None:
        with httpx.Client(timeout=120, headers=self.bystander) as c:
            while not self.stop.wait(0.5):
                t = time.monotonic()
                with self.ok_file.open("rb") as f:
                    r = c.post(f"{self.url}/v1/checkpoints", files={"file": ("ok.pth", f)})
                self.other_max = max(self.other_max, time.monotonic() - t)
                self.other_codes[r.status_code] += 1

    def __enter__(self) -> Watch:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join()


def post(url: str, auth: dict[str, str], name: str, path: Path) -> tuple[str, float]:
    t = time.monotonic()
    with path.open("rb") as f:
        r = httpx.post(f"{url}/v1/sweeps", files={"file": (name, f)}, headers=auth, timeout=300)
    took = time.monotonic() - t
    try:
        code = r.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = "-"
    return f"{r.status_code} {code}", took


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parallel", type=int, default=8)
    ap.add_argument("--only", nargs="*", default=None, help="archive names (default: all)")
    ap.add_argument("--default-pool", action="store_true", help="keep PARSE_QUEUE / PARSE_PROJECT_SHARE")
    ap.add_argument("--redis-db", type=int, default=13)
    ap.add_argument("--log-level", default="WARNING")
    args = ap.parse_args()
    builders: dict[str, Callable[[], bytes]] = {name: b for name, (b, _) in ha.HOSTILE.items()}
    builders.update(FULL_SIZE)
    names = args.only or list(builders)
    with tempfile.TemporaryDirectory(prefix="bench-archives-") as tmp:
        work = Path(tmp)
        svc = Service("postgres", work / "home", args)
        (work / "home").mkdir()
        if not args.default_pool:
            svc.env.update(MERGETUNE_PARSE_QUEUE=str(args.parallel), MERGETUNE_PARSE_PROJECT_SHARE="1")
        svc.start()
        try:
            assert svc.proc is not None
            auth = {"Authorization": f"Bearer {svc.token}"}
            other = svc._cli("token", "create", "--project", "bystander").strip().splitlines()[-1]
            ok_file = torch_zip(work / "ok.pth", state())
            with ok_file.open("rb") as f:  # the first parse starts the parse server
                r = httpx.post(f"{svc.url}/v1/checkpoints", files={"file": ("ok.pth", f)}, headers=auth)
            r.raise_for_status()
            time.sleep(0.5)
            baseline = tree_rss(svc.proc.pid)
            rows = []
            with Watch(svc.proc.pid, svc.url, {"Authorization": f"Bearer {other}"}, ok_file) as watch:
                for name in names:
                    path = work / name
                    path.write_bytes(builders[name]())
                    watch.reset()
                    with ThreadPoolExecutor(args.parallel) as pool:
                        futures = [pool.submit(post, svc.url, auth, name, path) for _ in range(args.parallel)]
                        answers = [f.result() for f in futures]
                    time.sleep(0.05)
                    counts = Counter(a for a, _ in answers)
                    rows.append(
                        (
                            name,
                            path.stat().st_size,
                            ", ".join(f"{n}x {a}" for a, n in sorted(counts.items())),
                            max(t for _, t in answers),
                            (watch.peak - baseline) / 2**20,
                            watch.health_max * 1000,
                            watch.health_fail,
                            watch.other_max,
                            dict(watch.other_codes),
                        )
                    )
                    path.unlink()
                    print(f"  {name}: done", file=sys.stderr)
        finally:
            svc.stop()
    print(
        f"\nAPI (uvicorn, Postgres) baseline RSS with its parse server: {baseline / 2**20:.0f} MB; "
        f"{args.parallel} parallel requests per archive; "
        + (
            "default parse pool"
            if args.default_pool
            else f"PARSE_QUEUE={args.parallel}, PARSE_PROJECT_SHARE=1"
        )
    )
    print(f"CPU: {os.cpu_count()} cores, Python {sys.version.split()[0]}\n")
    print(
        "| archive | bytes | answers | slowest answer s | peak RSS growth MB | max /healthz ms "
        "| other project's slowest upload s |"
    )
    print("|---|---:|---|---:|---:|---:|---:|")
    for name, size, answers, took, growth, health, fails, other, codes in rows:
        health_s = f"{health:.0f}" + (f" ({fails} failed)" if fails else "")
        other_s = "-" if not codes else f"{other:.2f}" + ("" if set(codes) <= {201} else f" {codes}")
        print(f"| {name} | {size} | {answers} | {took:.2f} | {growth:.0f} | {health_s} | {other_s} |")


if __name__ == "__main__":
    main()
