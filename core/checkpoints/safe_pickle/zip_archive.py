"""The zip-format ``torch.save`` archive (torch >= 1.6), checked as torch's zip reader checks it.

:class:`TorchZipFile` validates the archive before the pickle is read: member names (no path
traversal, no duplicates, one folder holding ``data.pkl``), the central directory and end record as
miniz reads them, stored (uncompressed) members only, the byte order and format version records. It
then hands out :class:`~mergetune.core.checkpoints.safe_pickle.rebuild.StorageRef` for the pickle's
persistent ids and reads a storage's bytes only when a tensor on it is materialised.
"""

from __future__ import annotations

import os
import re
import struct
import sys
import zipfile
from typing import Any

import numpy as np

from mergetune.core.checkpoints.safe_pickle.limits import (
    MAX_ZIP_MEMBERS,
    ParseLimits,
    _bad,
    _is_int,
    _too_large,
)
from mergetune.core.checkpoints.safe_pickle.rebuild import DType, StorageRef, StorageType, _swap_unit
from mergetune.core.errors import CheckpointError

_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _fold(name: str) -> str:
    """A member name as torch's zip reader compares it: ASCII letters without case (miniz's tolower)."""
    return name.translate(_ASCII_FOLD)


def _raw_name(info: zipfile.ZipInfo) -> str:
    """The member's name as its bytes read in UTF-8, as torch's reader compares them (zipfile decodes a
    name without the UTF-8 flag as cp437; undecodable bytes are kept apart, never merged)."""
    if info.flag_bits & 0x800:
        return info.orig_filename
    return info.orig_filename.encode("cp437").decode("utf-8", "surrogateescape")


class TorchZipFile:
    """A zip-format ``torch.save`` file opened for reading (validated member names, lazy storages)."""

    def __init__(
        self, path: str, *, max_tensor_bytes: int | None = None, limits: ParseLimits | None = None
    ) -> None:
        self.path = path
        limits = limits or ParseLimits()
        if max_tensor_bytes is not None:
            limits = ParseLimits(**{**limits.__dict__, "max_tensor_bytes": max_tensor_bytes})
        self.limits = limits
        self.max_tensor_bytes = limits.max_tensor_bytes
        try:
            self._zip = zipfile.ZipFile(path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error, OverflowError) as e:
            raise CheckpointError(f"not a readable torch archive: {e}", code="truncated", param="file") from e
        except (NotImplementedError, UnicodeError, MemoryError) as e:
            raise _bad(f"not a readable torch archive: {e}") from e
        try:
            self._index(infos)
        except BaseException:
            self._zip.close()
            raise
        self._cache: dict[str, StorageRef] = {}  # torch's loaded_storages: by key only
        self._bytes: dict[str, bytes] = {}
        self._materialised = 0

    def _index(self, infos: list[zipfile.ZipInfo]) -> None:
        if len(infos) > MAX_ZIP_MEMBERS:
            raise _too_large("the archive has too many members")
        # torch's zip reader (miniz) finds a member by name without regard to ASCII case: the index is
        # by the case-folded name, and two names that fold alike make the archive ambiguous
        self._infos: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            parts = name.replace("\\", "/").split("/")
            if (
                name.startswith(("/", "\\"))
                or ".." in parts
                or ":" in parts[0]
                or "\x00" in info.orig_filename
            ):
                raise _bad(
                    f"archive member {name!r} escapes the archive (path traversal); not a torch checkpoint"
                )
            key = _fold(_raw_name(info))
            if key in self._infos:
                other = self._infos[key].filename
                raise _bad(
                    f"archive member {name!r} appears twice"
                    + (f" (as {other!r}: torch's reader ignores case)" if other != name else "")
                    + "; refusing an ambiguous archive"
                )
            self._infos[key] = info
        # the archive's folder is the first member's, as torch takes it; data.pkl is found in it
        first = infos[0].filename if infos else ""
        if "/" not in first:
            raise _bad("zip file without an <archive>/ folder: not a torch checkpoint")
        self.prefix = first[: first.index("/") + 1]
        raw_first = _raw_name(infos[0])
        self._raw_prefix = raw_first[: raw_first.index("/") + 1]
        pkl = self._member("data.pkl")
        if pkl is None:
            raise _bad("zip file without <archive>/data.pkl: not a torch checkpoint")
        if self.prefix + "constants.pkl" in (i.filename for i in infos):
            raise _bad("a TorchScript archive (constants.pkl), not a torch.save checkpoint")
        for info in infos:  # torch requires every member in the folder of the first one, UTF-8 names
            if not info.filename.startswith(self.prefix):
                raise _bad(f"archive member {info.filename!r} is outside the folder of data.pkl")
            if not info.flag_bits & 0x800:
                try:
                    info.orig_filename.encode("cp437").decode("utf-8")
                except UnicodeError:
                    raise _bad("an archive member's name is not UTF-8") from None
        if pkl.file_size > self.limits.max_pickle_bytes:
            raise _too_large(f"archive member {pkl.filename!r} is too large")
        size = self._size = os.path.getsize(self.path)
        cd_offset, cd_size = self._check_directory(len(infos), size)
        with open(self.path, "rb") as f:  # the entries must tile the directory exactly, as miniz reads it
            f.seek(cd_offset)
            cd = f.read(cd_size)
        pos = 0
        for info in infos:
            if len(cd) < pos + 46 or cd[pos : pos + 4] != b"PK\x01\x02":
                break
            name_len, extra_len, comment_len = struct.unpack("<HHH", cd[pos + 28 : pos + 34])
            pos += 46 + name_len + extra_len + comment_len
            if info.external_attr & 0x10:  # a directory entry
                raise _bad(f"archive member {info.filename!r} is a directory")
        if pos != cd_size or len(cd) != cd_size:
            raise CheckpointError(
                "the archive's directory entries do not match its directory size",
                code="truncated",
                param="file",
            )
        for info in infos:  # torch's zip reader checks every central-directory entry
            if info.compress_type != zipfile.ZIP_STORED:
                raise _bad(
                    f"archive member {info.filename!r} is compressed; torch never writes compressed members"
                )
            if (
                info.compress_size != info.file_size
                or info.header_offset + 30 + info.compress_size > size
                or info.flag_bits & 0x2061  # encrypted, patched, strong encryption, masked directory
                or info.volume not in (0, 1)
            ):
                raise CheckpointError(
                    f"archive member {info.filename!r} has an inconsistent directory entry",
                    code="truncated",
                    param="file",
                )
        self.byteorder = "little"
        bo = self._member("byteorder")
        if bo is not None:
            value = self._read_member(bo, 16)
            if value not in (b"little", b"big"):  # exactly, as torch compares it
                raise _bad(f"unknown byteorder {value!r}")
            self.byteorder = value.decode()

    def _member(self, record: str) -> zipfile.ZipInfo | None:
        """The member ``<archive>/<record>``, found as torch finds it (ASCII case ignored)."""
        return self._infos.get(_fold(self._raw_prefix + record))

    def _check_local_header(self, info: zipfile.ZipInfo) -> None:
        """A member's local header as torch's zip reader checks it before reading the member."""
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            head = f.read(30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise CheckpointError(
                f"archive member {info.filename!r} has a bad local header", code="truncated", param="file"
            )
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        if info.header_offset + 30 + name_len + extra_len + info.compress_size > self._size:
            raise CheckpointError(
                f"archive member {info.filename!r} is truncated", code="truncated", param="file"
            )

    def _check_directory(self, n_members: int, size: int) -> tuple[int, int]:
        """The end-of-central-directory record as torch's zip reader (miniz) checks it: one disk,
        entry counts equal to the entries present, the directory inside the file."""
        try:
            with open(self.path, "rb") as f:
                end = zipfile._EndRecData(f)  # type: ignore[attr-defined]
                if end is not None and end[0] == b"PK\x06\x06":
                    # CPython < 3.11.4 (e.g. Debian 12's 3.11.2) reports the zip64 record's offset, later
                    # ones the end-of-directory record's: use the latter whatever the interpreter.
                    f.seek(end[9])
                    if f.read(4) == b"PK\x06\x06":
                        end[9] += 56 + 20
                locator = b""
                if end is not None and end[9] >= 20:
                    f.seek(end[9] - 20)
                    locator = f.read(20)
                if locator[:4] == b"PK\x06\x07":  # zip64: torch follows the locator's offset
                    _, _, z64_offset, disks = struct.unpack("<4sLQL", locator)
                    f.seek(min(z64_offset, size))
                    record = f.read(12)
                    if (
                        z64_offset != end[9] - 20 - 56
                        or record[:4] != b"PK\x06\x06"
                        or len(record) != 12
                        or struct.unpack("<Q", record[4:])[0] < 44  # miniz: the record's own size
                        or disks != 1
                    ):
                        raise CheckpointError(
                            "the archive's zip64 locator is inconsistent", code="truncated", param="file"
                        )
        except (OSError, zipfile.BadZipFile, struct.error, ValueError) as e:
            raise CheckpointError(f"not a readable torch archive: {e}", code="truncated", param="file") from e
        if (
            end is None
            or end[1] != 0  # one disk (torch writes 0; miniz then requires entries on it)
            or end[2] != 0
            or not end[3] == end[4] == n_members
            or end[5] < 46 * n_members
            or end[6] + end[5] > size
        ):
            raise CheckpointError(
                "the archive's end-of-directory record does not match its entries",
                code="truncated",
                param="file",
            )
        records = 56 + 20 if end[0] == b"PK\x06\x06" else 0  # zip64 end record and locator
        if end[9] - end[5] - end[6] - records != 0:  # data before the archive: zipfile reads it, miniz not
            raise CheckpointError(
                "the archive does not start at the file's start", code="truncated", param="file"
            )
        return int(end[6]), int(end[5])

    def close(self) -> None:
        self._zip.close()
        self._bytes.clear()

    def __enter__(self) -> TorchZipFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _read_member(self, info: zipfile.ZipInfo, limit: int, length: int | None = None) -> bytes:
        """The first ``length`` bytes (default: all) of a member; only stored (uncompressed) members."""
        if info.file_size > limit and length is None:
            raise _too_large(f"archive member {info.filename!r} is too large")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _bad(
                f"archive member {info.filename!r} is compressed; torch never writes compressed members"
            )
        want = info.file_size if length is None else length
        self._check_local_header(info)
        try:
            with self._zip.open(info) as f:
                data = f.read(want + 1) if length is None else f.read(want)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
            raise CheckpointError(
                f"archive member {info.filename!r} is unreadable: {e}", code="truncated", param="file"
            ) from e
        if length is None and len(data) > limit:
            raise _too_large(f"archive member {info.filename!r} is too large")
        if len(data) != want:
            raise CheckpointError(
                f"archive member {info.filename!r} is truncated", code="truncated", param="file"
            )
        return data

    def pickle_bytes(self) -> bytes:
        info = self._member("data.pkl")
        assert info is not None  # checked when the archive was opened
        return self._read_member(info, self.limits.max_pickle_bytes)

    def check_version(self) -> None:
        """The format version record, read as torch reads it (a decimal number from 1 to 10)."""
        info = self._member(".data/version") or self._member("version")
        if info is None:
            raise _bad("the archive has no version record; not a torch checkpoint")
        match = re.match(rb"\s*(\d{1,6})", self._read_member(info, 64))
        if match is None or not 1 <= int(match.group(1)) <= 10:
            raise _bad("the archive's format version is not one torch reads")
        for record in (".format_version", ".data/serialization_id"):  # read by torch, unused here
            info = self._member(record)
            if info is not None:
                self._read_member(info, 1 << 10)
        align = self._member(".storage_alignment")
        if align is not None:
            try:
                int(self._read_member(align, 64))
            except ValueError:
                raise _bad("the archive's storage alignment record is not a number") from None

    def persistent(self, pid: Any) -> StorageRef:
        """A zip-format persistent id: ("storage", storage type, key, location, numel)."""
        if not isinstance(pid, tuple) or len(pid) != 5 or pid[0] != "storage":
            raise _bad("the pickle has an unknown persistent id")
        _, stype, key, _location, numel = pid
        if not isinstance(stype, StorageType) or not isinstance(key, str) or not _is_int(numel) or numel < 0:
            raise _bad("the pickle has a malformed storage reference")
        return self.storage_ref(key, stype.dtype, numel)

    def storage_ref(self, key: str, dtype: DType, numel: int) -> StorageRef:
        """The storage ``key``; the first reference decides its dtype and size (as torch's cache)."""
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        if "/" in key or "\\" in key or key in ("", ".", ".."):
            raise _bad(f"invalid storage key {key[:100]!r}")
        nbytes = numel * dtype.itemsize
        if nbytes > self.limits.max_tensor_bytes:
            raise _too_large(
                f"a tensor declares {nbytes} bytes, more than the limit of {self.limits.max_tensor_bytes}"
            )
        info = self._member(f"data/{key}")
        if info is None:
            raise CheckpointError(
                f"storage {key[:100]!r} is missing from the archive", code="truncated", param="file"
            )
        if info.file_size != nbytes:  # torch requires the record to match exactly
            raise CheckpointError(
                f"storage {key[:100]!r} declares {nbytes} bytes but the archive holds {info.file_size}",
                code="truncated" if info.file_size < nbytes else "not_a_checkpoint",
                param="file",
            )
        self._check_local_header(info)  # torch reads every storage; we read only what is used
        ref = StorageRef(self, key, dtype, numel)
        if nbytes:  # torch does not cache an empty storage
            self._cache[key] = ref
        return ref

    def charge(self, nbytes: int) -> None:
        """Count bytes about to be materialised against the per-file total and the file's own size."""
        self._materialised += nbytes
        if self._materialised > self.limits.max_total_bytes:
            raise _too_large(
                f"the file's tensors need more than the limit of {self.limits.max_total_bytes} bytes"
            )
        if self._materialised > self.limits.max_amplification * self._size + (1 << 20):
            raise _too_large(
                f"the file's tensors would take {self._materialised} bytes from a {self._size}-byte file "
                "(overlapping views); refusing the amplification"
            )

    def read_storage(self, ref: StorageRef) -> bytes:
        """The storage's raw bytes in native (little-endian) order, read once."""
        info = self._member(f"data/{ref.key}")
        assert info is not None  # checked when the reference was made
        raw = self._read_member(info, self.limits.max_tensor_bytes, ref.nbytes)
        unit = _swap_unit(ref.dtype)
        if self.byteorder != sys.byteorder and unit > 1:  # torch swaps by the first reference's dtype
            raw = np.frombuffer(raw, dtype=f"u{unit}", count=len(raw) // unit).byteswap().tobytes()
        return raw

    def storage_bytes(self, ref: StorageRef) -> bytes:
        raw = self._bytes.get(ref.key)
        if raw is None:
            raw = self.read_storage(ref)
            self._bytes[ref.key] = raw
        return raw
