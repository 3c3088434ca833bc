"""Read ``torch.save`` files without torch and without running any of their code.

A ``torch.save`` file (zip format, torch >= 1.6) is a zip archive ``<prefix>/data.pkl`` (the pickle),
``<prefix>/data/<key>`` (raw storage bytes, one entry per storage) and ``<prefix>/byteorder``. The
pickle names tensor rebuild functions and storage types as globals and refers to storages through
persistent ids. Dassl checkpoints also pickle a scheduler *object* of a class the service does not
have, so ``torch.load(weights_only=True)`` refuses them while ``weights_only=False`` would run
whatever the file says.

:class:`SafeUnpickler` resolves globals through three tiers:

1. an allowlist of real callables: our own numpy tensor-rebuild functions standing in for
   ``torch._utils._rebuild_tensor_v2`` and friends, storage/dtype markers, ``OrderedDict`` and plain
   builtin containers;
2. a denylist of names able to run code (``os``, ``subprocess``, ``builtins.eval``, ``importlib``...):
   the whole file is rejected as ``unsafe_pickle`` even though nothing would be called;
3. everything else becomes an inert placeholder class that records its name; instantiating, calling,
   ``BUILD``/``__setstate__`` on it are absorbed without effect.

Tensors are returned as :class:`LazyTensor` (zip entry + view geometry); their bytes are read only when
:meth:`LazyTensor.numpy` is called, so the 150 MB ``token_suffix`` of an ImageNet CoOp file is never
materialised. Declared storage sizes are checked against the actual zip entry and a cap before
anything is allocated.

No torch import here: the API process validates uploads with this module.
"""

from __future__ import annotations

import io
import logging
import math
import pickle
import struct
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.errors import CheckpointError

logger = logging.getLogger(__name__)

DEFAULT_MAX_TENSOR_BYTES = 1 << 30  # 1 GiB per storage
MAX_PICKLE_BYTES = 16 << 20  # data.pkl of a state dict is small (no tensor data inside); bounds memory
MAX_ZIP_MEMBERS = 100_000
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

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
    "UntypedStorage": "uint8",
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


# ----------------------------------------------------------------------------------------------------
# lazy storages and tensors


@dataclass(frozen=True, slots=True)
class StorageRef:
    """A storage in the archive, not read yet (validated against the archive when created)."""

    source: TorchZipFile
    key: str
    dtype: DType
    numel: int

    def __setstate__(self, state: Any) -> None:  # BUILD from a hostile pickle: absorbed
        return None


@dataclass(eq=False)  # identity hash: tensors are dict keys in pickled optimizer states
class LazyTensor:
    """A tensor view (offset, size, stride) on a storage; bytes are read by :meth:`numpy`."""

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
        base = self.storage.source.read_storage(self.storage)
        if self.numel:  # re-check the view against the bytes actually read (never trust earlier checks)
            extent = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True)) + 1
            if extent > base.size:
                raise CheckpointError(
                    "a tensor reads past the end of its storage", code="not_a_checkpoint", param="file"
                )
        if self.numel == 0:
            out = np.zeros(self.shape, dtype=base.dtype)
        else:
            view = np.lib.stride_tricks.as_strided(
                base[self.offset :],
                shape=self.shape,
                strides=tuple(s * base.itemsize for s in self.stride),
                writeable=False,
            )
            out = np.ascontiguousarray(view)
        if out.base is not None:  # own the memory (not a view on the whole storage)
            out = out.copy()
        self._array = out
        return out

    @classmethod
    def from_array(cls, arr: np.ndarray, dtype: DType) -> LazyTensor:
        strides = tuple(s // max(arr.itemsize, 1) for s in arr.strides)
        return cls(None, 0, tuple(arr.shape), strides, dtype, arr)


def _check_view(storage: StorageRef, offset: Any, size: Any, stride: Any) -> tuple[int, tuple, tuple]:
    if not isinstance(offset, int) or offset < 0:
        raise CheckpointError("a tensor has an invalid storage offset", code="not_a_checkpoint", param="file")
    if not isinstance(size, tuple | list) or not isinstance(stride, tuple | list) or len(size) != len(stride):
        raise CheckpointError(
            "a tensor has an invalid shape or stride", code="not_a_checkpoint", param="file"
        )
    if not all(isinstance(v, int) and v >= 0 for v in (*size, *stride)) or len(size) > 16:
        raise CheckpointError(
            "a tensor has an invalid shape or stride", code="not_a_checkpoint", param="file"
        )
    size, stride = tuple(size), tuple(stride)
    if math.prod(size) > 0:
        extent = offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True)) + 1
        if extent > storage.numel:
            raise CheckpointError(
                f"a tensor of shape {list(size)} reads past the end of its storage "
                f"({extent} > {storage.numel} elements)",
                code="not_a_checkpoint",
                param="file",
            )
    return offset, size, stride


# Rebuild functions: what the allowlisted torch._utils names resolve to.


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, *_: Any) -> LazyTensor:
    if not isinstance(storage, StorageRef):
        raise CheckpointError(
            "a tensor refers to something that is not a storage", code="not_a_checkpoint", param="file"
        )
    offset, size, stride = _check_view(storage, storage_offset, size, stride)
    return LazyTensor(storage, offset, size, stride, storage.dtype)


def _rebuild_tensor_v2(
    storage: Any, storage_offset: Any, size: Any, stride: Any, *_rest: Any, **_kw: Any
) -> LazyTensor:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(
    storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
    backward_hooks: Any = None, dtype: Any = None, *_rest: Any, **_kw: Any,
) -> LazyTensor:  # fmt: skip
    if isinstance(storage, StorageRef) and isinstance(dtype, DType) and storage.dtype.name == "uint8":
        # untyped storage reinterpreted with the given dtype
        if storage.numel % dtype.itemsize:
            raise CheckpointError(
                "storage size is not a multiple of the dtype", code="not_a_checkpoint", param="file"
            )
        storage = StorageRef(storage.source, storage.key, dtype, storage.numel // dtype.itemsize)
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data: Any, *_rest: Any, **_kw: Any) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None, *_: Any) -> Any:
    """torch._tensor._rebuild_from_type_v2: a tensor (subclass) with Python state; state is dropped."""
    if not isinstance(func, _SafeCallable) or not isinstance(args, tuple):
        raise CheckpointError(
            "a tensor has an unsupported rebuild function", code="not_a_checkpoint", param="file"
        )
    return func(*args)


def _inert_ordered_dict(*args: Any, **_kw: Any) -> OrderedDict:
    """collections.OrderedDict; only a list of pairs or nothing is accepted as argument."""
    if args and isinstance(args[0], list | tuple):
        return OrderedDict(p for p in args[0] if isinstance(p, tuple) and len(p) == 2)
    return OrderedDict()


_MAX_BYTES_ARG = 1 << 20


def _safe_bytes(*args: Any) -> bytes:
    """builtins.bytes / bytearray, without the ``bytes(10**12)`` allocation."""
    if args and isinstance(args[0], int) and not 0 <= args[0] <= _MAX_BYTES_ARG:
        raise CheckpointError("the pickle asks for a huge buffer", code="too_large", param="file")
    if args and not isinstance(args[0], int | str | bytes | bytearray | list | tuple):
        raise CheckpointError(
            "unsupported bytes() argument in the pickle", code="not_a_checkpoint", param="file"
        )
    return bytes(*args)


def _safe_bytearray(*args: Any) -> bytearray:
    return bytearray(_safe_bytes(*args))


def _safe_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """_codecs.encode as protocol-2 pickles of bytes use it: str -> bytes with a text encoding only."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise CheckpointError(
            "unsupported _codecs.encode call in the pickle", code="not_a_checkpoint", param="file"
        )
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


_SAFE_BUILTINS = {
    "dict": dict,
    "list": list,
    "tuple": tuple,
    "set": set,
    "frozenset": frozenset,
    "slice": slice,
    "int": int,
    "float": float,
    "complex": complex,
    "bool": bool,
    "str": str,
    "bytes": bytes,
    "bytearray": bytearray,
}

_ALLOWED: dict[tuple[str, str], Any] = {
    (m, n): _SafeCallable(f, f"{m}.{n}")
    for (m, n), f in {
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
        ("collections", "OrderedDict"): _inert_ordered_dict,
        ("collections", "defaultdict"): _inert_defaultdict,
        ("_codecs", "encode"): _safe_encode,
        ("codecs", "encode"): _safe_encode,
        ("builtins", "bytes"): _safe_bytes,
        ("builtins", "bytearray"): _safe_bytearray,
        ("__builtin__", "bytes"): _safe_bytes,
        ("__builtin__", "bytearray"): _safe_bytearray,
    }.items()
}
for _name, _dt in _STORAGE_TYPES.items():
    _ALLOWED[("torch", _name)] = _DTYPES[_dt]
for _name, _dt in _DTYPE_ALIASES.items():
    _ALLOWED[("torch", _name)] = _DTYPES[_dt]
for _name, _obj in _SAFE_BUILTINS.items():
    _ALLOWED.setdefault(("builtins", _name), _obj)
    _ALLOWED.setdefault(("__builtin__", _name), _obj)

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
_SAFE_EXCEPTIONS = frozenset({("types", "SimpleNamespace"), ("_codecs", "encode"), ("codecs", "encode")})
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


class SafeUnpickler(pickle.Unpickler):
    """Unpickler that resolves globals by the policy above and storages through :class:`TorchZipFile`."""

    def __init__(self, data: bytes, source: TorchZipFile | None) -> None:
        super().__init__(io.BytesIO(data), encoding="latin1")
        self.source = source
        self.unknown_globals: list[str] = []
        self._placeholders: dict[str, type] = {}

    def find_class(self, module: str, name: str) -> Any:
        qual = f"{module}.{name}"
        if not isinstance(module, str) or not isinstance(name, str):
            raise UnsafePickle(repr(qual))
        if is_unsafe_global(module, name):
            raise UnsafePickle(qual)
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module.split(".")[0] == "torch" and name.endswith("Storage"):
            raise CheckpointError(f"unsupported storage type {qual}", code="bad_dtype", param="file")
        cls = self._placeholders.get(qual)
        if cls is None:
            cls = type(name.replace(".", "_") or "Unknown", (Placeholder,), {"__mt_global__": qual})
            self._placeholders[qual] = cls
            self.unknown_globals.append(qual)
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if self.source is None:
            raise CheckpointError(
                "the pickle refers to storages outside a torch archive", code="not_a_checkpoint", param="file"
            )
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] != "storage":
            raise CheckpointError(
                "the pickle has an unknown persistent id", code="not_a_checkpoint", param="file"
            )
        _, dtype, key, _location, numel = pid[:5]
        if (
            not isinstance(dtype, DType)
            or not isinstance(key, str)
            or not isinstance(numel, int)
            or numel < 0
        ):
            raise CheckpointError(
                "the pickle has a malformed storage reference", code="not_a_checkpoint", param="file"
            )
        return self.source.storage_ref(key, dtype, numel)


# ----------------------------------------------------------------------------------------------------
# the archive


class TorchZipFile:
    """A zip-format ``torch.save`` file opened for reading (validated member names, lazy storages)."""

    def __init__(self, path: str, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> None:
        self.path = path
        self.max_tensor_bytes = max_tensor_bytes
        try:
            self._zip = zipfile.ZipFile(path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, struct.error) as e:
            raise CheckpointError(f"not a readable torch archive: {e}", code="truncated", param="file") from e
        if len(infos) > MAX_ZIP_MEMBERS:
            raise CheckpointError("the archive has too many members", code="too_large", param="file")
        self._infos: dict[str, zipfile.ZipInfo] = {}
        for info in infos:
            name = info.filename
            parts = name.replace("\\", "/").split("/")
            if name.startswith(("/", "\\")) or ".." in parts or ":" in parts[0] or "\x00" in name:
                raise CheckpointError(
                    f"archive member {name!r} escapes the archive (path traversal); not a torch checkpoint",
                    code="not_a_checkpoint",
                    param="file",
                )
            self._infos[name] = info
        pkls = [n for n in self._infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise CheckpointError(
                "zip file without a single <archive>/data.pkl: not a torch checkpoint",
                code="not_a_checkpoint",
                param="file",
            )
        self.prefix = pkls[0][: -len("data.pkl")]
        self.byteorder = "little"
        bo = self._infos.get(self.prefix + "byteorder")
        if bo is not None:
            value = self._read_member(bo, 16).decode("ascii", "replace").strip()
            if value not in ("little", "big"):
                raise CheckpointError(f"unknown byteorder {value!r}", code="not_a_checkpoint", param="file")
            self.byteorder = value
        self._cache: dict[str, np.ndarray] = {}

    def close(self) -> None:
        self._zip.close()

    def __enter__(self) -> TorchZipFile:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _read_member(self, info: zipfile.ZipInfo, limit: int) -> bytes:
        if info.file_size > limit:
            raise CheckpointError(
                f"archive member {info.filename!r} is too large", code="too_large", param="file"
            )
        try:
            with self._zip.open(info) as f:
                data = f.read(limit + 1)
        except (zipfile.BadZipFile, EOFError, OSError, ValueError, NotImplementedError, RuntimeError) as e:
            raise CheckpointError(
                f"archive member {info.filename!r} is unreadable: {e}", code="truncated", param="file"
            ) from e
        if len(data) > limit:
            raise CheckpointError(
                f"archive member {info.filename!r} is too large", code="too_large", param="file"
            )
        if len(data) != info.file_size:
            raise CheckpointError(
                f"archive member {info.filename!r} is truncated", code="truncated", param="file"
            )
        return data

    def pickle_bytes(self) -> bytes:
        return self._read_member(self._infos[self.prefix + "data.pkl"], MAX_PICKLE_BYTES)

    def storage_ref(self, key: str, dtype: DType, numel: int) -> StorageRef:
        if "/" in key or "\\" in key or key in ("", ".", ".."):
            raise CheckpointError(f"invalid storage key {key!r}", code="not_a_checkpoint", param="file")
        nbytes = numel * dtype.itemsize
        if nbytes > self.max_tensor_bytes:
            raise CheckpointError(
                f"a tensor declares {nbytes} bytes, more than the limit of {self.max_tensor_bytes}",
                code="too_large",
                param="file",
            )
        info = self._infos.get(f"{self.prefix}data/{key}")
        if info is None:
            raise CheckpointError(
                f"storage {key!r} is missing from the archive", code="truncated", param="file"
            )
        if info.file_size < nbytes:
            raise CheckpointError(
                f"storage {key!r} declares {nbytes} bytes but the archive holds {info.file_size}",
                code="truncated",
                param="file",
            )
        return StorageRef(self, key, dtype, numel)

    def read_storage(self, ref: StorageRef) -> np.ndarray:
        cache_key = f"{ref.key}:{ref.dtype.name}"
        arr = self._cache.get(cache_key)
        if arr is None:
            info = self._infos[f"{self.prefix}data/{ref.key}"]
            nbytes = ref.numel * ref.dtype.itemsize
            raw = self._read_member(info, max(info.file_size, 0))[:nbytes]
            arr = decode_bytes(raw, ref.dtype, self.byteorder)
            self._cache[cache_key] = arr
        return arr


@dataclass
class LoadedPickle:
    obj: Any
    unknown_globals: list[str]
    archive: TorchZipFile | None


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


def unpickle(data: bytes, source: TorchZipFile | None) -> tuple[Any, list[str]]:
    """Run :class:`SafeUnpickler` on ``data``; map every failure to a CheckpointError."""
    up = SafeUnpickler(data, source)
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
        raise CheckpointError(
            "the pickle is nested too deeply", code="not_a_checkpoint", param="file"
        ) from None
    except (EOFError, pickle.UnpicklingError) as e:
        code = "truncated" if isinstance(e, EOFError) or "truncated" in str(e) else "not_a_checkpoint"
        raise CheckpointError(f"the file's pickle is malformed: {e}", code=code, param="file") from None
    except MemoryError:
        raise CheckpointError("the pickle is too large", code="too_large", param="file") from None
    except Exception as e:  # noqa: BLE001 - any other failure inside a hostile pickle is a bad file
        raise CheckpointError(
            f"the file's pickle is malformed ({type(e).__name__}: {e})", code="not_a_checkpoint", param="file"
        ) from None
    return obj, up.unknown_globals


def load_torch_file(path: str, *, max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES) -> LoadedPickle:
    """Load a ``torch.save`` file safely. Tensors come back as :class:`LazyTensor`.

    The archive stays open (``result.archive``) so that tensors can be materialised; close it when done.
    """
    kind = sniff(path)
    if kind == "legacy_torch":
        raise CheckpointError(
            "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save the checkpoint with "
            "torch >= 1.6 (torch.save(torch.load(f), f2))",
            code="not_a_checkpoint",
            param="file",
        )
    if kind == "pickle":
        # a bare pickle: still scan it (an unsafe one is reported as such), but it holds no tensors
        with open(path, "rb") as f:
            data = f.read(MAX_PICKLE_BYTES + 1)
        if len(data) > MAX_PICKLE_BYTES:
            raise CheckpointError("the pickle is too large", code="too_large", param="file")
        unpickle(data, None)
        raise CheckpointError(
            "a bare pickle is not a torch checkpoint (expected a zip-format torch.save file)",
            code="not_a_checkpoint",
            param="file",
        )
    if kind != "zip":
        raise CheckpointError(
            "not a torch checkpoint (unknown file format)", code="not_a_checkpoint", param="file"
        )
    archive = TorchZipFile(path, max_tensor_bytes=max_tensor_bytes)
    try:
        obj, unknown = unpickle(archive.pickle_bytes(), archive)
    except BaseException:
        archive.close()
        raise
    return LoadedPickle(obj, unknown, archive)
