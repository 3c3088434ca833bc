"""Hostile checkpoint files that try to exhaust the parser (memory, CPU), one builder per pattern.

Every file is small (bytes to a few MB) and is built here from raw opcodes and zip members, so the
corpus needs nothing hostile to exist on disk before a test runs. ``CORPUS`` maps a pattern name to
``(builder, expected error codes)``; the core tests and the REST tests share it.
"""

from __future__ import annotations

import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

P61 = (1 << 61) - 1  # sys.hash_info.modulus: k * P61 all hash to 0


# ---------------------------------------------------------------------------------------------------
# a tiny pickle assembler (protocol 2 opcodes)


def s(x: str) -> bytes:
    b = x.encode()
    return b"X" + struct.pack("<I", len(b)) + b


def i(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if -(2**31) <= n < 2**31:
        return b"J" + struct.pack("<i", n)
    enc = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    if len(enc) < 256:
        return b"\x8a" + bytes([len(enc)]) + enc
    return b"\x8b" + struct.pack("<i", len(enc)) + enc


def g(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def tup(*items: bytes) -> bytes:
    return b"(" + b"".join(items) + b"t"


def put(n: int) -> bytes:
    return b"r" + struct.pack("<I", n)  # LONG_BINPUT


def get(n: int) -> bytes:
    return b"j" + struct.pack("<I", n)  # LONG_BINGET


def tensor(
    key: str,
    numel: int,
    shape: tuple,
    stride: tuple,
    storage: str = "FloatStorage",
    offset: int = 0,
    dtype: str | None = None,
) -> bytes:
    """A ``_rebuild_tensor_v2`` call on storage ``key``; with ``dtype`` (a torch dtype name), a
    ``_rebuild_tensor_v3`` call that reads the storage bytes as that dtype."""
    pid = tup(s("storage"), g("torch", storage), s(key), s("cpu"), i(numel)) + b"Q"
    args = (
        pid
        + i(offset)
        + tup(*map(i, shape))
        + tup(*map(i, stride))
        + b"\x89"
        + g("collections", "OrderedDict")
        + b")R"
    )
    if dtype is None:
        return g("torch._utils", "_rebuild_tensor_v2") + b"(" + args + b"tR"
    return g("torch._utils", "_rebuild_tensor_v3") + b"(" + args + g("torch", dtype) + b"tR"


def pkl(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


CTX = (np.arange(32, dtype=np.float32).reshape(4, 8) / 7.0).tobytes()


def ctx_entry() -> bytes:
    return s("ctx") + tensor("0", 32, (4, 8), (8, 1))


def state(extra: bytes = b"", ctx: bytes | None = None) -> bytes:
    """A valid CoOp state dict (ctx [4, 8]) plus ``extra`` key/value opcodes."""
    return pkl(b"}(" + (ctx if ctx is not None else ctx_entry()) + extra + b"u")


def torch_zip(
    path: Path,
    data_pkl: bytes,
    storages: dict[str, bytes] | None = None,
    extra: list[tuple[str, bytes]] | None = None,
) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", data_pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for k, v in (storages if storages is not None else {"0": CTX}).items():
            z.writestr(f"archive/data/{k}", v)
        for name, v in extra or []:
            z.writestr(name, v)
    return path


# ---------------------------------------------------------------------------------------------------
# the patterns


def zero_stride_view(path: Path) -> Path:
    """A 4-byte storage viewed as (262144, 1024) with strides (0, 0): 1 GiB if materialised."""
    body = state(ctx=s("ctx") + tensor("0", 1, (262144, 1024), (0, 0)))
    return torch_zip(path, body, {"0": b"\x00\x00\x80\x3f"})


def zero_stride_view_3g(path: Path) -> Path:
    """The same with shape (786432, 1024): 3 GiB."""
    body = state(ctx=s("ctx") + tensor("0", 1, (786432, 1024), (0, 0)))
    return torch_zip(path, body, {"0": b"\x00\x00\x80\x3f"})


def zero_stride_view_within_caps(path: Path) -> Path:
    """A ctx of 1000 x 32 x 1024 float32 (131 MB, under the per-tensor and per-file caps) viewed on
    one 4-byte storage: a 611-byte upload that would be stored as 131 MB of tensors."""
    body = state(ctx=s("ctx") + tensor("0", 1, (1000, 32, 1024), (0, 0, 0)))
    return torch_zip(path, body, {"0": b"\x00\x00\x80\x3f"})


def memo_long_binput(path: Path) -> Path:
    """LONG_BINPUT 2^27: the C unpickler grows its memo array to 2^27 slots (about 2 GB)."""
    return torch_zip(path, state(extra=s("x") + b"N" + put(1 << 27)))


def str_on_shared_list_dag(path: Path) -> Path:
    """L_k = [L_{k-1}, L_{k-1}] through memo GETs; str(L_60) would render 2^60 leaves."""
    body = b"]" + put(0) + b"0"  # L_0 = [] (memoised, popped)
    for k in range(1, 61):
        body += b"(" + get(k - 1) + get(k - 1) + b"l" + put(k) + b"0"
    top = b"}(" + ctx_entry() + s("s") + g("builtins", "str") + tup(get(60)) + b"R" + b"u"
    return torch_zip(path, pkl(body + top))


def metadata_dag(path: Path) -> Path:
    """A Dassl file whose "mergetune" metadata is a shared-list DAG: json.dumps would render 2^60 leaves."""
    body = b"]" + put(0) + b"0"
    for k in range(1, 61):
        body += b"(" + get(k - 1) + get(k - 1) + b"l" + put(k) + b"0"
    top = (
        b"}("
        + s("state_dict")
        + b"}("
        + ctx_entry()
        + b"u"
        + s("mergetune")
        + b"}("
        + s("x")
        + get(60)
        + b"uu"
    )
    return torch_zip(path, pkl(body + top))


def hash_collision_int_keys(path: Path, n: int = 60_000) -> Path:
    """n int keys k * (2^61 - 1): all hash to 0, so inserting them costs n^2 probes."""
    keys = b"".join(i(k * P61) + b"N" for k in range(1, n + 1))
    return torch_zip(path, state(extra=s("opt") + b"}(" + keys + b"u"))


def hash_collision_tuple_keys(path: Path, n: int = 20_000) -> Path:
    """The same with 1-tuples of colliding ints (tuple hashes follow their items)."""
    keys = b"".join(i(k * P61) + b"\x85" + b"N" for k in range(1, n + 1))
    return torch_zip(path, state(extra=s("opt") + b"}(" + keys + b"u"))


def hash_collision_set(path: Path, n: int = 20_000) -> Path:
    """A set built with builtins.set from a list of colliding ints."""
    items = b"(" + b"".join(i(k * P61) for k in range(1, n + 1)) + b"l"
    return torch_zip(path, state(extra=s("opt") + g("builtins", "set") + b"(" + items + b"tR"))


def deflate_member(path: Path, size: int = 256 << 20) -> Path:
    """A storage member DEFLATEd: 256 MiB of zeros in about 256 KB; torch never writes these."""
    body = state(ctx=s("ctx") + tensor("0", size // 4, (size // 4,), (1,)))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", body)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with z.open(info, "w", force_zip64=True) as f:
            chunk = bytes(1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
    return path


def stride_1e30(path: Path) -> Path:
    """A stride of 10^30 (numpy raised OverflowError)."""
    return torch_zip(path, state(ctx=s("ctx") + tensor("0", 32, (2, 4), (10**30, 1))))


def huge_shape_empty_dim(path: Path) -> Path:
    """Shape (0, 10^30): zero elements, but products of the other dims overflow C integers."""
    return torch_zip(path, state(ctx=s("ctx") + tensor("0", 32, (0, 10**30, 10**30), (1, 1, 1))))


def empty_list_flood(path: Path) -> Path:
    """3 million EMPTY_LIST opcodes in a 3 MB pickle: ~200 MB of list objects on the stack."""
    return torch_zip(path, b"\x80\x02" + b"]" * 3_000_000 + b"N.")


def bad_opcode_late(path: Path) -> Path:
    """900,000 harmless opcodes (under the opcode cap), then one the reader refuses (INST)."""
    return torch_zip(path, b"\x80\x02" + b"N0" * 450_000 + b"(ios\nsystem\n.")


def mark_flood(path: Path) -> Path:
    """1 million nested MARKs (the pure-Python unpickler keeps one list per MARK)."""
    return torch_zip(path, b"\x80\x02" + b"(" * 1_000_000 + b"N.")


def bytes_budget(path: Path) -> Path:
    """2000 calls of bytes(1 MiB) each under the old per-call cap: 2 GB from a 40 KB pickle."""
    calls = b"".join(s(f"b{n}") + g("builtins", "bytes") + tup(i(1 << 20)) + b"R" for n in range(2000))
    return torch_zip(path, state(extra=calls))


def shared_dict_dag(path: Path) -> Path:
    """Nested state dicts sharing one child 64 times per level: flattening visits 64^5 entries."""
    body = b"}" + put(0) + b"(" + ctx_entry() + b"u0"
    for level in range(1, 6):
        body += b"}" + put(level) + b"(" + b"".join(s(f"k{n}") + get(level - 1) for n in range(64)) + b"u0"
    return torch_zip(path, pkl(body + get(5)))


def long_int_literal(path: Path) -> Path:
    """A protocol-0 INT of 5 million digits (int() of it is quadratic without Python's digit limit)."""
    return torch_zip(path, state(extra=s("n") + b"I" + b"9" * 5_000_000 + b"\n"))


def duplicate_storage_member(path: Path) -> Path:
    """The storage member written twice (zip readers disagree on which copy wins)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the duplicate is the point
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr("archive/data.pkl", state())
            z.writestr("archive/data/0", CTX)
            z.writestr("archive/data/0", bytes(len(CTX)))
            z.writestr("archive/version", "3\n")
    return path


def duplicate_data_pkl(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the duplicate is the point
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            z.writestr("archive/data.pkl", state())
            z.writestr("archive/data.pkl", pkl(b"}"))
            z.writestr("archive/data/0", CTX)
            z.writestr("archive/version", "3\n")
    return path


def oversized_pickle(path: Path) -> Path:
    """A 17 MB data.pkl (over the 16 MB cap) of cheap opcodes."""
    return torch_zip(path, b"\x80\x02" + b"N0" * (17 << 19) + b"N.")


#: pattern -> (builder, accepted answers): error codes, or "ready" for a file read (quickly, boundedly).
CORPUS: dict[str, tuple[Callable[[Path], Path], set[str]]] = {
    "zero_stride_view_1g": (zero_stride_view, {"too_large"}),
    "zero_stride_view_3g": (zero_stride_view_3g, {"too_large"}),
    "zero_stride_view_131m": (zero_stride_view_within_caps, {"too_large"}),
    "memo_long_binput_2^27": (memo_long_binput, {"too_large"}),
    "str_on_shared_list_dag": (str_on_shared_list_dag, {"not_a_checkpoint"}),
    "metadata_dag": (metadata_dag, {"ready"}),  # read, the metadata dropped
    "hash_collision_int_keys": (hash_collision_int_keys, {"too_large"}),
    "hash_collision_tuple_keys": (hash_collision_tuple_keys, {"too_large"}),
    "hash_collision_set": (hash_collision_set, {"too_large"}),
    "deflate_member_256m": (deflate_member, {"not_a_checkpoint"}),
    "stride_1e30": (stride_1e30, {"not_a_checkpoint"}),
    "huge_shape_empty_dim": (huge_shape_empty_dim, {"not_a_checkpoint"}),
    "empty_list_flood": (empty_list_flood, {"too_large"}),
    "mark_flood": (mark_flood, {"too_large"}),
    "bad_opcode_late": (bad_opcode_late, {"not_a_checkpoint"}),
    "bytes_budget": (bytes_budget, {"too_large"}),
    "shared_dict_dag": (shared_dict_dag, {"too_large"}),
    "long_int_literal": (long_int_literal, {"not_a_checkpoint"}),
    "duplicate_storage_member": (duplicate_storage_member, {"not_a_checkpoint"}),
    "duplicate_data_pkl": (duplicate_data_pkl, {"not_a_checkpoint"}),
    "oversized_pickle": (oversized_pickle, {"too_large"}),
}


def build(name: str, folder: Path) -> Path:
    builder, _ = CORPUS[name]
    return builder(folder / f"{name}.pth")
