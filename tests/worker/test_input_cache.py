"""The worker's input cache: content-named entries, verified before they are trusted, least recently used
evicted past the size bound, shared by processes (one download per entry), and a download killed half
way (SIGKILL) leaves nothing a later fetch trusts."""

from __future__ import annotations

import fcntl
import hashlib
import multiprocessing as mp
import os
import signal
import time

import pytest

from mergetune.common.objcache import CacheError, Expected, ObjectCache, entry_name, etag_md5


def _writer(data: bytes, calls: list[int] | None = None):
    def download(out):
        if calls is not None:
            calls.append(1)
        for i in range(0, len(data), 100):
            out.write(data[i : i + 100])

    return download


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_fetch_verifies_and_hits_without_downloading_again(tmp_path):
    cache = ObjectCache(tmp_path / "c", max_bytes=10_000)
    data = os.urandom(1000)
    name = entry_name(location="b/k.pt", etag="x", sha256=_sha(data), suffix=".pt")
    assert name == f"sha256-{_sha(data)}.pt"
    calls: list[int] = []
    with cache.fetch(name, _writer(data, calls), Expected(size=1000, sha256=_sha(data))) as p:
        assert p.read_bytes() == data
    with cache.fetch(name, _writer(data, calls), Expected(size=1000, sha256=_sha(data))) as p:
        assert p.read_bytes() == data
    assert len(calls) == 1
    assert list((tmp_path / "c" / "partial").iterdir()) == []


@pytest.mark.parametrize(
    "expected",
    [Expected(size=999), Expected(sha256="0" * 64), Expected(md5="0" * 32)],
    ids=["size", "sha256", "md5"],
)
def test_a_mismatch_is_refused_and_nothing_is_kept(tmp_path, expected):
    cache = ObjectCache(tmp_path / "c", max_bytes=10_000)
    with pytest.raises(CacheError), cache.fetch("etag-abc.png", _writer(b"y" * 1000), expected):
        pass
    assert list(cache.objects.iterdir()) == []
    assert list(cache.partial.iterdir()) == []


def test_etag_names_and_md5():
    a = entry_name(
        location="b/img.png", etag='"5d41402abc4b2a76b9719d911017c592"', sha256=None, suffix=".PNG"
    )
    b = entry_name(location="b/img.png", etag='"other"', sha256=None, suffix=".PNG")
    assert a != b and a.startswith("etag-") and a.endswith(".png")
    assert etag_md5('"5d41402abc4b2a76b9719d911017c592"') == "5d41402abc4b2a76b9719d911017c592"
    assert etag_md5("5d41402abc4b2a76b9719d911017c592-3") is None  # multipart: not an MD5
    assert hashlib.md5(b"hello", usedforsecurity=False).hexdigest() == etag_md5(
        a_etag := '"5d41402abc4b2a76b9719d911017c592"'
    )
    assert entry_name(location="b/img.png", etag=a_etag, sha256=None, suffix=".PNG") == a


def test_least_recently_used_is_evicted_past_the_bound_and_entries_in_use_stay(tmp_path):
    cache = ObjectCache(tmp_path / "c", max_bytes=1000)
    blobs = {n: os.urandom(400) for n in ("a", "b", "c", "d")}

    def get(n):
        return cache.fetch(f"etag-{n}", _writer(blobs[n]), Expected(size=400))

    for i, n in enumerate(("a", "b")):
        with get(n):
            pass
        os.utime(cache.objects / f"etag-{n}", (1000 + i, 1000 + i))  # a then b, seconds apart
    with get("a"):  # a hit: a is now the most recently used
        pass
    with get("c"):  # 1200 > 1000: b, the least recently used, goes
        pass
    assert sorted(p.name for p in cache.objects.iterdir()) == ["etag-a", "etag-c"]
    assert cache.usage() == 800
    os.utime(cache.objects / "etag-a", (1000, 1000))  # a is the oldest now, but in use: it stays
    with get("a") as held:
        os.utime(held, (1000, 1000))
        with get("d"):
            pass
        assert held.read_bytes() == blobs["a"]
    assert sorted(p.name for p in cache.objects.iterdir()) == ["etag-a", "etag-d"]
    assert cache.usage() <= 1000


def _slow_fetch(root: str, name: str, data: bytes, counter: str, pause: float) -> None:
    cache = ObjectCache(root, max_bytes=1 << 30)

    def download(out):
        with open(counter, "a") as f:
            f.write("x")
        half = len(data) // 2
        out.write(data[:half])
        time.sleep(pause)
        out.write(data[half:])

    with cache.fetch(name, download, Expected(size=len(data), sha256=_sha(data))) as p:
        assert p.read_bytes() == data


def test_processes_share_one_download(tmp_path):
    data = os.urandom(200_000)
    name = f"sha256-{_sha(data)}"
    counter = tmp_path / "downloads"
    ctx = mp.get_context("fork")
    procs = [
        ctx.Process(target=_slow_fetch, args=(str(tmp_path / "c"), name, data, str(counter), 0.5))
        for _ in range(3)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert counter.read_text() == "x"  # one download, two waited and found it


def test_a_download_killed_half_way_leaves_nothing_trusted(tmp_path):
    data = os.urandom(300_000)
    name = f"sha256-{_sha(data)}.pt"
    root = tmp_path / "c"
    counter = tmp_path / "downloads"
    ctx = mp.get_context("fork")
    proc = ctx.Process(target=_slow_fetch, args=(str(root), name, data, str(counter), 60))
    proc.start()
    partial = root / "partial"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and not any(
        p.stat().st_size > 0 for p in (partial.iterdir() if partial.is_dir() else [])
    ):
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join(10)
    assert proc.exitcode == -signal.SIGKILL
    halves = list(partial.iterdir())
    assert len(halves) == 1 and halves[0].stat().st_size == len(data) // 2  # the half file is there...
    cache = ObjectCache(root, max_bytes=1 << 30)
    assert not (cache.objects / name).exists()  # ...but never under a trusted name
    calls: list[int] = []
    with cache.fetch(name, _writer(data, calls), Expected(size=len(data), sha256=_sha(data))) as p:
        assert p.read_bytes() == data
    assert calls == [1] and list(partial.iterdir()) == []


def test_eviction_removes_a_dead_download_but_not_a_live_one(tmp_path):
    cache = ObjectCache(tmp_path / "c", max_bytes=1 << 20)
    dead = cache.partial / "etag-dead.4242.part"
    dead.write_bytes(b"half")
    cache.evict()
    assert not dead.exists()
    live = cache.partial / "etag-live.4243.part"
    live.write_bytes(b"half")
    with cache._locked("etag-live", fcntl.LOCK_EX):  # a download of that entry is running
        cache.evict()
        assert live.exists()
