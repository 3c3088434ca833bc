"""The global policy: which names a pickle may call, which reject the file, and what the rest become.

Three tiers, checked in :meth:`SafeUnpickler.find_class
<mergetune.core.checkpoints.safe_pickle.machine.SafeUnpickler.find_class>`: the denylist
(:func:`is_unsafe_global`: names able to run code, checked first; naming one rejects the file as
:class:`UnsafePickle`), the allowlist (``_ALLOWED``: torch's rebuild functions and dtype/storage
markers as our stand-ins, argument-checked builtins), and inert :class:`Placeholder` classes for every
other name. Also what torch's own ``weights_only`` reader allows (globals and opcodes), so that a file
only we read can be told from one both read.
"""

from __future__ import annotations

import _compat_pickle
from typing import Any

from mergetune.core.checkpoints.safe_pickle.limits import _bad
from mergetune.core.checkpoints.safe_pickle.rebuild import (
    _DTYPE_ALIASES,
    _DTYPES,
    _STORAGE_TYPES,
    StorageType,
    _parameter,
    _rebuild_from_type_v2,
    _rebuild_parameter,
    _rebuild_parameter_with_state,
    _rebuild_tensor,
    _rebuild_tensor_v2,
    _rebuild_tensor_v3,
    _SafeCallable,
    _tensor_class,
)


def _safe_encode(obj: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    """_codecs.encode as protocol-2 pickles of bytes use it: str -> bytes with a text encoding only."""
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise _bad("unsupported _codecs.encode call in the pickle")
    return obj.encode(encoding, "strict")


def _inert_defaultdict(*_args: Any, **_kw: Any) -> dict:
    """collections.defaultdict (in optimizer states): a plain dict, the default factory is dropped."""
    return {}


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
# the classes torch allows, by their real names (a GLOBAL names torch.Tensor as ``torch.Tensor``)
TENSOR_CLASS = _ALLOWED[("torch", "Tensor")] = _SafeCallable(_tensor_class, "torch.Tensor")
PARAMETER_CLASS = _ALLOWED[("torch.nn.parameter", "Parameter")] = _SafeCallable(
    _parameter, "torch.nn.parameter.Parameter"
)
for _name, _dt in _STORAGE_TYPES.items():
    _ALLOWED[("torch", _name)] = StorageType(_DTYPES[_dt])
for _name, _dt in _DTYPE_ALIASES.items():
    _ALLOWED[("torch", _name)] = _DTYPES[_dt]
_ALLOWED[("torch.storage", "UntypedStorage")] = StorageType(_DTYPES["uint8"], untyped=True)  # raw bytes

# Every global torch's own weights_only reader allows (torch._weights_only_unpickler's
# _get_allowed_globals; tests/core/checkpoints/test_torch_differential.py holds this list equal to
# torch's). Each one is either mirrored here (same meaning: the names in _ALLOWED, the builtins, the
# OrderedDict/Counter/Parameter stand-ins of the unpickler) or refuses the file (TORCH_REFUSED): it is
# never an inert placeholder, which would read a file torch reads with another meaning.
TORCH_DTYPES = frozenset(
    {f"torch.{t}" for t in ("float32", "float64", "float16", "bfloat16", "complex32", "complex64",
       "complex128", "bcomplex32", "bool", "uint8", "int8", "int16", "int32", "int64", "uint16",
       "uint32", "uint64", "qint8", "qint32", "quint8", "quint4x2", "quint2x4", "bits1x8", "bits2x4",
       "bits4x2", "bits8", "bits16", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e5m2",
       "float8_e5m2fnuz", "float8_e8m0fnu", "float4_e2m1fn_x2")}
    | {f"torch.{k}int{n}" for k in ("", "u") for n in range(1, 8)}
)  # fmt: skip
_LEGACY_TYPES = ("Float", "Double", "Half", "BFloat16", "Long", "Int", "Short", "Char", "Byte", "Bool")
TORCH_WEIGHTS_ONLY_GLOBALS = frozenset(
    {"collections.OrderedDict", "collections.Counter", "torch.nn.parameter.Parameter",
     "torch.serialization._get_layout", "torch.Size", "torch.Tensor", "torch.device", "_codecs.encode",
     "builtins.bytearray", "builtins.set", "builtins.complex", "torch.storage.TypedStorage",
     "torch.storage.UntypedStorage", "torch._tensor._rebuild_from_type_v2"}
    | TORCH_DTYPES
    | {f"torch.{t}" for t in ("per_tensor_affine", "per_tensor_symmetric", "per_channel_affine",
       "per_channel_symmetric", "per_channel_affine_float_qparams")}
    | {f"{m}.{t}Tensor" for m in ("torch", "torch.cuda") for t in _LEGACY_TYPES}
    | {f"{m}.{t}Tensor" for m in ("torch.sparse", "torch.cuda.sparse") for t in _LEGACY_TYPES[:-1]}
    | {f"{m}.{t}Storage" for m in ("torch", "torch.cuda")
       for t in (*_LEGACY_TYPES, "ComplexFloat", "ComplexDouble")}
    | {f"torch.{q}Storage" for q in ("QInt32", "QInt8", "QUInt2x4", "QUInt4x2", "QUInt8")}
    | {f"torch._utils._rebuild_{f}" for f in ("tensor", "tensor_v2", "tensor_v3", "parameter",
       "parameter_with_state", "qtensor", "sparse_tensor", "meta_tensor_no_storage", "nested_tensor",
       "wrapper_subclass", "device_tensor_from_numpy", "device_tensor_from_cpu_tensor")}
)  # fmt: skip
# torch reads these, we do not give them its meaning: a file naming one is refused (code
# "unsupported_torch_object"), never read with a placeholder in their place. Storage types and dtypes
# we do not read are refused as "bad_dtype".
_MIRRORED_ELSEWHERE = frozenset(
    {
        "collections.OrderedDict",
        "collections.Counter",
        "builtins.bytearray",
        "builtins.set",
        "builtins.complex",
    }
)
TORCH_REFUSED = frozenset(
    n for n in TORCH_WEIGHTS_ONLY_GLOBALS
    if n not in _MIRRORED_ELSEWHERE and tuple(n.rsplit(".", 1)) not in _ALLOWED
)  # fmt: skip
# torch maps Python 2 names before its allowlist (torch._utils.IMPORT_MAPPING / NAME_MAPPING, a part
# of the standard library's _compat_pickle tables): ``UserDict.OrderedDict`` is collections.OrderedDict
TORCH_IMPORT_MAPPING = {
    m: _compat_pickle.IMPORT_MAPPING[m]
    for m in ("__builtin__", "copy_reg", "Queue", "repr", "_abcoll", "UserDict", "UserList", "UserString",
              "whichdb", "StringIO", "cStringIO")
}  # fmt: skip
TORCH_NAME_MAPPING = {
    k: v
    for k, v in _compat_pickle.NAME_MAPPING.items()
    if k[0] in ("__builtin__", "UserDict", "UserList", "UserString", "itertools", "exceptions")
}
TORCH_NAME_MAPPING.update({("exceptions", e): ("builtins", e) for e in _compat_pickle.PYTHON2_EXCEPTIONS})


def torch_global_name(module: str, name: str) -> tuple[str, str]:
    """``module.name`` as torch's weights_only reader resolves a GLOBAL (Python 2 names mapped)."""
    if (module, name) in TORCH_NAME_MAPPING:
        return TORCH_NAME_MAPPING[(module, name)]
    return TORCH_IMPORT_MAPPING.get(module, module), name


# What torch's own weights_only reader allows. A file that needs more than this (an unknown class,
# a builtin torch does not allow, an opcode torch does not read) is one torch refuses; we record such
# "extensions" so that callers and tests can tell a file both readers read from one only we read.
_TORCH_GLOBALS = frozenset(tuple(n.rsplit(".", 1)) for n in TORCH_WEIGHTS_ONLY_GLOBALS)
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
