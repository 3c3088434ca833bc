"""A bounded local cache of fetched inputs (dataset images, weights files), shared by the worker
processes of one machine.

Entries are named by content: ``sha256-<hex>`` when the object's sha256 is known, else a digest of the
object's location and ETag (an object rewritten in place gets a new ETag, hence a new entry). Each entry
is written to ``partial/`` while it downloads, checked (size, sha256 or the MD5 an ETag carries), then
moved into ``objects/`` with one ``os.replace``: a name in ``objects/`` always holds a whole, verified
file. A download killed half way leaves only a partial file, which no reader trusts and which the next
fetch of that entry (or the next eviction) deletes.

Concurrency: one lock file per entry (``flock``). A reader holds it shared while it uses the file; a
downloader holds it exclusively, so two processes never download the same entry at once (the second
waits, then finds it). Eviction takes a process-wide lock, then deletes the least recently used entries
(a hit refreshes the entry's mtime) until the total is under ``max_bytes``, skipping entries in use.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

logger = logging.getLogger(__name__)

CHUNK = 1024 * 1024
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,200}$")
_MD5 = re.compile(r"^[0-9a-f]{32}$")


class CacheError(Exception):
    """A fetched object did not match what its store said it is (size, sha256, ETag)."""


@dataclass(frozen=True, slots=True)
class Expected:
    """What a fetched object must be: its size, and its sha256 or MD5 when they are known."""

    size: int | None = None
    sha256: str | None = None
    md5: str | None = None


def entry_name(
    *, location: str, etag: str | None, sha256: str | None, suffix: str = "", scope: str | None = None
) -> str:
    """The content name of an object: by sha256 when known, else by (location, ETag). ``suffix`` keeps
    the file's extension (readers tell formats by it). With ``scope`` (a store's endpoint and bucket,
    for inputs read with a dataset's own credentials) the name is prefixed by a digest of it: entries
    of different stores never meet, whatever sha256 or key they claim."""
    suffix = suffix.lower() if re.fullmatch(r"(\.[A-Za-z0-9]{1,10}){0,2}", suffix or "") else ""
    prefix = f"scoped-{hashlib.sha256(scope.encode()).hexdigest()[:24]}-" if scope is not None else ""
    if sha256:
        return f"{prefix}sha256-{sha256.lower()}{suffix}"
    digest = hashlib.sha256(f"{location}\0{etag or ''}".encode()).hexdigest()
    return f"{prefix}etag-{digest}{suffix}"


def etag_md5(etag: str | None) -> str | None:
    """The MD5 an S3 ETag is, for objects stored in one part (multipart ETags end in ``-N``)."""
    value = (etag or "").strip('"').lower()
    return value if _MD5.match(value) else None


class ObjectCache:
    def __init__(self, root: str | os.PathLike[str], max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self.objects = self.root / "objects"
        self.partial = self.root / "partial"
        self.locks = self.root / "locks"
        for d in (self.objects, self.partial, self.locks):
            d.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"ObjectCache({str(self.root)!r}, max_bytes={self.max_bytes})"

    # -- locks ------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self, name: str, mode: int, *, blocking: bool = True) -> Iterator[bool]:
        """Hold the entry's lock file (``fcntl.LOCK_SH`` or ``LOCK_EX``). An evictor may unlink a lock
        file it holds exclusively: after locking, the file we hold must still be the one at the path."""
        path = self.locks / f"{name}.lock"
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                try:
                    fcntl.flock(fd, mode | (0 if blocking else fcntl.LOCK_NB))
                except BlockingIOError:
                    yield False
                    return
                try:
                    same = os.fstat(fd).st_ino == os.stat(path).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield True
                    return
            finally:
                os.close(fd)  # closing the descriptor releases the lock

    # -- fetch ------------------------------------------------------------------------------------
    def path_of(self, name: str) -> Path:
        if not _NAME.match(name):
            raise CacheError(f"bad cache entry name {name!r}")
        return self.objects / name

    @contextlib.contextmanager
    def fetch(self, name: str, download: Callable[[Any], None], expected: Expected) -> Iterator[Path]:
        """The local, verified file of entry ``name``, downloaded with ``download(out)`` when it is not
        cached. The file stays in the cache (not evicted) while the ``with`` block runs."""
        final = self.path_of(name)
        while True:
            with self._locked(name, fcntl.LOCK_SH):
                if final.is_file():
                    with contextlib.suppress(OSError):
                        os.utime(final)  # least recently used: a hit is a use
                    yield final
                    return
            with self._locked(name, fcntl.LOCK_EX):
                if not final.is_file():
                    self._download(name, final, download, expected)
            self.evict(keep=name)
            # loop: take the shared lock and use the file (unless it was evicted in between)

    def _download(self, name: str, final: Path, download: Callable[[Any], None], expected: Expected) -> None:
        for stale in self.partial.glob(f"{name}.*"):  # a killed download of this entry: never trusted
            stale.unlink(missing_ok=True)
        tmp = self.partial / f"{name}.{os.getpid()}.part"
        try:
            with open(tmp, "wb") as raw:
                out = _HashingWriter(raw)
                download(out)
                raw.flush()
                os.fsync(raw.fileno())
            _verify(name, out, expected)
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        logger.info("cache: fetched %s (%d bytes)", name, out.size)

    # -- eviction ---------------------------------------------------------------------------------
    def usage(self) -> int:
        return sum(st.st_size for _, st in self._entries())

    def _entries(self) -> list[tuple[Path, os.stat_result]]:
        out = []
        for p in self.objects.iterdir():
            try:
                out.append((p, p.stat()))
            except FileNotFoundError:
                continue
        return out

    def evict(self, keep: str | None = None) -> int:
        """Delete least recently used entries until the cache holds at most ``max_bytes`` (entries in
        use and ``keep`` stay), and partial files whose download is no longer running. Bytes freed."""
        freed = 0
        fd = os.open(self.root / "evict.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            for part in self.partial.iterdir():
                name = part.name.rsplit(".", 2)[0]
                with self._locked(name, fcntl.LOCK_EX, blocking=False) as got:
                    if got:  # nobody downloads this entry: the partial file is a dead download's
                        part.unlink(missing_ok=True)
            entries = sorted(self._entries(), key=lambda e: e[1].st_mtime)
            total = sum(st.st_size for _, st in entries)
            for path, st in entries:
                if total <= self.max_bytes:
                    break
                if path.name == keep:
                    continue
                with self._locked(path.name, fcntl.LOCK_EX, blocking=False) as got:
                    if not got:
                        continue  # in use by a reader or being replaced
                    try:
                        path.unlink()
                    except FileNotFoundError:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        (self.locks / f"{path.name}.lock").unlink()
                total -= st.st_size
                freed += st.st_size
        finally:
            os.close(fd)
        if freed:
            logger.info("cache: evicted %d bytes (now %d of %d)", freed, total, self.max_bytes)
        return freed


class _HashingWriter:
    """A binary writer that counts and hashes what passes through it."""

    def __init__(self, raw: IO[bytes]) -> None:
        self.raw = raw
        self.size = 0
        self.sha256 = hashlib.sha256()
        self.md5 = hashlib.md5(usedforsecurity=False)

    def write(self, data: bytes) -> int:
        view = memoryview(data)
        self.sha256.update(view)
        self.md5.update(view)
        self.size += len(view)
        self.raw.write(view)
        return len(view)

    def writable(self) -> bool:
        return True


def _verify(name: str, out: _HashingWriter, expected: Expected) -> None:
    if expected.size is not None and out.size != expected.size:
        raise CacheError(f"{name}: {out.size} bytes fetched, the store says {expected.size}")
    if expected.sha256 and out.sha256.hexdigest() != expected.sha256.lower():
        raise CacheError(f"{name}: sha256 {out.sha256.hexdigest()} differs from {expected.sha256}")
    if expected.md5 and out.md5.hexdigest() != expected.md5.lower():
        raise CacheError(f"{name}: MD5 differs from the object's ETag")


__all__ = ["CacheError", "Expected", "ObjectCache", "entry_name", "etag_md5"]
