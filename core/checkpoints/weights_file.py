"""Backbone weights files users upload (``POST /v1/weights``), checked without torch and without reading a
tensor's bytes: a safetensors file, or a ``torch.save`` state dict read by the safe unpickler
(:mod:`mergetune.core.checkpoints.safe_pickle`), whose every entry is a tensor.

:func:`scan_weights` runs in the sandboxed parse child (:mod:`mergetune.core.checkpoints.sandbox`, task
``weights``); :func:`scan_weights_sandboxed` is what the API calls. The answer is a summary: the format,
how many tensors and parameters, their dtypes, and when the keys are CLIP's (OpenAI's or open_clip's
layout) the widths a job's architecture is compared with (:func:`architecture_problem`).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

from mergetune.core.checkpoints.safe_pickle import (
    LazyTensor,
    ParseLimits,
    Placeholder,
    load_torch_file,
    sniff,
)
from mergetune.core.errors import CheckpointError

#: Tensors one weights file may hold (a ViT-bigG has about 1,000).
MAX_TENSORS = 50_000
#: Keys every state dict in CLIP's layout has (mergetune.core.model.backbone.CLIP_LAYOUT_KEYS).
CLIP_KEYS = ("positional_embedding", "text_projection", "token_embedding.weight", "ln_final.weight")
#: Integers OpenAI's state dicts carry beside the parameters.
OPENAI_EXTRA_KEYS = ("input_resolution", "context_length", "vocab_size")
#: Formats of an accepted file: the suffix it keeps in the store and in a worker's input cache.
SUFFIXES = {"safetensors": ".safetensors", "state_dict": ".pt"}


def _bad(message: str) -> CheckpointError:
    return CheckpointError(
        f"not a weights file open_clip can load ({message}); upload a safetensors file or a torch "
        "state dict of tensors",
        code="not_weights",
        param="file",
    )


def _tensors_of(obj: Any) -> dict[str, LazyTensor]:
    """The entries of a (possibly ``{"state_dict": ...}``-wrapped) state dict; every one a tensor."""
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if isinstance(obj, Placeholder) or not isinstance(obj, dict):
        raise _bad(f"the file holds a {getattr(obj, '__mt_global__', type(obj).__name__)}, not a state dict")
    out: dict[str, LazyTensor] = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not key or len(key) > 1024:
            raise _bad("a state dict key is not a short string")
        if not isinstance(value, LazyTensor):
            what = getattr(value, "__mt_global__", type(value).__name__)
            raise _bad(f"entry {key[:120]!r} is a {what}, not a tensor")
        out[key] = value
        if len(out) > MAX_TENSORS:
            raise CheckpointError(
                f"the file holds more than {MAX_TENSORS} tensors", code="too_large", param="file"
            )
    if all(k.startswith("module.") for k in out):
        out = {k[len("module.") :]: v for k, v in out.items()}
    return out


def summarize(tensors: dict[str, LazyTensor], fmt: str) -> dict[str, Any]:
    """What a job's check needs to know of the file (JSON)."""
    if not tensors:
        raise _bad("the file holds no tensors")
    dtypes = Counter(t.dtype.name for t in tensors.values())
    summary: dict[str, Any] = {
        "format": fmt,
        "tensors": len(tensors),
        "parameters": sum(t.numel for t in tensors.values()),
        "dtypes": dict(sorted(dtypes.items())),
        "layout": "other",
    }
    if all(k in tensors for k in CLIP_KEYS) and any(k.startswith("visual.") for k in tensors):
        emb, pos, proj = (
            tensors["token_embedding.weight"],
            tensors["positional_embedding"],
            tensors["text_projection"],
        )
        summary["layout"] = "openai" if any(k in tensors for k in OPENAI_EXTRA_KEYS) else "clip"
        if len(emb.shape) == 2:
            summary["vocab_size"], summary["text_width"] = int(emb.shape[0]), int(emb.shape[1])
        if len(pos.shape) == 2:
            summary["context_length"] = int(pos.shape[0])
        if len(proj.shape) == 2:
            summary["embed_dim"] = int(proj.shape[1])
    return summary


def scan_weights(path: str | os.PathLike[str], limits: ParseLimits) -> dict[str, Any]:
    """The summary of the weights file at ``path`` (no tensor's bytes are read), or CheckpointError."""
    from mergetune.core.checkpoints.ingest import _read_safetensors

    path = os.fspath(path)
    kind = sniff(path)
    try:
        if kind == "safetensors":
            tensors, _ = _read_safetensors(path, limits.max_tensor_bytes)
            return summarize(tensors, "safetensors")
        if kind not in ("zip", "legacy_torch", "pickle"):
            raise _bad("the file is neither safetensors nor a torch.save file")
        loaded = load_torch_file(path, limits=limits)
    except CheckpointError as exc:
        if exc.code in ("too_large", "not_weights", "unsafe_pickle"):
            raise
        hint = " (torch.jit.load(f).state_dict() gives its weights)" if "TorchScript" in exc.message else ""
        raise _bad(exc.message + hint) from None
    try:
        return summarize(_tensors_of(loaded.obj), "state_dict")
    finally:
        if loaded.archive is not None:
            loaded.archive.close()


def scan_weights_sandboxed(
    path: str | os.PathLike[str],
    *,
    limits: Any,
    tmp_dir: str | os.PathLike[str] | None = None,
    run: Any = None,
) -> dict[str, Any]:
    """:func:`scan_weights` in a limited child process (``limits``: a SandboxLimits)."""
    from dataclasses import asdict

    from mergetune.core.checkpoints.sandbox import SandboxRun, _run_request

    run = run if run is not None else SandboxRun()
    work = Path(tempfile.mkdtemp(prefix="weights-", dir=os.fspath(tmp_dir) if tmp_dir else None))
    try:
        request = {
            "task": "weights",
            "path": os.path.abspath(os.fspath(path)),
            "out": str(work),
            "memory_bytes": limits.memory_bytes,
            "cpu_seconds": limits.cpu_seconds,
            "parse": asdict(limits.parse),
        }
        result = _run_request(work, request, limits, True, run, "reading the weights file")
        summary = result["ok"]
        if not isinstance(summary, dict) or summary.get("format") not in SUFFIXES:
            raise _bad("the reader returned no summary")
        return summary
    finally:
        shutil.rmtree(work, ignore_errors=True)


def architecture_problem(summary: dict[str, Any], model: str, text_width: int | None) -> str | None:
    """Why weights with ``summary`` cannot be ``model`` (whose text width is ``text_width``), when the
    file's keys tell (CLIP's layout); None when they fit or the file cannot tell."""
    width = summary.get("text_width")
    if text_width is None or not isinstance(width, int) or summary.get("layout") not in ("clip", "openai"):
        return None
    if width != text_width:
        return (
            f"the weights' text tower is {width} wide (token_embedding.weight) but {model!r} has a "
            f"{text_width}-wide one; name the architecture the file holds"
        )
    return None
