"""Reading an uploaded CoOp output tree (zip or tar) without trusting it.

CoOp / KgCoOp (Dassl) write one directory per run::

    <anything>/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<N>/prompt_learner/model.pth.tar-<E>

The whole archive is checked before anything is extracted: member count, declared sizes (each and in
total), and every member's name and type: absolute paths, ``..`` components, backslashes, control
characters, links (symbolic or hard), devices and FIFOs refuse the archive, as do encrypted zip
members. Only the checkpoint files are extracted, one at a time, streamed with a byte cap (a
member whose content outgrows its declared size is refused too), so neither a decompression bomb nor
a lying header can fill the disk. The checkpoints then go through the same ingestion service as single
uploads (mergetune.api.services.checkpoints.create_checkpoint: the sandboxed parse).
"""

from __future__ import annotations

import hashlib
import re
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from mergetune.api.errors import Unprocessable
from mergetune.api.hygiene import has_control

TREE_RE = re.compile(
    r"(?:^|/)(?P<dataset>[^/]+)/shots_(?P<shots>\d+)/(?P<trainer>[^/]+)/(?P<cfg>[^/]+)/"
    r"seed(?P<seed>\d+)/prompt_learner/model\.pth\.tar-(?P<epoch>\d+)$"
)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int
    max_unpacked_bytes: int
    max_member_bytes: int


@dataclass(frozen=True)
class TreeCheckpoint:
    """The last epoch's checkpoint of one run directory of the tree."""

    member: str
    dataset: str
    shots: int
    trainer: str
    cfg: str
    seed: int
    epoch: int
    size: int

    @property
    def run(self) -> str:
        return f"{self.dataset}/shots_{self.shots}/{self.trainer}/{self.cfg}/seed{self.seed}"


def _refuse(message: str, code: str) -> Unprocessable:
    return Unprocessable(message, code=code, param="file")


def check_member_name(name: str) -> str:
    """The member's path if it is a plain relative path; refuses the archive otherwise."""
    shown = name[:200].encode("unicode_escape").decode("ascii")
    if has_control(name):
        raise _refuse(f"archive member {shown!r} has a control character in its name", "unsafe_archive")
    if "\\" in name:
        raise _refuse(f"archive member {shown!r} has a backslash in its name", "unsafe_archive")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _refuse(f"archive member {shown!r} has an absolute path", "unsafe_archive")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise _refuse(f"archive member {shown!r} points outside the archive (..)", "unsafe_archive")
    return "/".join(p for p in parts if p not in ("", "."))


class TreeArchive:
    """An opened, fully checked archive: ``checkpoints`` (one per run directory, last epoch) and
    :meth:`extract` for one of them."""

    def __init__(self, path: Path, limits: ArchiveLimits) -> None:
        self.limits = limits
        self._zip: zipfile.ZipFile | None = None
        self._tar: tarfile.TarFile | None = None
        self._members: dict[str, zipfile.ZipInfo | tarfile.TarInfo] = {}
        try:
            if zipfile.is_zipfile(path):
                self._zip = zipfile.ZipFile(path)
            else:
                self._tar = tarfile.open(path, "r:*")
        except (tarfile.TarError, zipfile.BadZipFile, OSError, EOFError) as exc:
            raise _refuse(
                f"the file is not a zip or tar archive ({type(exc).__name__})", "not_an_archive"
            ) from None
        try:
            self.checkpoints = self._scan()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        if self._tar is not None:
            self._tar.close()

    def _entries(self) -> Iterator[tuple[str, bool, int, zipfile.ZipInfo | tarfile.TarInfo]]:
        """(name, is_file, declared size, info) of every member, refusing unsafe types on the way."""
        if self._zip is not None:
            for zi in self._zip.infolist():
                mode = zi.external_attr >> 16
                if mode and stat.S_ISLNK(mode):
                    raise _refuse(
                        f"archive member {zi.filename[:200]!r} is a symbolic link", "unsafe_archive"
                    )
                if zi.flag_bits & 0x1:
                    raise _refuse(f"archive member {zi.filename[:200]!r} is encrypted", "unsafe_archive")
                yield zi.filename, not zi.is_dir(), zi.file_size, zi
            return
        assert self._tar is not None
        try:
            for ti in self._tar:
                if ti.issym() or ti.islnk():
                    raise _refuse(f"archive member {ti.name[:200]!r} is a link", "unsafe_archive")
                if not (ti.isreg() or ti.isdir()):
                    raise _refuse(
                        f"archive member {ti.name[:200]!r} is not a file or directory", "unsafe_archive"
                    )
                yield ti.name, ti.isreg(), ti.size, ti
        except (tarfile.TarError, EOFError, OSError, zipfile.BadZipFile) as exc:
            raise _refuse(f"the archive is damaged ({type(exc).__name__}: {exc})", "not_an_archive") from None

    def _scan(self) -> list[TreeCheckpoint]:
        lim = self.limits
        count = total = 0
        runs: dict[str, TreeCheckpoint] = {}
        for raw, is_file, size, info in self._entries():
            count += 1
            if count > lim.max_members:
                raise _refuse(f"the archive has more than {lim.max_members} members", "too_many_members")
            name = check_member_name(raw)
            if not is_file:
                continue
            total += size
            if total > lim.max_unpacked_bytes:
                raise _refuse(
                    f"the archive unpacks to more than {lim.max_unpacked_bytes} bytes", "archive_too_large"
                )
            m = TREE_RE.search(name)
            if m is None:
                continue  # logs, configs, optimiser state of other files: ignored (but checked above)
            if size > lim.max_member_bytes:
                raise _refuse(
                    f"{name[:200]!r} is {size} bytes, over the limit of {lim.max_member_bytes}", "too_large"
                )
            if name in self._members:
                raise _refuse(f"archive member {name[:200]!r} appears twice", "duplicate_member")
            self._members[name] = info
            ck = TreeCheckpoint(
                member=name,
                dataset=m["dataset"],
                shots=int(m["shots"]),
                trainer=m["trainer"],
                cfg=m["cfg"],
                seed=int(m["seed"]),
                epoch=int(m["epoch"]),
                size=size,
            )
            prev = runs.get(ck.run)
            if prev is None or ck.epoch > prev.epoch:
                runs[ck.run] = ck
        if not runs:
            raise _refuse(
                "no checkpoint found: expected <dataset>/shots_<K>/<Trainer>/<cfg>/seed<N>/prompt_learner/"
                "model.pth.tar-<epoch> (a CoOp output directory)",
                "empty_tree",
            )
        seen: dict[tuple[str, int], TreeCheckpoint] = {}
        for ck in sorted(runs.values(), key=lambda c: (c.dataset, c.seed, c.run)):
            other = seen.setdefault((ck.dataset, ck.seed), ck)
            if other is not ck:
                raise _refuse(
                    f"dataset {ck.dataset!r} seed {ck.seed} has two runs ({other.run} and {ck.run}); "
                    "upload one trainer/config per sweep",
                    "ambiguous_tree",
                )
        return sorted(runs.values(), key=lambda c: (c.dataset, c.seed))

    def extract(self, ck: TreeCheckpoint, dest: Path) -> tuple[int, str]:
        """Stream one checkpoint member to ``dest`` (at most its declared size and the member limit);
        returns (bytes, sha256)."""
        info = self._members[ck.member]
        cap = min(ck.size, self.limits.max_member_bytes)
        src: IO[bytes] | None
        if self._zip is not None:
            assert isinstance(info, zipfile.ZipInfo)
            src = self._zip.open(info)
        else:
            assert self._tar is not None and isinstance(info, tarfile.TarInfo)
            src = self._tar.extractfile(info)
        if src is None:
            raise _refuse(f"archive member {ck.member[:200]!r} cannot be read", "not_an_archive")
        h, n = hashlib.sha256(), 0
        try:
            with src, open(dest, "wb") as out:
                while chunk := src.read(_CHUNK):
                    n += len(chunk)
                    if n > cap:
                        raise _refuse(
                            f"{ck.member[:200]!r} unpacks to more than its declared {ck.size} bytes",
                            "archive_too_large",
                        )
                    h.update(chunk)
                    out.write(chunk)
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, NotImplementedError) as exc:
            raise _refuse(
                f"archive member {ck.member[:200]!r} is damaged ({type(exc).__name__})", "not_an_archive"
            ) from None
        return n, h.hexdigest()


@contextmanager
def open_tree(path: Path, limits: ArchiveLimits) -> Iterator[TreeArchive]:
    tree = TreeArchive(path, limits)
    try:
        yield tree
    finally:
        tree.close()
