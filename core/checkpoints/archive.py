"""Reading an uploaded CoOp output tree (zip or tar) without trusting it; run inside the parse sandbox.

CoOp / KgCoOp (Dassl) write one directory per run::

    <anything>/<dataset>/shots_<K>/<Trainer>/<cfg>/seed<N>/prompt_learner/model.pth.tar-<E>

:func:`unpack_tree` finds the last epoch's checkpoint of every run and writes it to a folder. It runs
in the sandbox's child process (:mod:`mergetune.core.checkpoints.sandbox`: address space, CPU, wall
time and file size limited), never in the API process, and it bounds its own work before doing it:

- **What the file is** is decided by its first bytes: ``PK\\x03\\x04`` is a zip, gzip / bzip2 / xz
  magic or a valid tar header block is a tar; a file that is both (a tar header at the start of a zip,
  a zip index over a plain tar, anything after a tar's end) is refused as ``ambiguous_archive``.
- **Tar headers are parsed here**, not by :mod:`tarfile` (whose pax parsing is quadratic in Python
  before 3.11.10): every header block's checksum is checked; pax and GNU long-name headers are read
  only up to ``max_header_bytes`` and parsed in one linear pass; names over ``max_name_bytes``,
  malformed numbers, pax records and truncated streams are refused as ``malformed_archive``, GNU
  sparse members as ``unsafe_archive``.
- **Zip indexes are checked before :mod:`zipfile` reads them**: the end record's member count and
  index size, no data before the first member or after the end record, members that do not overlap
  (the overlapping-member bomb), only stored / deflate / bzip2 / lzma members, none encrypted.
- Every member's name and type: absolute paths, ``..`` components, backslashes, any control character
  (tab, CR and LF included), links, devices and FIFOs refuse the archive.
- Member count, declared bytes (each checkpoint and in total) are checked at each header, before its
  data is read; the bytes actually unpacked are counted too, as is the ratio of unpacked to packed
  bytes (``compression_ratio`` past ``max_ratio``), so a bomb stops after a few MiB.
"""

from __future__ import annotations

import bz2
import hashlib
import lzma
import re
import stat
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from mergetune.core.errors import CheckpointError

TREE_RE = re.compile(
    r"(?:^|/)(?P<dataset>[^/]+)/shots_(?P<shots>\d+)/(?P<trainer>[^/]+)/(?P<cfg>[^/]+)/"
    r"seed(?P<seed>\d+)/prompt_learner/model\.pth\.tar-(?P<epoch>\d+)$"
)
#: Refused in member names: C0 (tab, LF, CR included), DEL, C1, lone surrogates.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_CHUNK = 1 << 20
_BLOCK = 512
_ZIP_METHODS = {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 10000  # files and directories
    max_unpacked_bytes: int = 4 << 30  # declared, and actually unpacked, in total
    max_member_bytes: int = 1 << 30  # one checkpoint member
    max_header_bytes: int = 64 << 10  # one pax or GNU long-name header; zip: the index / max_members
    max_name_bytes: int = 4096  # one member name (UTF-8)
    max_ratio: float = 200.0  # unpacked / packed bytes, checked once ratio_floor bytes are unpacked
    ratio_floor: int = 4 << 20
    max_kept_bytes: int = 1 << 62  # the runs' last checkpoints together (what a sweep stores)


@dataclass(frozen=True)
class TreeCheckpoint:
    """The last epoch's checkpoint of one run directory of the tree, as written by :func:`unpack_tree`."""

    member: str
    dataset: str
    shots: int
    trainer: str
    cfg: str
    seed: int
    epoch: int
    size: int
    sha256: str = ""
    file: str = ""  # its name in the output folder

    @property
    def run(self) -> str:
        return f"{self.dataset}/shots_{self.shots}/{self.trainer}/{self.cfg}/seed{self.seed}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _refuse(message: str, code: str) -> CheckpointError:
    return CheckpointError(message, code=code, param="file")


def _shown(name: str) -> str:
    return "'" + name[:200].encode("unicode_escape").decode("ascii").replace("'", "\\'") + "'"


def check_member_name(name: str, limits: ArchiveLimits) -> str:
    """The member's path if it is a plain relative path; refuses the archive otherwise."""
    if len(name.encode("utf-8", "surrogatepass")) > limits.max_name_bytes:
        raise _refuse(
            f"archive member {_shown(name)} has a name over {limits.max_name_bytes} bytes",
            "malformed_archive",
        )
    if _CONTROL.search(name):
        raise _refuse(f"archive member {_shown(name)} has a control character in its name", "unsafe_archive")
    if "\\" in name:
        raise _refuse(f"archive member {_shown(name)} has a backslash in its name", "unsafe_archive")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise _refuse(f"archive member {_shown(name)} has an absolute path", "unsafe_archive")
    parts = PurePosixPath(name).parts
    if ".." in parts:
        raise _refuse(f"archive member {_shown(name)} points outside the archive (..)", "unsafe_archive")
    return "/".join(p for p in parts if p not in ("", "."))


# ------------------------------------------------------------------------------------- what it is


def _tar_checksum_ok(block: bytes) -> bool:
    if len(block) < _BLOCK or block == bytes(_BLOCK):
        return False
    field = block[148:156].replace(b"\0", b" ").strip()
    if not field or not re.fullmatch(rb"[0-7]+", field):
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:_BLOCK])
    signed = sum(struct.unpack("148b", block[:148])) + 256 + sum(struct.unpack("356b", block[156:_BLOCK]))
    return int(field, 8) in (unsigned, signed)


def sniff(path: Path) -> str:
    """``zip``, ``tar``, ``gz``, ``bz2`` or ``xz`` by the file's first bytes."""
    with open(path, "rb") as f:
        head = f.read(_BLOCK)
    if head.startswith(b"PK\x03\x04"):
        if _tar_checksum_ok(head):
            raise _refuse("the file is both a zip and a tar archive", "ambiguous_archive")
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if _tar_checksum_ok(head):
        return "tar"
    raise _refuse("the file is not a zip or tar archive (by its first bytes)", "not_an_archive")


# ------------------------------------------------------------------------------------------ output


class _Runs:
    """The checkpoints found so far, the last epoch of each run kept on disk."""

    def __init__(self, out: Path, limits: ArchiveLimits) -> None:
        self.out, self.limits = out, limits
        self.runs: dict[str, TreeCheckpoint] = {}
        self.files: set[str] = set()
        self.count = 0
        self.declared = 0
        self.written = 0
        self.kept = 0

    def member(
        self, raw: str, is_file: bool, size: int, *, streamed: bool = True
    ) -> tuple[str, re.Match[str] | None]:
        """Count and check one member at its header, before its data; the match when it is a
        checkpoint to extract."""
        lim = self.limits
        self.count += 1
        if self.count > lim.max_members:
            raise _refuse(f"the archive has more than {lim.max_members} members", "too_many_members")
        name = check_member_name(raw, lim)
        if not is_file:
            return name, None
        if name in self.files:
            raise _refuse(f"archive member {_shown(name)} appears twice", "duplicate_member")
        self.files.add(name)
        self.declared += size
        if self.declared > lim.max_unpacked_bytes:
            raise _refuse(
                f"the archive unpacks to more than {lim.max_unpacked_bytes} bytes", "archive_too_large"
            )
        m = TREE_RE.search(name)
        if m is None:
            return name, None  # logs, configs, other files: checked, not extracted
        if size > lim.max_member_bytes:
            raise _refuse(
                f"{_shown(name)} is {size} bytes, over the limit of {lim.max_member_bytes}", "too_large"
            )
        if not streamed:
            return name, m  # a zip: the caller picks each run's last epoch from the whole index
        ck = self._checkpoint(name, m, size)
        prev = self.runs.get(ck.run)
        if prev is not None and ck.epoch <= prev.epoch:
            return name, None
        self.keep(size - (prev.size if prev is not None else 0))
        return name, m

    def keep(self, size: int) -> None:
        """Count ``size`` more bytes of kept checkpoints (negative: a run's earlier epoch replaced)."""
        self.kept += size
        if self.kept > self.limits.max_kept_bytes:
            raise _refuse(
                f"the archive's checkpoints hold {self.kept} bytes, over the limit of "
                f"{self.limits.max_kept_bytes} bytes one sweep may store",
                "too_large",
            )

    @staticmethod
    def _checkpoint(name: str, m: re.Match[str], size: int, **kw: str) -> TreeCheckpoint:
        return TreeCheckpoint(
            member=name,
            dataset=m["dataset"],
            shots=int(m["shots"]),
            trainer=m["trainer"],
            cfg=m["cfg"],
            seed=int(m["seed"]),
            epoch=int(m["epoch"]),
            size=size,
            **kw,
        )

    def extract(self, name: str, m: re.Match[str], size: int, read: Callable[[int], bytes]) -> None:
        """Write the member (exactly ``size`` bytes from ``read``) and keep it as its run's checkpoint."""
        self.written += 1
        file = f"ck-{self.written}"
        h, n = hashlib.sha256(), 0
        with open(self.out / file, "wb") as f:
            while n < size:
                chunk = read(min(_CHUNK, size - n))
                if not chunk:
                    raise _refuse(
                        f"{_shown(name)} is shorter than its declared {size} bytes", "malformed_archive"
                    )
                n += len(chunk)
                h.update(chunk)
                f.write(chunk)
        if read(1):
            raise _refuse(
                f"{_shown(name)} unpacks to more than its declared {size} bytes", "archive_too_large"
            )
        ck = self._checkpoint(name, m, size, sha256=h.hexdigest(), file=file)
        prev = self.runs.get(ck.run)
        if prev is not None:
            (self.out / prev.file).unlink()
        self.runs[ck.run] = ck

    def result(self) -> list[TreeCheckpoint]:
        if not self.runs:
            raise _refuse(
                "no checkpoint found: expected <dataset>/shots_<K>/<Trainer>/<cfg>/seed<N>/prompt_learner/"
                "model.pth.tar-<epoch> (a CoOp output directory)",
                "empty_tree",
            )
        seen: dict[tuple[str, int], TreeCheckpoint] = {}
        for ck in sorted(self.runs.values(), key=lambda c: (c.dataset, c.seed, c.run)):
            other = seen.setdefault((ck.dataset, ck.seed), ck)
            if other is not ck:
                raise _refuse(
                    f"dataset {ck.dataset!r} seed {ck.seed} has two runs ({other.run} and {ck.run}); "
                    "upload one trainer/config per sweep",
                    "ambiguous_tree",
                )
        return sorted(self.runs.values(), key=lambda c: (c.dataset, c.seed))


# --------------------------------------------------------------------------------------------- tar


def header_budget(limits: ArchiveLimits) -> int:
    """What all pax and long-name headers of one tar may hold together: a few full-size ones, or 1 KiB
    per member."""
    return max(16 * limits.max_header_bytes, limits.max_members * 1024)


class _Stream:
    """The tar stream: the file, decompressed in bounded steps, with the unpacked bytes and the
    unpacked/packed ratio checked as they grow."""

    _MAGIC = {"gz": b"\x1f\x8b", "bz2": b"BZh", "xz": b"\xfd7zXZ\x00"}

    def __init__(self, f: IO[bytes], kind: str, limits: ArchiveLimits) -> None:
        self.f, self.kind, self.limits = f, kind, limits
        self.packed = self.unpacked = 0
        # member data, plus a header block and padding per member and pseudo-header, plus their data
        blocks = (3 * limits.max_members + 4) * 2 * _BLOCK
        self.cap = limits.max_unpacked_bytes + blocks + header_budget(limits)
        self._buf = bytearray()
        self._dec: Any = None if kind == "tar" else self._decompressor()
        self._input = b""
        self._eof = False

    def _decompressor(self) -> Any:
        if self.kind == "gz":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        if self.kind == "bz2":
            return bz2.BZ2Decompressor()
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)

    def _packed(self, n: int) -> bytes:
        data = self.f.read(n)
        self.packed += len(data)
        return data

    def _more_input(self) -> None:
        self._input = self._packed(1 << 16)
        if not self._input:
            raise _refuse("the compressed stream is truncated", "malformed_archive")

    def _next_stream(self) -> None:
        """After one compressed stream: another (pigz, pbzip2, xz padding) or the end of the file."""
        rest = self._dec.unused_data + self._input
        self._input = b""
        while True:
            if self.kind == "xz":
                rest = rest.lstrip(b"\0")
            if len(rest) >= 6 or not (more := self._packed(1 << 16)):
                break
            rest += more
        if not rest:
            self._eof = True
            return
        if not rest.startswith(self._MAGIC[self.kind]):
            raise _refuse("the file goes on after its compressed stream", "ambiguous_archive")
        self._dec, self._input = self._decompressor(), rest

    def _fill(self, want: int) -> None:
        while len(self._buf) < want and not self._eof:
            if self._dec is None:  # a plain tar
                data = self._packed(_CHUNK)
                self._eof = not data
                self._add(data)
                continue
            if self._dec.eof:
                self._next_stream()
                continue
            step = min(_CHUNK, max(want - len(self._buf), 1 << 16))
            try:
                if self.kind == "gz":
                    if not self._input:
                        self._more_input()
                    out = self._dec.decompress(self._input, step)
                    self._input = self._dec.unconsumed_tail
                else:
                    data = b""
                    if self._dec.needs_input:
                        if not self._input:
                            self._more_input()
                        data, self._input = self._input, b""
                    out = self._dec.decompress(data, step)
            except (OSError, EOFError, zlib.error, lzma.LZMAError, ValueError) as exc:
                raise _refuse(
                    f"the compressed stream is damaged ({type(exc).__name__})", "malformed_archive"
                ) from None
            self._add(out)

    def _add(self, data: bytes) -> None:
        self.unpacked += len(data)
        lim = self.limits
        if self.unpacked > self.cap:
            raise _refuse(
                f"the archive unpacks to more than {lim.max_unpacked_bytes} bytes", "archive_too_large"
            )
        if self.unpacked > lim.ratio_floor and self.unpacked > lim.max_ratio * max(self.packed, 1):
            raise _refuse(
                f"the archive unpacks to more than {lim.max_ratio:g} times its size", "compression_ratio"
            )
        self._buf += data

    def read(self, n: int) -> bytes:
        self._fill(n)
        out = bytes(self._buf[:n])
        del self._buf[:n]
        return out

    def skip(self, n: int) -> None:
        while n > 0:
            got = len(self.read(min(n, _CHUNK)))
            if not got:
                raise _refuse("the archive is truncated", "malformed_archive")
            n -= got

    def rest_is_zeros(self) -> bool:
        while chunk := self.read(_CHUNK):
            if chunk.count(0) != len(chunk):
                return False
        return True


def _number(field: bytes, what: str) -> int:
    """A tar number field: octal text, or GNU base-256 (first byte 0x80); negative ones are refused."""
    if field and field[0] & 0x80:
        if field[0] != 0x80:
            raise _refuse(f"a tar header has a negative or oversized {what}", "malformed_archive")
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    if not re.fullmatch(rb"[0-7]+", text):
        raise _refuse(f"a tar header has a malformed {what} field", "malformed_archive")
    return int(text, 8)


def _pax_records(data: bytes) -> dict[str, str]:
    """The records of a pax header (``<length> <key>=<value>\\n`` each), in one pass."""
    records: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        if data[pos:].strip(b"\0") == b"":
            break  # NUL padding after the last record
        m = re.compile(rb"(\d{1,20}) ").match(data, pos)
        if m is None:
            raise _refuse("a pax header has a malformed record length", "malformed_archive")
        length = int(m.group(1))
        end = pos + length
        if length <= len(m.group(0)) or end > len(data) or data[end - 1 : end] != b"\n":
            raise _refuse("a pax header record has a wrong length", "malformed_archive")
        key, sep, value = data[m.end() : end - 1].partition(b"=")
        if not sep or not key:
            raise _refuse("a pax header record has no key=value", "malformed_archive")
        try:
            records[key.decode("utf-8")] = value.decode("utf-8")
        except UnicodeDecodeError:
            raise _refuse("a pax header record is not UTF-8", "malformed_archive") from None
        pos = end
    return records


def _text(raw: bytes, what: str) -> str:
    try:
        return raw.split(b"\0", 1)[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _refuse(f"a tar {what} is not UTF-8", "malformed_archive") from None


def _unpack_tar(path: Path, kind: str, runs: _Runs) -> None:
    lim = runs.limits
    with open(path, "rb") as f:
        stream = _Stream(f, kind, lim)
        pax: dict[str, str] = {}
        long_name: str | None = None
        headers = header_bytes = 0
        while True:
            block = stream.read(_BLOCK)
            if not block:
                break  # the file ends at a header boundary without end-of-archive blocks (as tar allows)
            if len(block) < _BLOCK:
                raise _refuse("the archive is truncated in a header", "malformed_archive")
            if block == bytes(_BLOCK):
                if not stream.rest_is_zeros():
                    raise _refuse("the file goes on after the tar's end", "ambiguous_archive")
                break
            headers += 1
            if headers > 3 * lim.max_members:
                raise _refuse(f"the archive has more than {lim.max_members} members", "too_many_members")
            if not _tar_checksum_ok(block):
                raise _refuse("a tar header's checksum does not match", "malformed_archive")
            kind_flag = block[156:157]
            size = _number(block[124:136], "size")
            padded = -size % _BLOCK
            if kind_flag in (b"x", b"g", b"L", b"K"):
                cap = lim.max_name_bytes + 1 if kind_flag in (b"L", b"K") else lim.max_header_bytes
                if size > cap:
                    raise _refuse(
                        f"a tar {'long-name' if kind_flag in b'LK' else 'pax'} header declares {size} bytes, "
                        f"over the limit of {cap}",
                        "header_too_large",
                    )
                header_bytes += size
                if header_bytes > header_budget(lim):
                    raise _refuse(
                        f"the archive's pax and long-name headers hold more than {header_budget(lim)} bytes",
                        "header_too_large",
                    )
                data = stream.read(size)
                stream.skip(padded)
                if len(data) < size:
                    raise _refuse("the archive is truncated", "malformed_archive")
                if kind_flag == b"x":
                    pax = _pax_records(data)
                elif kind_flag == b"g":
                    glob = _pax_records(data)
                    if any(k.startswith("GNU.sparse") for k in glob):
                        raise _refuse("the archive has sparse members", "unsafe_archive")
                elif kind_flag == b"L":
                    long_name = _text(data, "long name")
                continue
            if any(k.startswith("GNU.sparse") for k in pax) or kind_flag == b"S":
                raise _refuse("the archive has a sparse member", "unsafe_archive")
            if "size" in pax:
                if not re.fullmatch(r"\d{1,20}", pax["size"]):
                    raise _refuse("a pax header has a malformed size", "malformed_archive")
                size = int(pax["size"])
                padded = -size % _BLOCK
            name = pax.get("path") or long_name
            if name is None:
                name = _text(block[0:100], "member name")
                if block[257:263] == b"ustar\0":  # POSIX: a prefix may hold the leading directories
                    prefix = _text(block[345:500], "name prefix")
                    name = f"{prefix}/{name}" if prefix else name
            pax, long_name = {}, None
            shown = _shown(name)
            if kind_flag in (b"1", b"2"):
                raise _refuse(f"archive member {shown} is a link", "unsafe_archive")
            if kind_flag not in (b"0", b"\0", b"7", b"5"):
                raise _refuse(f"archive member {shown} is not a file or directory", "unsafe_archive")
            is_file = kind_flag != b"5" and not (kind_flag in (b"\0", b"0") and name.endswith("/"))
            if not is_file and size:
                raise _refuse(f"directory {shown} declares {size} bytes of data", "malformed_archive")
            member, m = runs.member(name, is_file, size)
            if m is not None:
                runs.extract(member, m, size, _Bounded(stream, size).read)
            else:
                stream.skip(size)
            stream.skip(padded)


class _Bounded:
    """At most ``size`` bytes of the stream (the member's data)."""

    def __init__(self, stream: _Stream, size: int) -> None:
        self.stream, self.left = stream, size

    def read(self, n: int) -> bytes:
        data = self.stream.read(min(n, self.left))
        self.left -= len(data)
        return data


# --------------------------------------------------------------------------------------------- zip

_EOCD = struct.Struct("<4s4H2LH")
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")


def _zip_index(f: IO[bytes], size: int, lim: ArchiveLimits) -> None:
    """Check the end record before :mod:`zipfile` reads the index: member count, index size, the
    index right before the end record (nothing prepended or inserted), nothing after it."""
    tail_len = min(size, _EOCD.size + 0xFFFF)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    while at >= 0 and at + _EOCD.size + struct.unpack_from("<H", tail, at + 20)[0] != len(tail):
        at = tail.rfind(b"PK\x05\x06", 0, at)
    if at < 0:
        raise _refuse("the zip has no end record at its end", "malformed_archive")
    _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, at)
    eocd = size - tail_len + at
    index_end = eocd
    if 0xFFFF in (n_disk, n_total) or 0xFFFFFFFF in (cd_size, cd_offset):
        if at < _EOCD64_LOCATOR.size:
            raise _refuse("the zip64 end record is missing", "malformed_archive")
        sig, _, rec64, _ = _EOCD64_LOCATOR.unpack_from(tail, at - _EOCD64_LOCATOR.size)
        if sig != b"PK\x06\x07" or rec64 + _EOCD64.size + _EOCD64_LOCATOR.size != eocd:
            raise _refuse("the zip64 end record is malformed", "malformed_archive")
        f.seek(rec64)
        rec = f.read(_EOCD64.size)
        if len(rec) < _EOCD64.size or rec[:4] != b"PK\x06\x06":
            raise _refuse("the zip64 end record is malformed", "malformed_archive")
        _, _, _, _, disk, cd_disk, n_disk, n_total, cd_size, cd_offset = _EOCD64.unpack(rec)
        index_end = rec64
    if disk or cd_disk or n_disk != n_total:
        raise _refuse("multi-part zips are not supported", "malformed_archive")
    if n_total > lim.max_members:
        raise _refuse(f"the archive has more than {lim.max_members} members", "too_many_members")
    if cd_offset + cd_size != index_end:
        raise _refuse("the zip's index is not where its end record says", "ambiguous_archive")
    if cd_size > n_total * (46 + lim.max_name_bytes + lim.max_header_bytes):
        raise _refuse("the zip's index is larger than its members need", "header_too_large")
    f.seek(cd_offset)
    index = f.read(cd_size)
    pos = count = 0
    while pos < len(index):  # walk the index once, counting, before zipfile builds an object per entry
        count += 1
        if count > n_total:
            raise _refuse("the zip's index has more members than its end record says", "malformed_archive")
        if len(index) - pos < 46 or index[pos : pos + 4] != b"PK\x01\x02":
            raise _refuse("the zip's index is malformed", "malformed_archive")
        n, m, k = struct.unpack_from("<3H", index, pos + 28)
        if n > lim.max_name_bytes:
            raise _refuse(f"a zip member name is over {lim.max_name_bytes} bytes", "malformed_archive")
        if m + k > lim.max_header_bytes:
            raise _refuse(
                f"a zip member's extra fields are over {lim.max_header_bytes} bytes", "header_too_large"
            )
        pos += 46 + n + m + k
    if pos != len(index) or count != n_total:
        raise _refuse("the zip's index does not match its end record", "malformed_archive")


def _unpack_zip(path: Path, runs: _Runs) -> None:
    lim = runs.limits
    size = path.stat().st_size
    with open(path, "rb") as f:
        _zip_index(f, size, lim)
        try:
            zf = zipfile.ZipFile(f)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise _refuse(
                f"the zip's index is malformed ({type(exc).__name__})", "malformed_archive"
            ) from None
        with zf:
            infos = zf.infolist()
            if len(infos) > lim.max_members:
                raise _refuse(f"the archive has more than {lim.max_members} members", "too_many_members")
            if infos and min(i.header_offset for i in infos) != 0:
                raise _refuse("the zip has data before its first member", "ambiguous_archive")
            end = 0
            for zi in sorted(infos, key=lambda i: i.header_offset):
                if zi.header_offset < end:  # shares its data with the member before it
                    raise _refuse(f"archive member {_shown(zi.filename)} overlaps another", "unsafe_archive")
                f.seek(zi.header_offset)
                local = f.read(30)
                if len(local) < 30 or local[:4] != b"PK\x03\x04":
                    raise _refuse(
                        f"archive member {_shown(zi.filename)} has no local header", "malformed_archive"
                    )
                n, m = struct.unpack_from("<2H", local, 26)
                end = zi.header_offset + 30 + n + m + zi.compress_size
            if end > size:
                raise _refuse("a zip member runs past the end of the file", "malformed_archive")
            todo: list[tuple[zipfile.ZipInfo, str, re.Match[str]]] = []
            for zi in infos:
                mode = zi.external_attr >> 16
                shown = _shown(zi.filename)
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG, stat.S_IFDIR):
                    raise _refuse(f"archive member {shown} is a link or a special file", "unsafe_archive")
                if zi.flag_bits & 0x1:
                    raise _refuse(f"archive member {shown} is encrypted", "unsafe_archive")
                if zi.compress_type not in _ZIP_METHODS:
                    raise _refuse(
                        f"archive member {shown} uses compression method {zi.compress_type}", "unsafe_archive"
                    )
                if zi.file_size > lim.ratio_floor and zi.file_size > lim.max_ratio * max(zi.compress_size, 1):
                    raise _refuse(
                        f"archive member {shown} unpacks to more than {lim.max_ratio:g} times its size",
                        "compression_ratio",
                    )
                member, m = runs.member(zi.filename, not zi.is_dir(), zi.file_size, streamed=False)
                if m is not None:
                    todo.append((zi, member, m))
            latest: dict[str, tuple[int, zipfile.ZipInfo, str, re.Match[str]]] = {}
            for zi, member, m in todo:
                run = runs._checkpoint(member, m, zi.file_size).run
                if run not in latest or int(m["epoch"]) > latest[run][0]:
                    latest[run] = (int(m["epoch"]), zi, member, m)
            runs.keep(sum(zi.file_size for _, zi, _, _ in latest.values()))
            for _, zi, member, m in latest.values():
                try:
                    with zf.open(zi) as src:
                        runs.extract(member, m, zi.file_size, src.read)
                except (
                    zipfile.BadZipFile,
                    OSError,
                    EOFError,
                    zlib.error,
                    lzma.LZMAError,
                    NotImplementedError,
                ) as exc:
                    raise _refuse(
                        f"archive member {_shown(member)} is damaged ({type(exc).__name__})",
                        "malformed_archive",
                    ) from None


def unpack_tree(path: Path, out: Path, limits: ArchiveLimits) -> list[TreeCheckpoint]:
    """Check the whole archive at ``path`` and write each run's last checkpoint into ``out``."""
    kind = sniff(path)
    runs = _Runs(out, limits)
    try:
        if kind == "zip":
            _unpack_zip(path, runs)
        else:
            _unpack_tar(path, kind, runs)
        return runs.result()
    except BaseException:  # a refused archive leaves nothing written
        for n in range(1, runs.written + 1):
            (out / f"ck-{n}").unlink(missing_ok=True)
        raise
