"""Validate and read the fine-tuned checkpoints users bring (ALGORITHM.md section 6).

Accepted: Dassl ``.pth.tar`` (``{state_dict, epoch, optimizer, scheduler}``, any epoch or
``model-best``), a bare state dict (``.pth`` / ``.pt``; keys possibly prefixed ``prompt_learner.`` or
``module.``) and ``.safetensors``. Pickled files are read by :mod:`mergetune.core.checkpoints.safe_pickle`, never by
``torch.load``. Only the tensors needed are materialised (``ctx``, a head); ``token_prefix`` /
``token_suffix`` are never read, only their shapes give C and M.

No torch import: the API process validates uploads with this module.
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mergetune.core.checkpoints.mma_layout import BUFFER_KEYS, layout_from_shapes, looks_like_mma
from mergetune.core.checkpoints.safe_pickle import (
    DEFAULT_MAX_TENSOR_BYTES,
    SAFETENSORS_DTYPES,
    LazyTensor,
    ParseLimits,
    Placeholder,
    decode_bytes,
    dtype_by_name,
    load_torch_file,
    sniff,
)
from mergetune.core.config import Method
from mergetune.core.errors import CheckpointError

logger = logging.getLogger(__name__)

MAX_SAFETENSORS_HEADER = 16 << 20
MAX_STATE_DICT_ENTRIES = 1 << 20  # entries visited when flattening nested state dicts
_KEY_PREFIXES = ("module.", "model.", "prompt_learner.")
_HEAD_PREFIXES = ("", "head.", "classifier.", "fc.")


@dataclass
class IngestedCheckpoint:
    format: str  # "dassl" | "state_dict" | "safetensors"
    method: Method
    ctx: np.ndarray | None  # float32 [M, D] or [C, M, D]; None for linear heads
    n_ctx: int | None
    ctx_dim: int  # D (the ctx width, or the head's input width)
    csc: bool
    n_cls: int | None
    epoch: int | None
    head_weight: np.ndarray | None = None  # float32 [C, D]
    head_bias: np.ndarray | None = None  # float32 [C]
    unknown_globals: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)  # "mergetune" JSON of our own exports
    keys: list[str] = field(default_factory=list)
    #: MMA only: float32 adapter tensors under MMA's keys, and their layout (mergetune.core.checkpoints.mma_layout.AdapterLayout JSON)
    adapters: dict[str, np.ndarray] | None = None
    mma_layout: dict[str, int] | None = None

    def summary(self) -> dict[str, Any]:
        """Plain-JSON description for the API / manifest."""
        return {
            "format": self.format,
            "method": self.method.value,
            "n_ctx": self.n_ctx,
            "ctx_dim": self.ctx_dim,
            "csc": self.csc,
            "n_cls": self.n_cls,
            "epoch": self.epoch,
            "unknown_globals": list(self.unknown_globals),
            **({"mma_layout": dict(self.mma_layout)} if self.mma_layout else {}),
        }


#: What the metadata of one checkpoint may hold once expanded: nodes, and characters of its strings
#: (every reference counts: a pickle can share one long string thousands of times through its memo).
METADATA_MAX_NODES = 10_000
METADATA_MAX_CHARS = 64 * 1024


def _bounded_plain(value: Any, budget: list[int], depth: int = 0) -> bool:
    """True when ``value`` is plain JSON data of at most ``budget[0]`` nodes, ``budget[1]`` characters
    of strings (keys included) and depth 32, counted as json.dumps would write it: a pickle can share
    one list or string many times (a DAG), which json.dumps would render in full each time."""
    budget[0] -= 1
    if budget[0] < 0 or depth > 32:
        return False
    if value is None or isinstance(value, bool | float):
        return True
    if isinstance(value, int):
        return abs(value) < 1 << 63
    if isinstance(value, str):
        budget[1] -= len(value)
        return budget[1] >= 0
    if isinstance(value, list | tuple):
        return all(_bounded_plain(v, budget, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(
            isinstance(k, str | int | float | bool)
            and _bounded_plain(str(k) if not isinstance(k, str) else k, budget, depth + 1)
            and _bounded_plain(v, budget, depth + 1)
            for k, v in value.items()
        )
    return False


def _plain_metadata(value: dict[Any, Any]) -> dict[str, Any]:
    """JSON-safe copy of a pickled metadata dict (what our exports write); anything else is dropped."""
    if not _bounded_plain(value, [METADATA_MAX_NODES, METADATA_MAX_CHARS]):
        return {}
    try:
        parsed = json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return {}
    return parsed if isinstance(parsed, dict) else {}


def _err(message: str, code: str) -> CheckpointError:
    return CheckpointError(message, code=code, param="file")


# ----------------------------------------------------------------------------------------------------
# safetensors (parsed directly: lazy, bounded, bfloat16 supported)


def _read_safetensors(path: str, max_tensor_bytes: int) -> tuple[dict[str, LazyTensor], dict[str, str]]:
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _err("the safetensors file is truncated", "truncated")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_SAFETENSORS_HEADER:
            raise _err("the safetensors header is too large", "too_large")
        if 8 + n > size:
            raise _err("the safetensors file is truncated (header)", "truncated")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise _err(f"the safetensors header is not valid JSON: {e}", "not_a_checkpoint") from None
        if not isinstance(header, dict):
            raise _err("the safetensors header is not an object", "not_a_checkpoint")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict):
            raise _err("the safetensors metadata is not an object", "not_a_checkpoint")
        data_start = 8 + n
        out: dict[str, LazyTensor] = {}
        for name, info in header.items():
            if not isinstance(info, dict):
                raise _err(f"bad safetensors entry {name!r}", "not_a_checkpoint")
            tag, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
            if tag not in SAFETENSORS_DTYPES:
                raise _err(f"tensor {name!r} has unsupported dtype {tag!r}", "bad_dtype")
            if (
                not isinstance(shape, list)
                or not all(isinstance(v, int) and v >= 0 for v in shape)
                or not isinstance(offsets, list)
                or len(offsets) != 2
                or not all(isinstance(v, int) and v >= 0 for v in offsets)
            ):
                raise _err(f"bad safetensors entry {name!r}", "not_a_checkpoint")
            dt = dtype_by_name(SAFETENSORS_DTYPES[tag])
            nbytes = math.prod(shape) * dt.itemsize
            if nbytes > max_tensor_bytes:
                raise _err(f"tensor {name!r} declares {nbytes} bytes, over the limit", "too_large")
            begin, end = offsets
            if end - begin != nbytes:
                raise _err(f"tensor {name!r}: offsets do not match its shape", "not_a_checkpoint")
            if data_start + end > size:
                raise _err(f"the safetensors file is truncated (tensor {name!r})", "truncated")
            out[name] = _SafetensorsTensor(path, data_start + begin, tuple(shape), dt)
        return out, {str(k): str(v) for k, v in meta.items()}


class _SafetensorsTensor(LazyTensor):
    def __init__(self, path: str, start: int, shape: tuple[int, ...], dt: Any) -> None:
        super().__init__(None, 0, shape, (), dt, None)
        self._path, self._start = path, start

    def numpy(self) -> np.ndarray:
        if self._array is None:
            with open(self._path, "rb") as f:
                f.seek(self._start)
                raw = f.read(self.nbytes)
            if len(raw) != self.nbytes:
                raise _err("the safetensors file is truncated", "truncated")
            self._array = decode_bytes(raw, self.dtype).reshape(self.shape).copy()
        return self._array


# ----------------------------------------------------------------------------------------------------
# structure


def _flatten_state_dict(obj: Any) -> dict[str, LazyTensor]:
    """Tensors of a state dict (one level; nested dicts are flattened with '.')."""
    out: dict[str, LazyTensor] = {}
    visited = 0

    def walk(d: dict, prefix: str, depth: int) -> None:
        nonlocal visited
        for k, v in d.items():
            visited += 1  # a pickle can share one dict many times (a DAG): bound the walk, not the tree
            if visited > MAX_STATE_DICT_ENTRIES:
                raise _err("the state dict has too many entries", "too_large")
            if not isinstance(k, str) or len(prefix) + len(k) > 1024:  # state dict keys are short
                continue
            if isinstance(v, LazyTensor):
                out[prefix + k] = v
            elif isinstance(v, Placeholder):  # an object we did not build may hold the real tensors
                raise _err(
                    f"the state dict's entry {prefix + k!r} is a {v.__mt_global__} object, which is not "
                    "read; refusing rather than reading the tensors beside it",
                    "not_a_checkpoint",
                )
            elif isinstance(v, dict) and depth < 4:
                walk(v, prefix + k + ".", depth + 1)

    walk(obj, "", 0)
    return out


def _dict_layout(obj: dict) -> tuple[str, int | None, dict[str, LazyTensor], dict[str, Any]]:
    """(format, epoch, tensors, our metadata) of a loaded dict: a Dassl checkpoint or a state dict."""
    if "state_dict" in obj and not isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
        raise _err(
            f"the file's state_dict is a {getattr(sd, '__mt_global__', type(sd).__name__)}, not a dict; "
            "refusing rather than reading the tensors beside it",
            "not_a_checkpoint",
        )
    if "state_dict" in obj:
        meta = _plain_metadata(obj["mergetune"]) if isinstance(obj.get("mergetune"), dict) else {}
        return "dassl", _int_or_none(obj.get("epoch")), _flatten_state_dict(obj["state_dict"]), meta
    return "state_dict", _int_or_none(obj.get("epoch")), _flatten_state_dict(obj), {}


def _strip(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _KEY_PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p) :], True
    return key


def _find(tensors: dict[str, LazyTensor], name: str) -> LazyTensor | None:
    if name in tensors:
        return tensors[name]
    hits = [v for k, v in tensors.items() if _strip(k) == name]
    return hits[0] if len(hits) == 1 else None


def _float32(t: LazyTensor, what: str) -> np.ndarray:
    if not t.dtype.is_floating:
        raise _err(f"{what} has dtype {t.dtype.name}; a floating-point tensor is required", "bad_dtype")
    arr = t.numpy()
    arr = arr.astype(np.float32, copy=False) if arr.dtype != np.float32 else arr
    if not np.isfinite(arr).all():
        raise _err(f"{what} contains NaN or Inf values", "non_finite")
    return np.ascontiguousarray(arr)


def _int_or_none(v: Any) -> int | None:
    return v if isinstance(v, int) and not isinstance(v, bool) else None


def ingest_checkpoint(
    path: str | os.PathLike,
    *,
    filename: str | None = None,
    method: Method | None = None,
    expected_dim: int | None = None,
    n_cls: int | None = None,
    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES,
    limits: ParseLimits | None = None,
) -> IngestedCheckpoint:
    """Read and validate a fine-tuned checkpoint without executing anything in it.

    ``filename`` (the user's original name) only helps choose the format; the content decides.
    ``method`` forces the interpretation; otherwise it is detected from keys and shapes.
    ``expected_dim`` is the backbone's ctx width (or embed width for heads), ``n_cls`` the dataset's
    number of classes (checked for CSC contexts and heads). Raises CheckpointError(param="file").
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _err("the checkpoint file does not exist", "not_a_checkpoint")
    if os.path.getsize(path) == 0:
        raise _err("the checkpoint file is empty", "truncated")
    method = Method(method) if method is not None else None
    kind = sniff(path)
    name = (filename or os.path.basename(path)).lower()
    epoch: int | None = None
    unknown: list[str] = []
    meta: dict[str, Any] = {}
    archive = None
    if name.endswith(".safetensors") and kind not in ("safetensors", "zip"):
        raise _err("the file is named .safetensors but is not a safetensors file", "not_a_checkpoint")
    if kind == "safetensors":
        tensors, raw_meta = _read_safetensors(path, limits.max_tensor_bytes if limits else max_tensor_bytes)
        fmt = "safetensors"
        if "mergetune" in raw_meta:
            try:
                parsed = json.loads(raw_meta["mergetune"])
                meta = _plain_metadata(parsed) if isinstance(parsed, dict) else {}
            except (ValueError, RecursionError):
                meta = {}
    else:
        loaded = load_torch_file(path, limits=limits or ParseLimits(max_tensor_bytes=max_tensor_bytes))
        archive, unknown = loaded.archive, loaded.unknown_globals
        obj = loaded.obj
        if isinstance(obj, Placeholder) or not isinstance(obj, dict):
            if archive is not None:
                archive.close()
            raise _err(
                f"the file holds a {type(obj).__name__}, not a state dict or a Dassl checkpoint",
                "not_a_checkpoint",
            )
        try:
            fmt, epoch, tensors, meta = _dict_layout(obj)
        except BaseException:
            if archive is not None:
                archive.close()
            raise
    try:
        result = _interpret(tensors, fmt, method, meta, expected_dim, n_cls)
    finally:
        if archive is not None:
            archive.close()
    result.epoch = epoch
    result.unknown_globals = unknown
    result.metadata = meta
    result.keys = sorted(tensors)
    if unknown:
        logger.info("checkpoint %s: tolerated unknown globals %s", name, unknown)
    return result


def _interpret(
    tensors: dict[str, LazyTensor],
    fmt: str,
    method: Method | None,
    meta: dict[str, Any],
    expected_dim: int | None,
    n_cls: int | None,
) -> IngestedCheckpoint:
    if not tensors:
        raise _err("the file holds no tensors", "missing_ctx")
    if method is None and isinstance(meta.get("method"), str):
        try:
            method = Method(meta["method"])
        except ValueError:
            method = None
    if method is None and looks_like_mma([_strip_mma(k) for k in tensors]):
        method = Method.mma
    if method == Method.mma:
        return _interpret_mma(tensors, fmt, expected_dim)
    ctx_t = _find(tensors, "ctx")
    head = None
    for p in _HEAD_PREFIXES:
        w = _find(tensors, p + "weight") if p else tensors.get("weight")
        if w is not None and len(w.shape) == 2:
            b = _find(tensors, p + "bias") if p else tensors.get("bias")
            head = (p, w, b)
            break
    if method is None:
        if ctx_t is not None:
            method = Method.kgcoop if _find(tensors, "bias_vectors") is not None else Method.coop
        elif head is not None:
            method = Method.linear_head
        else:
            raise _err(
                f"no 'ctx' tensor (keys: {sorted(tensors)[:10]}); expected a CoOp/KgCoOp prompt or a "
                "linear head (weight, head.weight, classifier.weight, fc.weight)",
                "missing_ctx",
            )
    if method == Method.linear_head:
        return _interpret_head(head, fmt, expected_dim, n_cls, tensors)
    if ctx_t is None:
        raise _err(f"no 'ctx' tensor in the checkpoint (keys: {sorted(tensors)[:10]})", "missing_ctx")
    if len(ctx_t.shape) not in (2, 3):
        raise _err(f"ctx has shape {list(ctx_t.shape)}; expected [M, D] or [C, M, D] (CSC)", "bad_rank")
    if min(ctx_t.shape) == 0:
        raise _err(f"ctx has an empty shape {list(ctx_t.shape)}", "bad_rank")
    csc = len(ctx_t.shape) == 3
    dim = ctx_t.shape[-1]
    n_ctx = ctx_t.shape[-2]
    if expected_dim is not None and dim != expected_dim:
        raise _err(
            f"ctx width {dim} does not match the backbone's text width {expected_dim}", "width_mismatch"
        )
    # C from the (untrusted) token buffers' shapes, for information only
    file_cls: int | None = ctx_t.shape[0] if csc else None
    prefix = _find(tensors, "token_prefix")
    if file_cls is None and prefix is not None and len(prefix.shape) == 3:
        file_cls = prefix.shape[0]
    if csc and n_cls is not None and ctx_t.shape[0] != n_cls:
        raise _err(
            f"class-specific ctx has {ctx_t.shape[0]} classes but the dataset has {n_cls}", "class_mismatch"
        )
    ctx = _float32(ctx_t, "ctx")
    if method == Method.kgcoop:
        bv = _find(tensors, "bias_vectors")
        if bv is not None and not bv.dtype.is_floating:
            raise _err("bias_vectors has a non-float dtype", "bad_dtype")
    return IngestedCheckpoint(
        format=fmt,
        method=method,
        ctx=ctx,
        n_ctx=n_ctx,
        ctx_dim=dim,
        csc=csc,
        n_cls=file_cls,
        epoch=None,
    )


def _strip_mma(key: str) -> str:
    key = _strip(key)
    return key[len("adapter_learner.") :] if key.startswith("adapter_learner.") else key


def _interpret_mma(tensors: dict[str, LazyTensor], fmt: str, expected_dim: int | None) -> IngestedCheckpoint:
    """MMA's ``adapter_learner`` state dict (ALGORITHM.md section 6c): the adapters are read, the
    class-dependent buffers only give the class count."""
    named = {_strip_mma(k): v for k, v in tensors.items()}
    adapters = {k: v for k, v in named.items() if looks_like_mma([k])}
    try:
        layout = layout_from_shapes({k: v.shape for k, v in adapters.items()})
    except ValueError as exc:
        raise _err(f"not a usable MMA checkpoint: {exc}", "bad_rank") from None
    if expected_dim is not None and layout.text_width != expected_dim:
        raise _err(
            f"MMA text adapters are {layout.text_width} wide; the backbone's text width is {expected_dim}",
            "width_mismatch",
        )
    arrays = {k: _float32(v, k) for k, v in adapters.items()}
    emb = named.get(BUFFER_KEYS[0])
    n_cls = emb.shape[0] if emb is not None and len(emb.shape) == 3 else None
    return IngestedCheckpoint(
        format=fmt,
        method=Method.mma,
        ctx=None,
        n_ctx=None,
        ctx_dim=layout.text_width,
        csc=False,
        n_cls=n_cls,
        epoch=None,
        adapters=arrays,
        mma_layout=layout.to_json(),
    )


def _interpret_head(
    head: tuple[str, LazyTensor, LazyTensor | None] | None,
    fmt: str,
    expected_dim: int | None,
    n_cls: int | None,
    tensors: dict[str, LazyTensor],
) -> IngestedCheckpoint:
    if head is None:
        w = tensors.get("weight") or _find(tensors, "head.weight")
        if w is not None:
            raise _err(f"head weight has shape {list(w.shape)}; expected [C, D]", "bad_rank")
        raise _err(
            f"no linear head (weight / head.weight / classifier.weight / fc.weight) among {sorted(tensors)[:10]}",
            "missing_ctx",
        )
    _, w_t, b_t = head
    c, d = w_t.shape
    if c == 0 or d == 0:
        raise _err(f"head weight has an empty shape {[c, d]}", "bad_rank")
    if expected_dim is not None and d != expected_dim:
        raise _err(
            f"head input width {d} does not match the backbone's embed width {expected_dim}", "width_mismatch"
        )
    if n_cls is not None and c != n_cls:
        raise _err(f"head has {c} classes but the dataset has {n_cls}", "class_mismatch")
    if b_t is not None and tuple(b_t.shape) != (c,):
        raise _err(f"head bias has shape {list(b_t.shape)}; expected [{c}]", "bad_rank")
    weight = _float32(w_t, "head weight")
    bias = _float32(b_t, "head bias") if b_t is not None else None
    return IngestedCheckpoint(
        format=fmt,
        method=Method.linear_head,
        ctx=None,
        n_ctx=None,
        ctx_dim=d,
        csc=False,
        n_cls=c,
        epoch=None,
        head_weight=weight,
        head_bias=bias,
    )
