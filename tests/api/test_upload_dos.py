"""Uploads cannot exhaust the service: every file of the DoS corpus (tests/dos_corpus.py), uploaded
through REST to a real uvicorn process on its own Postgres database, is answered within a few seconds
with a clear code; the API's resident memory (the API process plus all its descendants: the parse
server and the parse children, sampled from /proc every 5 ms) grows by less than RSS_BOUND_MB; and
/healthz keeps answering throughout. A full parse pool answers 503 with Retry-After."""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from dos_corpus import CORPUS, build, empty_list_flood, state, torch_zip
from hostile_archives import HOSTILE, bz2_bomb, gnu_long_name, gz_bomb, pax_huge

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

import worker_support as ws  # noqa: E402

#: Documented bound (docs/CONFIGURATION.md, upload limits) on what one hostile upload may add to the API's memory.
RSS_BOUND_MB = 300
ANSWER_SECONDS = 5.0
DOS_REDIS_DB = 9

pytestmark = pytest.mark.slow


def _children(pid: int) -> list[int]:
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def tree_rss(pid: int) -> int:
    """VmRSS of ``pid`` and all its descendants, in bytes."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
        todo += _children(p)
    return total


class Watch:
    """Samples the API's tree RSS and polls /healthz in background threads."""

    def __init__(self, pid: int, url: str) -> None:
        self.pid, self.url = pid, url
        self.peak = 0
        self.health_fail = 0
        self.health_max = 0.0
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._rss), threading.Thread(target=self._health)]

    def _rss(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(0.005)

    def _health(self) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                t = time.monotonic()
                try:
                    ok = client.get(f"{self.url}/healthz").status_code == 200
                except httpx.HTTPError:
                    ok = False
                self.health_max = max(self.health_max, time.monotonic() - t)
                self.health_fail += not ok
                time.sleep(0.05)

    def __enter__(self) -> Watch:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        for t in self._threads:
            t.join()


@pytest.fixture(scope="module")
def api_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import redis

    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    broker = f"{os.environ.get('MERGETUNE_TEST_REDIS_URL', ws.REDIS_URL)}/{DOS_REDIS_DB}"
    started: list[ws.ApiProcess] = []
    with ws.fresh_database("mt_dos") as url:
        redis.Redis.from_url(broker).flushdb()

        def start(name: str, **extra: Any) -> tuple[ws.ApiProcess, Any, dict[str, str]]:
            home = tmp_path_factory.mktemp(name) / "home"
            settings = ws.make_settings(home, url, broker, **extra)
            env = {**ws.settings_env(settings), **{f"MERGETUNE_{k}": str(v) for k, v in extra.items()}}
            api = ws.ApiProcess(env, home.parent / "api.log").start(wait=False)
            started.append(api)
            with session_scope(url) as s:
                _, secret = repo.create_token(s, repo.get_or_create_project(s, f"dos-{name}"))
            api.wait_ready(90)
            return api, settings, {"Authorization": f"Bearer {secret}"}

        try:
            yield start
        finally:
            for api in started:
                api.stop()
            redis.Redis.from_url(broker).flushdb()


def _upload(url: str, auth: dict[str, str], path: Path) -> tuple[httpx.Response, float]:
    t = time.monotonic()
    with path.open("rb") as f:
        r = httpx.post(f"{url}/v1/checkpoints", files={"file": (path.name, f)}, headers=auth, timeout=60)
    return r, time.monotonic() - t


def test_dos_corpus_through_rest(api_factory: Any, tmp_path: Path) -> None:
    api, settings, auth = api_factory("corpus")
    assert api.proc is not None
    files = {name: build(name, tmp_path) for name in CORPUS}
    warm, _ = _upload(api.url, auth, torch_zip(tmp_path / "ok.pth", state()))  # starts the parse server
    assert warm.status_code == 201 and warm.json()["status"] == "ready", warm.text
    baseline = tree_rss(api.proc.pid)
    rows = []
    with Watch(api.proc.pid, api.url) as watch:
        for name, path in files.items():
            watch.peak = tree_rss(api.proc.pid)
            r, took = _upload(api.url, auth, path)
            time.sleep(0.02)  # one more sample after the answer
            body = r.json()
            code = body["error"]["code"] if r.status_code == 422 else (body.get("error") or {}).get("code")
            code = code or body.get("status")  # "ready": a file read within the limits
            rows.append(
                (name, r.status_code, code, took, (watch.peak - baseline) / 2**20, path.stat().st_size)
            )
    print(f"\nAPI baseline tree RSS {baseline / 2**20:.0f} MB (after one valid upload)")
    print(
        f"{'pattern':28s} {'bytes':>9s} {'HTTP':>4s} {'code':18s} {'time s':>7s} {'peak RSS growth MB':>18s}"
    )
    for name, status, code, took, growth, size in rows:
        print(f"{name:28s} {size:>9d} {status:>4d} {code!s:18s} {took:7.2f} {growth:18.1f}")
    print(f"/healthz: {watch.health_fail} failures, slowest answer {watch.health_max * 1000:.0f} ms")
    for name, status, code, took, growth, _ in rows:
        _, codes = CORPUS[name]
        assert code in codes, (name, status, code)
        # limit hits: 422 and nothing stored; other refusals: a rejected checkpoint (201)
        assert status == (422 if code in ("too_large", "too_slow") else 201), (name, status)
        assert took < ANSWER_SECONDS, (name, took)
        assert growth < RSS_BOUND_MB, (name, growth)
    assert watch.health_fail == 0
    assert watch.health_max < 2.0
    # only the files read as ready keep bytes (a rejected upload keeps its answer, not its bytes);
    # no upload or parse folder left behind
    stored = {p.name for p in (Path(settings.ARTIFACT_URL) / "checkpoints").iterdir()}
    n_stored = sum(1 for _, status, code, *_ in rows if status == 201 and code == "ready") + 1  # + warm-up
    assert len(stored) == n_stored
    assert list(settings.tmp_dir.iterdir()) == []


def test_full_parse_pool_answers_503_with_retry_after(api_factory: Any, tmp_path: Path) -> None:
    api, settings, auth = api_factory("busy", PARSE_WORKERS=1, PARSE_QUEUE=0, PARSE_RETRY_AFTER=7)
    slow = empty_list_flood(tmp_path / "slow.pth")  # about a second of opcode scanning each
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda _: _upload(api.url, auth, slow)[0], range(6)))
    statuses = sorted(r.status_code for r in results)
    assert 503 in statuses and 422 in statuses, statuses
    for r in results:
        if r.status_code == 503:
            assert r.headers["Retry-After"] == "7"
            assert r.json()["error"]["code"] == "parser_busy"
        else:
            assert r.json()["error"]["code"] == "too_large"
    ok, _ = _upload(api.url, auth, torch_zip(tmp_path / "ok.pth", state()))  # the pool frees up again
    assert ok.status_code == 201
    assert list(settings.tmp_dir.iterdir()) == []


#: The review's archives at full size (a 1 GiB long name, a 256 MiB pax header, 4 GiB of zeros)
#: and the smaller ones that cost the most to read.
FULL_SIZE = {
    "gnu_long_name_1gib.tar.bz2": lambda: gnu_long_name(scale=True),
    "pax_256mib.tar.gz": lambda: pax_huge(scale=True),
    "zeros_bomb.tar.bz2": lambda: bz2_bomb(scale=True),
    "zeros_bomb.gz": lambda: gz_bomb(scale=True),
    "dirs.zip": HOSTILE["dirs.zip"][0],
    "tar_then_zip.tar": HOSTILE["tar_then_zip.tar"][0],
    "name_lf.tar.gz": HOSTILE["name_lf.tar.gz"][0],
}


def _post_archive(url: str, auth: dict[str, str], name: str, data: bytes) -> tuple[httpx.Response, float]:
    t = time.monotonic()
    r = httpx.post(f"{url}/v1/sweeps", files={"file": (name, data)}, headers=auth, timeout=120)
    return r, time.monotonic() - t


def test_eight_parallel_hostile_archives_stay_within_bounds(api_factory: Any, tmp_path: Path) -> None:
    # room for all eight at once (2 read, 6 wait), so that every one of them is really read
    api, settings, auth = api_factory("archives", PARSE_QUEUE=6, PARSE_PROJECT_SHARE=1.0)
    assert api.proc is not None
    warm, _ = _upload(api.url, auth, torch_zip(tmp_path / "ok.pth", state()))  # starts the parse server
    assert warm.status_code == 201, warm.text
    baseline = tree_rss(api.proc.pid)
    rows = []
    with Watch(api.proc.pid, api.url) as watch:
        for name, make in FULL_SIZE.items():
            data = make()
            watch.peak = tree_rss(api.proc.pid)
            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(_post_archive, api.url, auth, name, data) for _ in range(8)]
                answers = [f.result() for f in futures]
            time.sleep(0.02)
            codes = sorted({(r.status_code, r.json()["error"]["code"]) for r, _ in answers})
            rows.append((name, len(data), codes, max(t for _, t in answers), (watch.peak - baseline) / 2**20))
    print(f"\nAPI baseline tree RSS {baseline / 2**20:.0f} MB; 8 parallel requests per archive")
    for name, size, codes, took, growth in rows:
        print(f"{name:28s} {size:>10d} {codes!s:40s} {took:6.2f} s {growth:7.1f} MB")
    print(f"/healthz: {watch.health_fail} failures, slowest answer {watch.health_max * 1000:.0f} ms")
    for name, _, codes, took, growth in rows:
        assert codes == [(422, HOSTILE[name][1])], (name, codes)
        assert took < 30, (name, took)
        assert growth < RSS_BOUND_MB, (name, growth)
    assert watch.health_fail == 0 and watch.health_max < 1.0
    assert list(settings.tmp_dir.iterdir()) == []


def test_one_project_cannot_hold_the_parse_slots(api_factory: Any, tmp_path: Path) -> None:
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope

    api, settings, auth = api_factory("fair")  # the defaults: 2 parse slots, 4 waiting, half each
    with session_scope(settings.DATABASE_URL) as s:
        _, secret = repo.create_token(s, repo.get_or_create_project(s, "dos-fair-other"))
    other = {"Authorization": f"Bearer {secret}"}
    slow = empty_list_flood(tmp_path / "slow.pth")  # about a second of opcode scanning each
    ok_file = torch_zip(tmp_path / "ok.pth", state())
    with ThreadPoolExecutor(6) as pool:
        flood = [pool.submit(_upload, api.url, auth, slow) for _ in range(6)]
        time.sleep(0.5)  # the flood holds every place it may take
        answers = [_upload(api.url, other, ok_file) for _ in range(3)]
        results = [f.result()[0] for f in flood]
    codes = sorted((r.status_code, r.json()["error"]["code"]) for r in results)
    assert codes == [(422, "too_large")] * 3 + [(503, "parser_busy")] * 3, codes
    for r, took in answers:  # the other project is served at once, every time
        assert r.status_code == 201 and r.json()["status"] == "ready", r.text
        assert took < 2.0, took
