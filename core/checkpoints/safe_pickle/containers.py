"""Read ``torch.save`` files without torch and without running any of their code, within limits.

A ``torch.save`` file (zip format, torch >= 1.6) is a zip archive ``<prefix>/data.pkl`` (the pickle),
``<prefix>/data/<key>`` (raw storage bytes, one entry per storage) and ``<prefix>/byteorder``. The
pickle names tensor rebuild functions and storage types as globals and refers to storages through
persistent ids. Dassl checkpoints also pickle a scheduler *object* of a class the service does not
have, so ``torch.load(weights_only=True)`` refuses them while ``weights_only=False`` would run
whatever the file says.

:class:`SafeUnpickler` resolves globals through three tiers:

1. an allowlist of real callables: our own numpy tensor-rebuild functions standing in for
   ``torch._utils._rebuild_tensor_v2`` and friends, storage/dtype markers, ``OrderedDict`` and
   argument-checked versions of plain builtins;
2. a denylist of names able to run code (``os``, ``subprocess``, ``builtins.eval``, ``importlib``...):
   the whole file is rejected as ``unsafe_pickle`` even though nothing would be called;
3. everything else becomes an inert placeholder class that records its name; instantiating, calling,
   ``BUILD``/``__setstate__`` on it are absorbed without effect.

Limits before work (:class:`ParseLimits`): the pickle is pre-scanned opcode by opcode (memo indices,
opcode count, MARK depth) before anything is built; containers, dict keys and what the allowed
builtins may allocate are bounded while it is built; every tensor view's byte size is checked against
a per-tensor cap, its storage and a per-file total before a byte is read. Keys whose hashes an
attacker can choose (big ints, floats, tuples) are counted and capped, so a dict of colliding keys
cannot cost quadratic time. Every failure is a :class:`CheckpointError` with a stable code
(``too_large`` for a limit, ``truncated``, ``not_a_checkpoint``, ``unsafe_pickle``...); no
``OverflowError`` or ``MemoryError`` escapes.

Same meaning as torch's ``weights_only`` reader where that reader accepts a file: storages are cached
by key only (the first reference's dtype and size win, an empty storage is not cached),
``_rebuild_tensor_v3`` always applies its dtype to the storage bytes, ``OrderedDict`` pairs may be
lists; the legacy (pre-1.6, non-zip) format is read as torch's ``_legacy_load`` reads it. Refused
although torch would read them (documented in docs/ALGORITHM.md): compressed members, duplicate
member names, CRC mismatches, nested-tuple keys, files over the limits.

Tensors are returned as :class:`LazyTensor` (zip entry + view geometry); their bytes are read only when
:meth:`LazyTensor.numpy` is called, so the 150 MB ``token_suffix`` of an ImageNet CoOp file is never
materialised.

No torch import here: the API's parse sandbox runs this module.
"""

from __future__ import annotations

import io
import logging
import math
import os
import pickle
import pickletools
import re
import struct
import sys
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mergetune.core.errors import CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_MAX_TENSOR_BYTES = 512 << 20  # per storage and per view (as materialised)
MAX_PICKLE_BYTES = 16 << 20  # data.pkl of a state dict is small (no tensor data inside); bounds memory
MAX_ZIP_MEMBERS = 100_000
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_HASH_MODULUS = sys.hash_info.modulus  # ints in (-M, M) have pairwise distinct hashes (but -1/-2)


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on the work one file may cause. Defaults suit every checkpoint layout we read."""

    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES  # one storage, and one view as materialised
    max_total_bytes: int = 2 * DEFAULT_MAX_TENSOR_BYTES  # all views materialised from one file
    #: materialised bytes per byte of the file (+1 MiB): overlapping (zero-stride) views cannot turn a
    #: small file into large arrays; 2 covers fp16/bf16 widened to float32
    max_amplification: float = 2.0
    max_pickle_bytes: int = MAX_PICKLE_BYTES
    max_opcodes: int = 1_000_000  # pickle opcodes (each creates at most one object); ~30k tensors
    max_memo: int = 1 << 20  # memo index (PUT/GET) and memo entries
    max_mark_depth: int = 10_000  # nested MARKs
    max_container_items: int = 1 << 20  # items of one list/tuple/dict/set
    max_collidable_keys: int = 4096  # dict keys / set items with attacker-chosen hashes, per file
    max_alloc_bytes: int = 64 << 20  # what allowed builtins (bytes, str, list...) may allocate in all
    max_unknown_globals: int = 64  # names recorded (the rest are still inert, just not listed)


def _too_large(message: str) -> CheckpointError:
    return CheckpointError(message, code="too_large", param="file")


def _bad(message: str) -> CheckpointError:
    return CheckpointError(message, code="not_a_checkpoint", param="file")


# ----------------------------------------------------------------------------------------------------
# dtypes


@dataclass(frozen=True, slots=True)
class DType:
    """A torch dtype / typed-storage marker: the numpy dtype to read bytes as and the torch name."""

    name: str  # torch name, e.g. "float32", "bfloat16"
    numpy: str  # numpy dtype string of the raw bytes (bfloat16 -> "u2", converted on read)
    itemsize: int

    def __setstate__(self, state: Any) -> None:  # BUILD from a hostile pickle: absorbed (shared object)
        return None

    @property
    def is_floating(self) -> bool:
        return self.name in ("float16", "bfloat16", "float32", "float64")


_DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        DType("float32", "f4", 4),
        DType("float64", "f8", 8),
        DType("float16", "f2", 2),
        DType("bfloat16", "u2", 2),
        DType("int64", "i8", 8),
        DType("int32", "i4", 4),
        DType("int16", "i2", 2),
        DType("int8", "i1", 1),
        DType("uint8", "u1", 1),
        DType("bool", "?", 1),
        DType("complex64", "c8", 8),
        DType("complex128", "c16", 16),
    )
}
# torch.<Name>Storage -> dtype name
_STORAGE_TYPES = {
    "FloatStorage": "float32",
    "DoubleStorage": "float64",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
# torch.<alias> -> dtype name (torch.float32 etc. appear as globals in _rebuild_tensor_v3 pickles)
_DTYPE_ALIASES = {
    "float32": "float32",
    "float": "float32",
    "float64": "float64",
    "double": "float64",
    "float16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64",
    "long": "int64",
    "int32": "int32",
    "int": "int32",
    "int16": "int16",
    "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
    "complex64": "complex64",
    "cfloat": "complex64",
    "complex128": "complex128",
    "cdouble": "complex128",
}

# safetensors dtype tag -> dtype name
SAFETENSORS_DTYPES = {
    "F32": "float32",
    "F64": "float64",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


@dataclass(frozen=True, slots=True)
class StorageType:
    """A ``torch.<Name>Storage`` global (distinct from a dtype global, as in torch): the element type of
    a storage reference. ``untyped`` for torch.storage.UntypedStorage (bytes)."""

    dtype: DType
    untyped: bool = False

    def __setstate__(self, state: Any) -> None:  # BUILD from a hostile pickle: absorbed
        return None


def dtype_by_name(name: str) -> DType:
    return _DTYPES[name]


def decode_bytes(raw: bytes | memoryview, dtype: DType, byteorder: str = "little") -> np.ndarray:
    """Raw storage bytes -> 1-D numpy array (bfloat16 widened to float32, native byte order)."""
    prefix = "<" if byteorder == "little" else ">"
    np_dtype = np.dtype(dtype.numpy if dtype.itemsize == 1 else prefix + dtype.numpy)
    arr = np.frombuffer(raw, dtype=np_dtype)
    if dtype.name == "bfloat16":
        return (arr.astype(np.uint32) << 16).view(np.float32)
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr


def _swap_unit(dtype: DType) -> int:
    """Byte-swap unit of a dtype (complex numbers swap each component)."""
    return dtype.itemsize // 2 if dtype.name.startswith("complex") else dtype.itemsize


# ----------------------------------------------------------------------------------------------------
# lazy storages and tensors


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A storage in the archive, not read yet (validated against the archive when created).

    ``dtype``/``numel`` are those of the first reference to ``key`` (torch's cache is by key only);
    the storage is ``numel * dtype.itemsize`` raw bytes that views of any dtype may reinterpret.
    """

    source: TorchZipFile | LegacyTorchFile
    key: str
    dtype: DType
    numel: int

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def __setstate__(self, state: Any) -> None:  # BUILD from a hostile pickle: absorbed
        return None


@dataclass(eq=False)  # identity hash: tensors are dict keys in pickled optimizer states
class LazyTensor:
    """A tensor view (offset, size, stride in elements of ``dtype``) on a storage's bytes.

    Bytes are read by :meth:`numpy`. The view was checked against the storage, the per-tensor cap and
    the file's total when it was created; :meth:`numpy` checks again against the bytes actually read.
    """

    storage: StorageRef | None  # None for tensors given as an in-memory array (safetensors)
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: DType
    _array: np.ndarray | None = field(default=None, repr=False)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def __setstate__(self, state: Any) -> None:  # BUILD on a tensor from a hostile pickle: absorbed
        return None

    def numpy(self) -> np.ndarray:
        """Materialise as a contiguous numpy array (float32 for bfloat16)."""
        if self._array is not None:
            return self._array
        assert self.storage is not None
        source = self.storage.source
        out_bytes = self.numel * (4 if self.dtype.name == "bfloat16" else self.dtype.itemsize)
        source.charge(out_bytes)
        raw = source.storage_bytes(self.storage)
        item = self.dtype.itemsize
        np_dtype = np.dtype(self.dtype.numpy)
        if self.numel == 0:
            out = np.zeros(self.shape, dtype=np_dtype)
        else:
            extent = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True)) + 1
            if extent * item > len(raw):  # never trust the earlier check alone
                raise _bad("a tensor reads past the end of its storage")
            base = np.frombuffer(raw, dtype=np_dtype, count=len(raw) // item)
            view = np.lib.stride_tricks.as_strided(
                base[self.offset :],
                shape=self.shape,
                strides=tuple(s * item for s in self.stride),
                writeable=False,
            )
            out = np.array(view, copy=True, order="C")
        if self.dtype.name == "bfloat16":
            out = (out.astype(np.uint32) << 16).view(np.float32)
        self._array = out
        return out

    @classmethod
    def from_array(cls, arr: np.ndarray, dtype: DType) -> LazyTensor:
        strides = tuple(s // max(arr.itemsize, 1) for s in arr.strides)
        return cls(None, 0, tuple(arr.shape), strides, dtype, arr)


_MAX_DIM = 1 << 48  # any size or stride beyond this cannot address a capped storage


def _is_int(v: Any) -> bool:
    return type(v) is int


def _check_view(
    storage: StorageRef, dtype: DType, offset: Any, size: Any, stride: Any
) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Validate a view (in elements of ``dtype``) before anything is read; same bounds rule as
    torch's ``set_``: ``(offset + extent) * itemsize <= storage bytes`` unless the storage is empty."""
    if not _is_int(offset) or not 0 <= offset < _MAX_DIM:
        raise _bad("a tensor has an invalid storage offset")
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list) or len(size) != len(stride):
        raise _bad("a tensor has an invalid shape or stride")
    if len(size) > 16 or not all(_is_int(v) and 0 <= v < _MAX_DIM for v in (*size, *stride)):
        raise _bad("a tensor has an invalid shape or stride")
    size, stride = tuple(size), tuple(stride)
    source = storage.source
    numel = math.prod(size)  # exact (Python ints): no overflow
    view_bytes = numel * (4 if dtype.name == "bfloat16" else dtype.itemsize)
    if view_bytes > source.limits.max_tensor_bytes:
        raise _too_large(
            f"a tensor of shape {list(size)} would take {view_bytes} bytes, more than the limit of "
            f"{source.limits.max_tensor_bytes}"
        )
    if storage.nbytes == 0:
        if numel:
            raise _bad(f"a tensor of shape {list(size)} views an empty storage")
        return offset, size, stride
    extent = 0 if numel == 0 else sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
    if (offset + extent) * dtype.itemsize > storage.nbytes:
        raise _bad(
            f"a tensor of shape {list(size)} reads past the end of its storage "
            f"({(offset + extent) * dtype.itemsize} > {storage.nbytes} bytes)"
        )
    return offset, size, stride


# Rebuild functions: what the allowlisted torch._utils names resolve to.


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> LazyTensor:
    return _rebuild_with_dtype(storage, storage_offset, size, stride, None)


def _check_requires_grad(requires_grad: Any, dtype: DType) -> None:
    """As torch sets ``tensor.requires_grad``: a bool, and only floating/complex tensors may require it."""
    if type(requires_grad) is not bool:
        raise _bad("a tensor's requires_grad is not a bool")
    if requires_grad and not (dtype.is_floating or dtype.name.startswith("complex")):
        raise _bad(f"a {dtype.name} tensor cannot require gradients")


def _check_hooks_and_metadata(backward_hooks: Any, metadata: Any) -> None:
    """torch sets ``tensor._backward_hooks`` (None or a dict) and applies truthy ``metadata`` (conj/neg
    bits we do not model: refused)."""
    if backward_hooks is not None and not isinstance(backward_hooks, dict):
        raise _bad("a tensor's backward hooks are not a dict")
    if metadata is not None and not isinstance(metadata, dict | bool | int | str | list | tuple):
        raise _bad("a tensor's metadata is not readable")
    if metadata:
        raise _bad("a tensor carries metadata (conjugate/negative bits); not supported")


def _rebuild_with_dtype(
    storage: Any, storage_offset: Any, size: Any, stride: Any, dtype: Any, requires_grad: Any = False
) -> LazyTensor:
    if not isinstance(storage, StorageRef):
        raise _bad("a tensor refers to something that is not a storage")
    if dtype is None:
        dtype = storage.dtype
    if not isinstance(dtype, DType):
        raise _bad("a tensor has an invalid dtype")
    _check_requires_grad(requires_grad, dtype)
    offset, size, stride = _check_view(storage, dtype, storage_offset, size, stride)
    return LazyTensor(storage, offset, size, stride, dtype)


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    metadata: Any = None,
) -> LazyTensor:  # fmt: skip
    _check_hooks_and_metadata(backward_hooks, metadata)
    return _rebuild_with_dtype(storage, storage_offset, size, stride, None, requires_grad)


def _rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any, backward_hooks: Any,
    dtype: Any, metadata: Any = None,
) -> LazyTensor:  # fmt: skip
    """torch applies ``dtype`` to the storage's bytes, whatever the storage's own type."""
    if not isinstance(dtype, DType):
        raise _bad("a tensor (rebuild v3) has no valid dtype")
    _check_hooks_and_metadata(backward_hooks, metadata)
    return _rebuild_with_dtype(storage, storage_offset, size, stride, dtype, requires_grad)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> Any:
    if not isinstance(data, LazyTensor):
        raise _bad("a parameter wraps something that is not a tensor")
    _check_requires_grad(requires_grad, data.dtype)
    _check_hooks_and_metadata(backward_hooks, None)
    return data


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> Any:
    return _rebuild_parameter(data, requires_grad, backward_hooks)


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None, *_: Any) -> Any:
    """torch._tensor._rebuild_from_type_v2: a tensor (subclass) with Python state; state is dropped."""
    if not isinstance(func, _SafeCallable) or not isinstance(args, tuple):
        raise _bad("a tensor has an unsupported rebuild function")
    return func(*args)


def _safe_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """_codecs.encode as protocol-2 pickles of bytes use it: str -> bytes with a text encoding only."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise _bad("unsupported _codecs.encode call in the pickle")
    return obj.encode(encoding, "strict")


def _inert_defaultdict(*_args: Any, **_kw: Any) -> dict:
    """collections.defaultdict (in optimizer states): a plain dict, the default factory is dropped."""
    return {}


# ----------------------------------------------------------------------------------------------------
# the global policy


class _SafeCallable:
    """Wraps an allowlisted function so that a pickle cannot set attributes on the real function."""

    __slots__ = ("_fn", "_name")
    _fn: Any
    _name: str

    def __init__(self, fn: Any, name: str) -> None:
        object.__setattr__(self, "_fn", fn)
        object.__setattr__(self, "_name", name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._fn(*args, **kwargs)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("read-only")

    def __setstate__(self, state: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"<safe {self._name}>"


# builtins a pickle may call; each resolves to an argument-checked version bound to one unpickler
_SAFE_BUILTINS = frozenset(
    {"dict", "list", "tuple", "set", "frozenset", "slice", "int", "float", "complex", "bool", "str",
     "bytes", "bytearray"}
)  # fmt: skip

_ALLOWED: dict[tuple[str, str], Any] = {
    (m, n): _SafeCallable(f, f"{m}.{n}")
    for (m, n), f in {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("collections", "defaultdict"): _inert_defaultdict,
        ("_codecs", "encode"): _safe_encode,
        ("codecs", "encode"): _safe_encode,
    }.items()
}
for _name, _dt in _STORAGE_TYPES.items():
    _ALLOWED[("torch", _name)] = StorageType(_DTYPES[_dt])
for _name, _dt in _DTYPE_ALIASES.items():
    _ALLOWED[("torch", _name)] = _DTYPES[_dt]
_ALLOWED[("torch.storage", "UntypedStorage")] = StorageType(_DTYPES["uint8"], untyped=True)  # raw bytes

# What torch's own weights_only reader allows. A file that needs more than this (an unknown class,
# a builtin torch does not allow, an opcode torch does not read) is one torch refuses; we record such
# "extensions" so that callers and tests can tell a file both readers read from one only we read.
_TORCH_GLOBALS = frozenset(
    {("collections", "OrderedDict"), ("_codecs", "encode"), ("builtins", "bytearray"), ("builtins", "set"),
     ("builtins", "complex"), ("torch.storage", "UntypedStorage")}
    | {(m, n) for (m, n) in _ALLOWED if m.startswith("torch._")}
    | {("torch", n) for n in _STORAGE_TYPES}
    | {("torch", n) for n, d in _DTYPE_ALIASES.items() if n == d}
)  # fmt: skip
_TORCH_OPCODES = frozenset(
    {"GLOBAL", "NEWOBJ", "REDUCE", "BUILD", "APPEND", "APPENDS", "SETITEM", "SETITEMS", "MARK", "TUPLE",
     "TUPLE1", "TUPLE2", "TUPLE3", "NONE", "NEWFALSE", "NEWTRUE", "EMPTY_TUPLE", "EMPTY_LIST", "EMPTY_DICT",
     "EMPTY_SET", "BININT", "BININT1", "BININT2", "BINFLOAT", "BINUNICODE", "SHORT_BINSTRING", "BINPERSID",
     "BINGET", "LONG_BINGET", "BINPUT", "LONG_BINPUT", "LONG1", "PROTO", "STOP"}
)  # fmt: skip
# Also read (protocols 3-4 and plain stack operations); everything else (protocol-0 text opcodes,
# INST/OBJ, extension registry, out-of-band buffers, LONG4) is refused.
_EXTRA_OPCODES = frozenset(
    {"POP", "POP_MARK", "DUP", "LIST", "DICT", "ADDITEMS", "FROZENSET", "MEMOIZE", "FRAME",
     "SHORT_BINUNICODE", "BINUNICODE8", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8", "STACK_GLOBAL",
     "NEWOBJ_EX", "BINSTRING"}
)  # fmt: skip

# Modules (and their submodules) whose globals can run code, touch files, processes or the network,
# import or unpickle further code. Naming any of them is enough to reject the file.
_UNSAFE_MODULES = frozenset(
    {
        "os", "posix", "nt", "subprocess", "_posixsubprocess", "sys", "shutil", "socket", "_socket",
        "ssl", "select", "selectors", "asyncio", "http", "urllib", "urllib2", "httplib", "ftplib",
        "smtplib", "telnetlib", "poplib", "imaplib", "xmlrpc", "requests", "webbrowser",
        "importlib", "imp", "pkgutil", "zipimport", "runpy", "site", "sysconfig",
        "pickle", "_pickle", "cPickle", "pickletools", "copyreg", "copy_reg", "shelve", "marshal",
        "dill", "cloudpickle", "joblib", "yaml", "jsonpickle",
        "code", "codeop", "pdb", "bdb", "trace", "timeit", "profile", "cProfile", "doctest",
        "pty", "tty", "termios", "signal", "resource", "fcntl", "mmap",
        "ctypes", "_ctypes", "cffi", "multiprocessing", "_multiprocessing", "threading", "_thread",
        "concurrent", "gc", "inspect", "types", "operator", "_operator", "functools", "_functools",
        "io", "_io", "pathlib", "tempfile", "glob", "fileinput", "zipfile", "tarfile", "gzip", "bz2",
        "lzma", "logging", "platform", "distutils", "setuptools", "pip", "ensurepip", "venv",
        "builtins", "__builtin__", "__main__", "codecs", "_codecs", "weakref", "_weakref", "atexit",
        "sqlite3", "dbm", "tkinter", "idlelib", "unittest", "test",
        "commands", "popen2", "numpy.lib", "numpy.ctypeslib", "numpy.f2py", "numpy.distutils", "numpy.testing",
        "torch.serialization", "torch.hub", "torch.jit", "torch.package", "torch.ops", "torch._C",
        "torch.classes", "torch.utils", "torch.cuda", "torch._dynamo", "torch._inductor",
        "torch.compiler", "torch.distributed", "torch.multiprocessing", "torch.library",
        "torch._ops", "torch.fx", "torch.storage", "torch.export", "torch.onnx", "torch.backends",
    }
)  # fmt: skip
# Callable names that read/write files, execute code or fetch attributes, in any module.
_UNSAFE_NAMES = frozenset(
    {
        "eval", "exec", "execfile", "compile", "__import__", "import_module", "reload", "getattr",
        "setattr", "delattr", "globals", "locals", "vars", "open", "input", "breakpoint", "system",
        "popen", "Popen", "spawn", "spawnl", "spawnv", "spawnve", "execv", "execve", "execl", "fork",
        "call", "check_call", "check_output", "run", "load", "loads", "load_file", "fromfile",
        "loadtxt", "genfromtxt", "memmap", "save", "savez", "tofile", "remove", "unlink", "rmtree",
        "rmdir", "mkdir", "makedirs", "rename", "write", "write_text", "write_bytes", "attrgetter",
        "methodcaller", "itemgetter", "apply", "partial", "reduce", "__reduce__", "__reduce_ex__",
        "__setstate__", "__getattribute__", "__globals__", "__builtins__", "__subclasses__",
        "__class__", "__code__", "FunctionType", "CodeType", "LambdaType", "MethodType",
    }
)  # fmt: skip


# names inside denied modules that are allowlisted (safe versions) or harmless
_SAFE_EXCEPTIONS = frozenset(
    {
        ("types", "SimpleNamespace"),
        ("_codecs", "encode"),
        ("codecs", "encode"),
        ("torch.storage", "UntypedStorage"),
    }
)
_UNSAFE_SUBSTRINGS = ("load", "exec", "eval", "system", "popen", "spawn", "import", "compile", "subprocess")


def is_unsafe_global(module: str, name: str) -> bool:
    """True when ``module.name`` is on the denylist (checked before the allowlist's builtins)."""
    if (module, name) in _SAFE_EXCEPTIONS:
        return False
    root = module.split(".")
    for i in range(1, len(root) + 1):
        if ".".join(root[:i]) in _UNSAFE_MODULES:
            # builtins containers are allowed explicitly
            if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
                return False
            return True
    parts = name.split(".")
    if any(p in _UNSAFE_NAMES or p.startswith("__") for p in parts) or module.startswith("__"):
        return True
    low = name.lower()
    return any(s in low for s in _UNSAFE_SUBSTRINGS)


class Placeholder:
    """Base of the inert classes unknown globals become. Nothing on it has an effect."""

    __mt_global__ = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> Placeholder:
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> Placeholder:
        return type(self)()

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:  # SETITEM(S) on a placeholder
        pass

    def append(self, value: Any) -> None:  # APPEND(S) on a placeholder
        pass

    def extend(self, values: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<inert {self.__mt_global__}>"


class UnsafePickle(Exception):
    def __init__(self, qualname: str) -> None:
        super().__init__(qualname)
        self.qualname = qualname


# ----------------------------------------------------------------------------------------------------
# limits before work: a pre-scan of the opcodes


_MEMO_OPS = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})


def prescan(data: bytes, limits: ParseLimits) -> set[str]:
    """Walk the opcodes without building anything: refuse opcodes outside the allowlist, memo
    indices, opcode counts and MARK nesting beyond the limits (the C unpickler would allocate a memo
    array as large as the index). Returns the opcodes used that torch's reader does not read."""
    return prescan_end(data, limits)[0]


def prescan_end(data: bytes, limits: ParseLimits) -> tuple[set[str], int]:
    """:func:`prescan` of the pickle at the start of ``data``; also returns where it ends (after STOP)."""
    ops = memo_entries = depth = end = 0
    extra: set[str] = set()
    try:
        for op, arg, pos in pickletools.genops(data):
            end = (pos or 0) + 1
            ops += 1
            if ops > limits.max_opcodes:
                raise _too_large(f"the pickle has more than {limits.max_opcodes} opcodes")
            name = op.name
            if name not in _TORCH_OPCODES:
                if name not in _EXTRA_OPCODES:
                    raise _bad(f"the pickle uses opcode {name}, which checkpoints never use")
                extra.add(name)
            if name in _MEMO_OPS:
                if not isinstance(arg, int) or not 0 <= arg <= limits.max_memo:
                    raise _too_large(f"the pickle uses memo index {arg}, over the limit of {limits.max_memo}")
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                memo_entries += 1
                if memo_entries > limits.max_memo:
                    raise _too_large("the pickle stores too many memo entries")
            if name == "MARK":
                depth += 1
                if depth > limits.max_mark_depth:
                    raise _too_large("the pickle nests too deeply")
            elif pickletools.markobject in op.stack_before:
                depth = max(depth - 1, 0)
            elif name == "PROTO" and isinstance(arg, int) and arg > pickle.HIGHEST_PROTOCOL:
                raise _bad(f"unsupported pickle protocol {arg}")
    except CheckpointError:
        raise
    except ValueError as e:  # unknown opcode, short argument, no STOP, an int literal too long
        msg = str(e)
        code = "truncated" if ("not enough data" in msg or "exhausted" in msg) else "not_a_checkpoint"
        raise CheckpointError(f"the file's pickle is malformed: {msg}", code=code, param="file") from None
    except (OverflowError, MemoryError, UnicodeDecodeError) as e:
        raise _bad(f"the file's pickle is malformed ({type(e).__name__})") from None
    return extra, end


# ----------------------------------------------------------------------------------------------------
# the unpickler


_SCALARS = (str, bytes, int, float, bool, complex, type(None))
_COLLIDABLE_TYPES = (float, complex)


class SafeUnpickler(pickle._Unpickler):
    """Unpickler that resolves globals by the policy above and storages through :class:`TorchZipFile`.

    Built on the pure-Python unpickler so that every container operation can be checked: APPEND(S)
    only on lists, SETITEM(S) only on dicts, dict keys and set items of bounded count and of types
    whose hashes an attacker cannot pile up (beyond a small counted budget), NEWOBJ only on inert
    placeholders, REDUCE only with a tuple of arguments.
    """

    dispatch: dict[int, Any] = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined,misc]
    # attributes of the pure-Python unpickler (not in the typeshed stubs)
    stack: list[Any]
    append: Any
    pop_mark: Any

    def __init__(
        self, data: bytes, source: TorchZipFile | LegacyTorchFile | None, limits: ParseLimits | None = None
    ) -> None:
        super().__init__(io.BytesIO(data), encoding="utf-8")  # as torch.load decodes py2 strings
        self.source = source
        self.limits = limits or (source.limits if source is not None else ParseLimits())
        self.unknown_globals: list[str] = []
        self.extensions: set[str] = set()  # what torch's weights_only reader would refuse
        self._placeholders: dict[str, type] = {}
        self._collidable = 0
        self._allocated = 0
        self._builtins = {
            name: _SafeCallable(getattr(self, f"_b_{name}"), f"builtins.{name}") for name in _SAFE_BUILTINS
        }
        self._ordered_dict = _SafeCallable(self._ordered_dict_fn, "collections.OrderedDict")

    # -- globals and persistent ids -----------------------------------------------------------------

    def find_class(self, module: str, name: str) -> Any:
        qual = f"{module}.{name}"
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafePickle(repr(qual)[:200])
        if is_unsafe_global(module, name):
            raise UnsafePickle(qual[:200])
        if (module, name) not in _TORCH_GLOBALS:
            self.extensions.add(qual[:200])
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module in ("builtins", "__builtin__") and name in _SAFE_BUILTINS:
            return self._builtins[name]
        if (module, name) == ("collections", "OrderedDict"):
            return self._ordered_dict
        if module.split(".")[0] == "torch" and name.endswith("Storage"):
            raise CheckpointError(f"unsupported storage type {qual[:200]}", code="bad_dtype", param="file")
        cls = self._placeholders.get(qual)
        if cls is None:
            cls = type(
                name.replace(".", "_")[:100] or "Unknown", (Placeholder,), {"__mt_global__": qual[:200]}
            )
            self._placeholders[qual] = cls
            if len(self.unknown_globals) < self.limits.max_unknown_globals:
                self.unknown_globals.append(qual[:200])
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if self.source is None:
            raise _bad("the pickle refers to storages outside a torch archive")
        return self.source.persistent(pid)

    # -- budgets ------------------------------------------------------------------------------------

    def _charge(self, nbytes: int) -> None:
        self._allocated += nbytes
        if self._allocated > self.limits.max_alloc_bytes:
            raise _too_large("the pickle builds more data than the limit allows")

    def _check_len(self, n: int) -> None:
        if n > self.limits.max_container_items:
            raise _too_large(
                f"a container in the pickle has more than {self.limits.max_container_items} items"
            )

    def _check_key(self, key: Any) -> None:
        """Dict keys and set items: str/bytes hashes are randomised per process; small ints hash to
        themselves; objects of ours hash by identity. Keys whose hash the file chooses (big ints,
        floats, complex, flat tuples of scalars) are counted against a per-file budget so that a
        dict of colliding keys costs at most budget^2 probes; anything else is refused."""
        t = type(key)
        if t is str or t is bytes or t is bool or key is None:
            return
        if t is int and -_HASH_MODULUS < key < _HASH_MODULUS:
            return
        if (
            t is int
            or t in _COLLIDABLE_TYPES
            or (t is tuple and len(key) <= 16 and all(type(x) in _SCALARS for x in key))
        ):
            self._collidable += 1
            if self._collidable > self.limits.max_collidable_keys:
                raise _too_large(
                    "the pickle has too many dict keys of chosen hash (big ints, floats, tuples)"
                )
            return
        if isinstance(
            key, LazyTensor | Placeholder | StorageRef | DType | StorageType | _SafeCallable | type
        ):
            return
        raise _bad(f"the pickle uses a {t.__name__} as a dict key or set item")

    def _checked_items(self, items: Any) -> list:
        """The items of an iterable argument to dict()/set()/list()..., bounded, one level only."""
        if not isinstance(items, list | tuple | dict | set | frozenset | str | bytes | bytearray):
            raise _bad(f"unsupported argument of type {type(items).__name__} in the pickle")
        self._check_len(len(items))
        self._charge(8 * len(items))
        return list(items)

    # -- argument-checked builtins ------------------------------------------------------------------

    def _b_str(self, *args: Any) -> str:
        if not args:
            return ""
        if len(args) > 3 or not isinstance(args[0], str | bytes | bytearray):
            raise _bad("str() in the pickle takes only str or bytes arguments")
        _check_codec(args[1:])
        self._charge(4 * len(args[0]) + 3)
        try:
            return str(*args)
        except (TypeError, ValueError) as e:
            raise _bad(f"bad str() call in the pickle: {e}") from None

    def _b_bytes(self, *args: Any) -> bytes:
        if args and _is_int(args[0]) and not 0 <= args[0] <= self.limits.max_alloc_bytes:
            raise _too_large("the pickle asks for a huge buffer")
        if len(args) > 3:
            raise _bad("unsupported bytes() call in the pickle")
        if args and isinstance(args[0], list | tuple):
            self._check_len(len(args[0]))
            if not all(_is_int(v) for v in args[0]):
                raise _bad("bytes() in the pickle takes only a list of ints")
        elif args and not isinstance(args[0], int | str | bytes | bytearray):
            raise _bad("unsupported bytes() argument in the pickle")
        _check_codec(args[1:])
        if args:
            self._charge(args[0] if _is_int(args[0]) else len(args[0]))
        try:
            return bytes(*args)
        except (TypeError, ValueError, LookupError) as e:
            raise _bad(f"bad bytes() call in the pickle: {e}") from None

    def _b_bytearray(self, *args: Any) -> bytearray:
        return bytearray(self._b_bytes(*args))

    def _scalar_args(self, what: str, args: tuple) -> None:
        if len(args) > 2 or not all(type(a) in _SCALARS for a in args):
            raise _bad(f"{what}() in the pickle takes only scalar arguments")

    def _b_int(self, *args: Any) -> int:
        self._scalar_args("int", args)
        return int(*args)

    def _b_float(self, *args: Any) -> float:
        self._scalar_args("float", args)
        return float(*args)

    def _b_complex(self, *args: Any) -> complex:
        self._scalar_args("complex", args)
        return complex(*args)

    def _b_bool(self, *args: Any) -> bool:
        self._scalar_args("bool", args)
        return bool(*args)

    def _b_slice(self, *args: Any) -> slice:
        if len(args) > 3 or not all(type(a) in (int, type(None)) for a in args):
            raise _bad("slice() in the pickle takes only ints or None")
        return slice(*args)

    def _b_list(self, *args: Any) -> list:
        return self._checked_items(args[0]) if args else []

    def _b_tuple(self, *args: Any) -> tuple:
        return tuple(self._checked_items(args[0])) if args else ()

    def _b_set(self, *args: Any) -> set:
        items = self._checked_items(args[0]) if args else []
        for k in items:
            self._check_key(k)
        return set(items)

    def _b_frozenset(self, *args: Any) -> frozenset:
        return frozenset(self._b_set(*args))

    def _pairs(self, arg: Any) -> list[tuple[Any, Any]]:
        if isinstance(arg, dict):
            return list(arg.items())  # keys checked when that dict was built
        pairs = []
        for p in self._checked_items(arg):
            if not isinstance(p, list | tuple) or len(p) != 2:
                raise _bad("a dict in the pickle is built from something that is not a list of pairs")
            self._check_key(p[0])
            pairs.append((p[0], p[1]))
        return pairs

    def _mapping_args(self, args: tuple, kwargs: dict) -> list[tuple[Any, Any]]:
        if len(args) > 1:
            raise _bad("a dict in the pickle is built with too many arguments")
        pairs = self._pairs(args[0]) if args else []
        self._check_len(len(pairs) + len(kwargs))
        return pairs + list(kwargs.items())

    def _b_dict(self, *args: Any, **kwargs: Any) -> dict:
        return dict(self._mapping_args(args, kwargs))

    def _ordered_dict_fn(self, *args: Any, **kwargs: Any) -> OrderedDict:
        """collections.OrderedDict(pairs): pairs given as 2-tuples or 2-lists, as Python accepts."""
        return OrderedDict(self._mapping_args(args, kwargs))

    # -- container opcodes --------------------------------------------------------------------------

    def _set_items(self, target: Any, items: list) -> None:
        if isinstance(target, Placeholder):
            return
        if type(target) not in (dict, OrderedDict):
            raise _bad(f"the pickle sets items on a {type(target).__name__}")
        self._check_len(len(target) + len(items) // 2)
        for i in range(0, len(items) - 1, 2):
            self._check_key(items[i])
            target[items[i]] = items[i + 1]

    def _load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def _load_setitems(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise _bad("SETITEMS with an odd number of items")
        self._set_items(self.stack[-1], items)

    def _load_dict(self) -> None:
        items = self.pop_mark()
        if len(items) % 2:
            raise _bad("DICT with an odd number of items")
        d: dict = {}
        self._set_items(d, items)
        self.append(d)

    def _append_items(self, target: Any, items: list) -> None:
        if isinstance(target, Placeholder):
            return
        if type(target) is not list:
            raise _bad(f"the pickle appends to a {type(target).__name__}")
        self._check_len(len(target) + len(items))
        target.extend(items)

    def _load_append(self) -> None:
        value = self.stack.pop()
        self._append_items(self.stack[-1], [value])

    def _load_appends(self) -> None:
        items = self.pop_mark()
        self._append_items(self.stack[-1], items)

    def _load_list(self) -> None:
        items = self.pop_mark()
        self._check_len(len(items))
        self.append(items)

    def _load_tuple(self) -> None:
        items = self.pop_mark()
        self._check_len(len(items))
        self.append(tuple(items))

    def _load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is not set:
            raise _bad(f"the pickle adds items to a {type(target).__name__}")
        self._check_len(len(target) + len(items))
        for k in items:
            self._check_key(k)
        target.update(items)

    def _load_frozenset(self) -> None:
        items = self.pop_mark()
        self._check_len(len(items))
        for k in items:
            self._check_key(k)
        self.append(frozenset(items))

    # -- object opcodes -----------------------------------------------------------------------------

    def _load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(args, tuple):
            raise _bad("REDUCE with arguments that are not a tuple")
        if not (isinstance(func, _SafeCallable) or _is_placeholder(func)):
            raise _bad(f"the pickle calls a {type(func).__name__}")
        self.stack[-1] = func(*args)

    def _load_newobj(self) -> None:
        self.stack.pop()  # args
        cls = self.stack.pop()
        self.append(self._new_placeholder(cls))

    def _load_newobj_ex(self) -> None:
        self.stack.pop()  # kwargs
        self.stack.pop()  # args
        cls = self.stack.pop()
        self.append(self._new_placeholder(cls))

    def _new_placeholder(self, cls: Any) -> Placeholder:
        if isinstance(cls, type) and issubclass(cls, Placeholder):
            return cls()
        raise _bad("the pickle creates an object (NEWOBJ) of a type that is not an inert placeholder")

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST / OBJ (protocols 0 and 1)
        if not (isinstance(klass, _SafeCallable) or _is_placeholder(klass)):
            raise _bad(f"the pickle instantiates a {type(klass).__name__}")
        self.append(klass(*args))

    def _load_build(self) -> None:
        self.stack.pop()  # state
        inst = self.stack[-1]
        if type(inst) is OrderedDict or isinstance(inst, Placeholder):
            return  # absorbed: attributes of an OrderedDict (as torch), inert objects (ours)
        # torch refuses BUILD on everything else but tensors, where it re-points the tensor (legacy
        # ``set_``): refused here rather than read with another meaning
        raise _bad(f"the pickle sets the state of a {type(inst).__name__}")

    for _op, _fn in {
        pickle.SETITEM: _load_setitem,
        pickle.SETITEMS: _load_setitems,
        pickle.DICT: _load_dict,
        pickle.APPEND: _load_append,
        pickle.APPENDS: _load_appends,
        pickle.LIST: _load_list,
        pickle.TUPLE: _load_tuple,
        pickle.ADDITEMS: _load_additems,
        pickle.FROZENSET: _load_frozenset,
        pickle.REDUCE: _load_reduce,
        pickle.NEWOBJ: _load_newobj,
        pickle.NEWOBJ_EX: _load_newobj_ex,
        pickle.BUILD: _load_build,
    }.items():
        dispatch[_op[0]] = _fn
    del _op, _fn


_TEXT_CODECS = frozenset({"latin1", "latin-1", "utf-8", "utf8", "ascii"})
_CODEC_ERRORS = frozenset({"strict", "replace", "ignore"})


def _check_codec(args: tuple) -> None:
    """(encoding[, errors]) of str()/bytes(): plain text codecs only (a codec name imports a module)."""
    if (args and args[0] not in _TEXT_CODECS) or (len(args) > 1 and args[1] not in _CODEC_ERRORS):
        raise _bad("str()/bytes() in the pickle with an unsupported encoding")


def _is_placeholder(obj: Any) -> bool:
    return isinstance(obj, Placeholder) or (isinstance(obj, type) and issubclass(obj, Placeholder))


# ----------------------------------------------------------------------------------------------------
# the archive


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
        self._infos: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0] or "\x00" in name:
                raise _bad(
                    f"archive member {name!r} escapes the archive (path traversal); not a torch checkpoint"
                )
            if name in self._infos:
                raise _bad(f"archive member {name!r} appears twice; refusing an ambiguous archive")
            self._infos[name] = info
        pkls = [n for n in self._infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise _bad("zip file without a single <archive>/data.pkl: not a torch checkpoint")
        self.prefix = pkls[0][: -len("data.pkl")]
        for info in infos:  # torch requires every member in the folder of the first one, UTF-8 names
            if not info.filename.startswith(self.prefix):
                raise _bad(f"archive member {info.filename!r} is outside the folder of data.pkl")
            if not info.flag_bits & 0x800:
                try:
                    info.orig_filename.encode("cp437").decode("utf-8")
                except UnicodeError:
                    raise _bad("an archive member's name is not UTF-8") from None
        if self._infos[pkls[0]].file_size > self.limits.max_pickle_bytes:
            raise _too_large(f"archive member {pkls[0]!r} is too large")
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
        bo = self._infos.get(self.prefix + "byteorder")
        if bo is not None:
            value = self._read_member(bo, 16)
            if value not in (b"little", b"big"):  # exactly, as torch compares it
                raise _bad(f"unknown byteorder {value!r}")
            self.byteorder = value.decode()

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
        return self._read_member(self._infos[self.prefix + "data.pkl"], self.limits.max_pickle_bytes)

    def check_version(self) -> None:
        """The format version record, read as torch reads it (a decimal number from 1 to 10)."""
        info = self._infos.get(self.prefix + ".data/version") or self._infos.get(self.prefix + "version")
        if info is None:
            raise _bad("the archive has no version record; not a torch checkpoint")
        match = re.match(rb"\s*(\d{1,6})", self._read_member(info, 64))
        if match is None or not 1 <= int(match.group(1)) <= 10:
            raise _bad("the archive's format version is not one torch reads")
        for record in (".format_version", ".data/serialization_id"):  # read by torch, unused here
            if (self.prefix + record) in self._infos:
                self._read_member(self._infos[self.prefix + record], 1 << 10)
        align = self._infos.get(self.prefix + ".storage_alignment")
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
        info = self._infos.get(f"{self.prefix}data/{key}")
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
        info = self._infos[f"{self.prefix}data/{ref.key}"]
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
