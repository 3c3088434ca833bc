"""torch's rebuild semantics without torch: dtypes, storages, lazy tensors and the rebuild stand-ins.

A pickled tensor is a call to one of torch's rebuild functions (``torch._utils._rebuild_tensor_v2``
and friends) with a storage reference, an offset, a size and a stride. This module holds what those
globals resolve to: :class:`DType` and :class:`StorageType` markers, :class:`StorageRef` (a storage
not read yet), :class:`LazyTensor` (a checked view on it, read on demand) and the ``_rebuild_*``
functions that check every view against its storage and the limits before anything is read. The
stand-ins are handed to a pickle wrapped in :class:`_SafeCallable`.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from mergetune.core.checkpoints.safe_pickle.limits import _bad, _is_int, _too_large
from mergetune.core.errors import CheckpointError

if TYPE_CHECKING:
    from mergetune.core.checkpoints.safe_pickle.containers import LegacyTorchFile
    from mergetune.core.checkpoints.safe_pickle.zip_archive import TorchZipFile


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


def _unsupported(message: str) -> CheckpointError:
    return CheckpointError(message, code="unsupported_torch_object", param="file")


def _is_empty_state(value: Any) -> bool:
    """False for what torch's ``if state:`` would apply: only values certain to be falsy pass."""
    if value is None or value is False:
        return True
    if type(value) in (int, float) and value == 0:
        return True
    return type(value) in (dict, OrderedDict, Counter, list, str, bytes, set) and len(value) == 0


def _check_no_state(state: Any) -> None:
    """torch applies a tensor's Python state with ``setattr`` (torch._utils._set_obj_state): a state
    ``{"data": B}`` replaces the tensor's values, others its grad or flags. We do not model that: a
    tensor with any state to apply is refused, one with empty state reads as torch reads it."""
    parts = state if isinstance(state, tuple) else (state,)
    if isinstance(state, tuple) and len(state) != 2:
        raise _bad("a tensor's serialized state is malformed")
    if not all(_is_empty_state(p) for p in parts):
        raise _unsupported(
            "a tensor carries Python attributes that torch sets on it when loading (they may replace "
            "its values); refusing rather than reading it differently"
        )


def _rebuild_parameter_with_state(data: Any, requires_grad: Any, backward_hooks: Any, state: Any) -> Any:
    tensor = _rebuild_parameter(data, requires_grad, backward_hooks)
    _check_no_state(state)
    return tensor


def _parameter(data: Any = None, requires_grad: Any = True) -> Any:
    """torch.nn.Parameter(data, requires_grad), called (REDUCE) or created (NEWOBJ): the same tensor."""
    if data is None:
        raise _unsupported("a torch.nn.Parameter without data; refusing rather than reading it differently")
    if not isinstance(data, LazyTensor):
        raise _bad("a parameter wraps something that is not a tensor")
    _check_requires_grad(requires_grad, data.dtype)
    return data


def _tensor_class(*_args: Any) -> Any:
    """torch.Tensor called as a constructor (a new tensor from a list, or one re-pointed by set_)."""
    raise _unsupported(
        "the file builds a tensor with torch.Tensor(...); refusing rather than reading it differently"
    )


_TENSOR_TYPES = ("torch.Tensor", "torch.nn.parameter.Parameter")


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> Any:
    """torch._tensor._rebuild_from_type_v2: ``func(*args)`` as ``new_type`` (Tensor or Parameter: same
    values), then its Python state set on it, which we refuse unless it is empty."""
    if not isinstance(func, _SafeCallable) or not isinstance(args, tuple):
        raise _bad("a tensor has an unsupported rebuild function")
    if not (isinstance(new_type, _SafeCallable) and new_type._name in _TENSOR_TYPES):
        raise _unsupported("a tensor is rebuilt as a type other than Tensor or Parameter")
    tensor = func(*args)
    if not isinstance(tensor, LazyTensor):
        raise _unsupported("a tensor's rebuild function returns something that is not a tensor")
    _check_no_state(state)
    return tensor


# ----------------------------------------------------------------------------------------------------
# the wrapper every allowlisted callable is handed out in


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
