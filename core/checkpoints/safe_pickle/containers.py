"""The container formats: which format a file is, and loading it end to end.

:func:`sniff` tells the formats apart from the first bytes. :func:`load_torch_file` loads a zip
archive (:class:`~mergetune.core.checkpoints.safe_pickle.zip_archive.TorchZipFile`) or a legacy
(pre-1.6) file (:class:`LegacyTorchFile`, a sequence of pickles followed by the storages' bytes)
and returns a :class:`LoadedPickle`; :func:`unpickle` and :func:`unpickle_ex` pre-scan and unpickle
one pickle and turn every failure into a :class:`CheckpointError`.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
from dataclasses import dataclass, field
from typing import Any

from mergetune.core.checkpoints.safe_pickle.limits import ParseLimits, _bad, _is_int, _too_large
from mergetune.core.checkpoints.safe_pickle.machine import SafeUnpickler, UnsafePickle, prescan, prescan_end
from mergetune.core.checkpoints.safe_pickle.rebuild import StorageRef, StorageType
from mergetune.core.checkpoints.safe_pickle.zip_archive import TorchZipFile
from mergetune.core.errors import CheckpointError

logger = logging.getLogger(__name__)

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


class LegacyTorchFile:
    """A legacy (pre-1.6, non-zip) ``torch.save`` file, read as torch's ``_legacy_load`` reads it.

    The file is a sequence of pickles: the magic number, the protocol version (1001), a sys_info dict,
    the object (storages as persistent ids ``("storage", storage type, root key, location, numel,
    view_metadata)``), the list of storage keys; then, for each key in that order, an int64 element
    count and the storage's bytes. The first reference to a root key decides its dtype and size; a
    view ``(view key, offset, size)`` is a slice of its root, cached by view key.
    """

    def __init__(self, path: str, limits: ParseLimits) -> None:
        self.path, self.limits = path, limits
        self.byteorder = "little"
        self._size = os.path.getsize(path)
        with open(path, "rb") as f:
            self._head = f.read(2 * limits.max_pickle_bytes + (1 << 16))
        self._pos = 0
        # key -> (root key, byte offset in the root, the reference handed out)
        self._objects: dict[str, tuple[str, int, StorageRef]] = {}
        self._data: dict[str, int] = {}  # root key -> file offset of its bytes
        self._bytes: dict[str, bytes] = {}
        self._materialised = 0
        self._file: Any = None

    def close(self) -> None:
        self._bytes.clear()
        if self._file is not None:
            self._file.close()
            self._file = None

    def _read_at(self, offset: int, n: int) -> bytes:
        if self._file is None:
            self._file = open(self.path, "rb")  # noqa: SIM115 - closed in close()
        self._file.seek(offset)
        return self._file.read(n)

    def next_pickle(self, source: LegacyTorchFile | None) -> tuple[Any, list[str], list[str]]:
        data = self._head[self._pos :]
        _, end = prescan_end(data, self.limits)
        if end > self.limits.max_pickle_bytes:
            raise _too_large("a pickle of the legacy file is too large")
        self._pos += end
        return unpickle_ex(data[:end], source, self.limits)

    def persistent(self, pid: Any) -> StorageRef:
        if not isinstance(pid, tuple) or len(pid) != 6 or pid[0] != "storage":
            raise _bad("the pickle has an unknown persistent id")
        _, stype, root_key, location, numel, view = pid
        if (
            not isinstance(stype, StorageType)
            or stype.untyped
            or not isinstance(root_key, str)
            or not isinstance(location, str | bytes)
            or not _is_int(numel)
            or numel < 0
        ):
            raise _bad("the pickle has a malformed storage reference")
        dtype = stype.dtype
        if numel * dtype.itemsize > self.limits.max_tensor_bytes:
            raise _too_large(f"a tensor declares {numel * dtype.itemsize} bytes, more than the limit")
        entry = self._objects.get(root_key)
        if entry is None:
            ref = StorageRef(self, root_key, dtype, numel)
            self._objects[root_key] = (root_key, 0, ref)
        elif entry[0] != root_key:
            raise _bad("a storage key names both a storage and a view")
        else:
            ref = entry[2]
            if ref.nbytes == 0:  # torch replaces an empty storage by a new empty one of this dtype
                ref = StorageRef(self, root_key, dtype, 0)
        if view is None:
            return ref
        if not isinstance(view, tuple) or len(view) != 3:
            raise _bad("the pickle has a malformed storage view")
        view_key, offset, view_size = view
        if (
            not isinstance(view_key, str)
            or not _is_int(offset)
            or not _is_int(view_size)
            or min(offset, view_size) < 0
        ):
            raise _bad("the pickle has a malformed storage view")
        if view_key not in self._objects:
            start = offset * dtype.itemsize
            if start + view_size * dtype.itemsize > ref.nbytes:
                raise _bad("a storage view reaches past its storage")
            self._objects[view_key] = (root_key, start, StorageRef(self, view_key, dtype, view_size))
        return self._objects[view_key][2]

    def locate(self, keys: Any) -> None:
        """Place each listed storage's bytes after the pickles: int64 element count, then the bytes."""
        if (
            not isinstance(keys, list)
            or not all(isinstance(k, str) for k in keys)
            or len(set(keys)) != len(keys)
        ):
            raise _bad("the legacy file's storage key list is malformed")
        offset = self._pos
        for key in keys:
            entry = self._objects.get(key)
            if entry is None or entry[0] != key:
                raise _bad(f"the legacy file lists storage {key[:100]!r} it does not use")
            ref = entry[2]
            head = self._read_at(offset, 8)
            if len(head) != 8:
                raise CheckpointError("the legacy file is truncated", code="truncated", param="file")
            (count,) = struct.unpack("<q", head)
            if count * ref.dtype.itemsize != ref.nbytes:
                raise _bad(f"storage {key[:100]!r} has the wrong size in the legacy file")
            self._data[key] = offset + 8
            offset += 8 + ref.nbytes
            if offset > self._size:
                raise CheckpointError("the legacy file is truncated", code="truncated", param="file")
        for root, (root_key, _, ref) in self._objects.items():  # torch would leave these uninitialised
            if root == root_key and ref.nbytes and root not in self._data:
                raise _bad(f"storage {root[:100]!r} has no bytes in the legacy file")

    def charge(self, nbytes: int) -> None:
        self._materialised += nbytes
        if self._materialised > min(
            self.limits.max_total_bytes, self.limits.max_amplification * self._size + (1 << 20)
        ):
            raise _too_large("the file's tensors need more memory than the limits allow")

    def read_storage(self, ref: StorageRef) -> bytes:
        root_key, start, _ = self._objects[ref.key]
        raw = self._read_at(self._data[root_key] + start, ref.nbytes)
        if len(raw) != ref.nbytes:
            raise CheckpointError("the legacy file is truncated", code="truncated", param="file")
        return raw

    def storage_bytes(self, ref: StorageRef) -> bytes:
        raw = self._bytes.get(ref.key)
        if raw is None:
            raw = self._bytes[ref.key] = self.read_storage(ref)
        return raw


def load_legacy_file(path: str, limits: ParseLimits) -> LoadedPickle:
    """Load a legacy-format file (see :class:`LegacyTorchFile`)."""
    legacy = LegacyTorchFile(path, limits)
    magic, _, _ = legacy.next_pickle(None)
    if type(magic) is not int or magic != _LEGACY_MAGIC:
        raise _bad("invalid magic number in a legacy torch file")
    version, _, _ = legacy.next_pickle(None)
    if type(version) is not int or version != 1001:
        raise _bad(f"unsupported legacy torch protocol version {version!r}")
    legacy.next_pickle(None)  # sys_info: read (and bounded) but, as by torch, not used
    obj, unknown, extensions = legacy.next_pickle(legacy)
    keys, _, _ = legacy.next_pickle(None)
    legacy.locate(keys)
    return LoadedPickle(obj, unknown, legacy, extensions)


@dataclass
class LoadedPickle:
    obj: Any
    unknown_globals: list[str]
    archive: TorchZipFile | LegacyTorchFile | None
    #: globals/opcodes torch's weights_only reader refuses (empty: torch reads the file as we do)
    torch_extensions: list[str] = field(default_factory=list)


def sniff(path: str) -> str:
    """'zip', 'legacy_torch', 'pickle', 'safetensors' or 'unknown' from the first bytes."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "zip"
    if len(head) >= 8:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n < 100_000_000 and head[8:9] == b"{":
            return "safetensors"
    if head[:1] == b"\x80":
        if head[2:4] == b"\x8a\x0a" and head[4:14] == _LEGACY_MAGIC.to_bytes(10, "little"):
            return "legacy_torch"
        return "pickle"
    return "unknown"


def unpickle(
    data: bytes, source: TorchZipFile | None, limits: ParseLimits | None = None
) -> tuple[Any, list[str]]:
    """Pre-scan, then run :class:`SafeUnpickler` on ``data``; map every failure to a CheckpointError."""
    obj, unknown, _ = unpickle_ex(data, source, limits)
    return obj, unknown


def unpickle_ex(
    data: bytes, source: TorchZipFile | LegacyTorchFile | None, limits: ParseLimits | None = None
) -> tuple[Any, list[str], list[str]]:
    """:func:`unpickle`, also returning what torch's weights_only reader would refuse."""
    limits = limits or (source.limits if source is not None else ParseLimits())
    extra_ops = prescan(data, limits)
    up = SafeUnpickler(data, source, limits)
    try:
        obj = up.load()
    except UnsafePickle as e:
        logger.warning("rejected a pickle naming %s", e.qualname)
        raise CheckpointError(
            f"the file's pickle names {e.qualname}, which can run code; refusing it",
            code="unsafe_pickle",
            param="file",
        ) from None
    except CheckpointError:
        raise
    except RecursionError:
        raise _bad("the pickle is nested too deeply") from None
    except (EOFError, pickle.UnpicklingError) as e:
        code = "truncated" if isinstance(e, EOFError) or "truncated" in str(e) else "not_a_checkpoint"
        raise CheckpointError(f"the file's pickle is malformed: {e}", code=code, param="file") from None
    except (MemoryError, OverflowError):
        raise _too_large("the pickle asks for more memory than the limits allow") from None
    except Exception as e:  # noqa: BLE001 - any other failure inside a hostile pickle is a bad file
        raise _bad(f"the file's pickle is malformed ({type(e).__name__}: {str(e)[:200]})") from None
    return obj, up.unknown_globals, sorted(up.extensions) + sorted(f"opcode {n}" for n in extra_ops)


def load_torch_file(
    path: str, *, max_tensor_bytes: int | None = None, limits: ParseLimits | None = None
) -> LoadedPickle:
    """Load a ``torch.save`` file safely. Tensors come back as :class:`LazyTensor`.

    The archive stays open (``result.archive``) so that tensors can be materialised; close it when done.
    """
    limits = limits or ParseLimits()
    if max_tensor_bytes is not None:
        limits = ParseLimits(**{**limits.__dict__, "max_tensor_bytes": max_tensor_bytes})
    kind = sniff(path)
    if kind == "legacy_torch":
        return load_legacy_file(path, limits)
    if kind == "pickle":
        # a bare pickle: still scan it (an unsafe one is reported as such), but it holds no tensors
        with open(path, "rb") as f:
            data = f.read(limits.max_pickle_bytes + 1)
        if len(data) > limits.max_pickle_bytes:
            raise _too_large("the pickle is too large")
        unpickle(data, None, limits)
        raise _bad("a bare pickle is not a torch checkpoint (expected a zip-format torch.save file)")
    if kind != "zip":
        raise _bad("not a torch checkpoint (unknown file format)")
    archive = TorchZipFile(path, limits=limits)
    try:
        data = archive.pickle_bytes()
        archive.check_version()
        obj, unknown, extensions = unpickle_ex(data, archive, limits)
    except BaseException:
        archive.close()
        raise
    return LoadedPickle(obj, unknown, archive, extensions)
