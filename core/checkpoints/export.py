"""Write what users take away: recovered prompts (or a head) in safe, portable files.

- ``prompts.safetensors``: tensor ``ctx``; header metadata ``mergetune`` = JSON of the provenance
  (method, n_ctx, class names, backbone, weights hash, parent sha256, hyperparameters), plus a few flat
  str keys (``format``, ``method``, ``n_ctx``, ``ctx_dim``) for tools that do not parse JSON.
- ``prompts.pth.tar``: Dassl layout ``{"state_dict": {"ctx", "token_prefix", "token_suffix"}, "epoch",
  "optimizer": None, "scheduler": None, "val_result": None, "mergetune": {...}}``, only tensors and plain
  types, so CoOp's ``load_model`` and ``torch.load(weights_only=True)`` read it.
- ``prompts-coop.tar``: the same file where CoOp's ``load_model(directory, epoch)`` looks for it,
  ``prompt_learner/model.pth.tar-<epoch>``, plus Dassl's ``prompt_learner/checkpoint`` pointer and
  ``mergetune.json`` (the metadata): ``tar xf prompts-coop.tar -C <dir>`` then CoOp's
  ``--model-dir <dir> --load-epoch <epoch> --eval-only``.

The metadata records the class-token position, the protocol and the classes the contexts cover
(``context_classes``: one CSC row per class, in order); CoOp's files carry none of these.
- ``head.safetensors``: ``weight`` [C, D] (+ ``bias`` [C]) for linear-head jobs.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file

logger = logging.getLogger(__name__)


def _tensor(x: Any, name: str) -> torch.Tensor:
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or numpy array")
    return t.detach().to("cpu").contiguous().clone()


def _header_metadata(metadata: dict[str, Any], extra: dict[str, str]) -> dict[str, str]:
    meta = {"format": "pt", "mergetune": json.dumps(metadata, sort_keys=True, default=str)}
    meta.update(extra)
    return meta


def _atomic_torch_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_save_file(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def export_prompts(
    out_dir: str | os.PathLike,
    ctx: torch.Tensor | np.ndarray,
    *,
    token_prefix: torch.Tensor | np.ndarray | None,
    token_suffix: torch.Tensor | np.ndarray | None,
    metadata: dict[str, Any],
    epoch: int,
) -> dict[str, Path]:
    """Write ``prompts.safetensors`` and ``prompts.pth.tar`` into ``out_dir``; return {name: path}.

    ``ctx`` is written bit for bit (dtype kept, float32 in practice). ``metadata`` must be
    JSON-serialisable (non-JSON values are stringified). ``token_prefix``/``token_suffix`` (from
    ``PromptLearner.dassl_buffers()``) go into the Dassl file only; CoOp's loader deletes them anyway but
    expects the keys. ``epoch`` is stored as a plain int.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx_t = _tensor(ctx, "ctx")
    if ctx_t.dim() not in (2, 3):
        raise ValueError(f"ctx must be [M, D] or [C, M, D], got {list(ctx_t.shape)}")
    meta = dict(metadata)
    meta.setdefault("n_ctx", int(ctx_t.shape[-2]))
    meta.setdefault("ctx_dim", int(ctx_t.shape[-1]))
    meta.setdefault("csc", ctx_t.dim() == 3)
    flat = {
        "method": str(meta.get("method", "coop")),
        "n_ctx": str(int(ctx_t.shape[-2])),
        "ctx_dim": str(int(ctx_t.shape[-1])),
    }
    for key in ("class_token_position", "protocol"):
        if meta.get(key) is not None:
            flat[key] = str(meta[key])
    paths = {
        "prompts.safetensors": out / "prompts.safetensors",
        "prompts.pth.tar": out / "prompts.pth.tar",
        COOP_ARCHIVE: out / COOP_ARCHIVE,
    }
    _atomic_save_file({"ctx": ctx_t}, paths["prompts.safetensors"], _header_metadata(meta, flat))
    state_dict: dict[str, torch.Tensor] = {"ctx": ctx_t}
    if token_prefix is not None:
        state_dict["token_prefix"] = _tensor(token_prefix, "token_prefix")
    if token_suffix is not None:
        state_dict["token_suffix"] = _tensor(token_suffix, "token_suffix")
    plain_meta = json.loads(json.dumps(meta, default=str))  # plain types only: weights_only loads it
    dassl = {
        "state_dict": state_dict,
        "epoch": int(epoch),
        "optimizer": None,
        "scheduler": None,
        "val_result": None,
        "mergetune": plain_meta,
    }
    _atomic_torch_save(dassl, paths["prompts.pth.tar"])
    _write_coop_archive(paths[COOP_ARCHIVE], paths["prompts.pth.tar"], int(epoch), plain_meta)
    logger.info("exported prompts (ctx %s) to %s", list(ctx_t.shape), out)
    return paths


#: The download CoOp's loader finds once unpacked: ``prompt_learner/model.pth.tar-<epoch>``.
COOP_ARCHIVE = "prompts-coop.tar"


def coop_member(epoch: int) -> str:
    """Where CoOp's ``load_model(directory, epoch)`` reads the prompt learner (Dassl's file name)."""
    return f"prompt_learner/model.pth.tar-{int(epoch)}"


def _write_coop_archive(path: Path, dassl_file: Path, epoch: int, meta: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")

    def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), 0o644, 0
        tar.addfile(info, io.BytesIO(data))

    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tar.gettarinfo(str(dassl_file), arcname=coop_member(epoch))
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        with open(dassl_file, "rb") as f:
            tar.addfile(info, f)
        # Dassl's resume_from_checkpoint reads the latest file name from this pointer
        add_bytes(tar, "prompt_learner/checkpoint", f"model.pth.tar-{int(epoch)}\n".encode())
        add_bytes(tar, "mergetune.json", json.dumps(meta, indent=2, sort_keys=True).encode())
    os.replace(tmp, path)


def export_head(
    out_dir: str | os.PathLike,
    weight: torch.Tensor | np.ndarray,
    bias: torch.Tensor | np.ndarray | None = None,
    *,
    metadata: dict[str, Any],
) -> dict[str, Path]:
    """Write ``head.safetensors`` (``weight`` [C, D], optional ``bias`` [C]) with provenance metadata."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    w = _tensor(weight, "weight")
    if w.dim() != 2:
        raise ValueError(f"head weight must be [C, D], got {list(w.shape)}")
    tensors = {"weight": w}
    if bias is not None:
        tensors["bias"] = _tensor(bias, "bias")
    meta = dict(metadata)
    meta.setdefault("method", "linear_head")
    flat = {"method": "linear_head", "n_cls": str(int(w.shape[0])), "dim": str(int(w.shape[1]))}
    path = out / "head.safetensors"
    _atomic_save_file(tensors, path, _header_metadata(meta, flat))
    return {"head.safetensors": path}


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``mergetune`` JSON metadata of an exported safetensors file ({} when absent)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="np") as f:
        meta = f.metadata() or {}
    try:
        return json.loads(meta.get("mergetune", "{}"))
    except json.JSONDecodeError:
        return {}


# ----------------------------------------------------------------------------------------------------
# MMA adapters (ALGORITHM.md section 6c)

#: The download MMA's loader finds once unpacked: ``adapter_learner/model.pth.tar-<epoch>``.
MMA_ARCHIVE = "adapters-mma.tar"


def mma_member(epoch: int) -> str:
    """Where MMA's ``load_model(directory, epoch)`` reads the adapters (Dassl's file name)."""
    return f"adapter_learner/model.pth.tar-{int(epoch)}"


def _mma_state_dict(adapters: dict[str, Any], buffers: tuple[Any, Any] | None) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    if buffers is not None:  # MMA's AdapterLearner registers them first; its loader drops them
        state["token_embedding"] = _tensor(buffers[0], "token_embedding")
        state["tokenized_prompts"] = _tensor(buffers[1], "tokenized_prompts")
    for k, v in adapters.items():
        state[k] = _tensor(v, k).float()
    return state


def write_mma_dassl(
    out_dir: str | os.PathLike,
    adapters: dict[str, Any],
    *,
    epoch: int,
    buffers: tuple[Any, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """``<out_dir>/adapter_learner/model.pth.tar-<epoch>``: Dassl's ``{state_dict, epoch, optimizer,
    scheduler, val_result}`` with MMA's keys (plain types only: ``torch.load(weights_only=True)`` and
    MMA's ``load_model`` read it). Returns the path."""
    path = Path(out_dir) / mma_member(epoch)
    path.parent.mkdir(parents=True, exist_ok=True)
    dassl: dict[str, Any] = {
        "state_dict": _mma_state_dict(adapters, buffers),
        "epoch": int(epoch),
        "optimizer": None,
        "scheduler": None,
        "val_result": None,
    }
    if metadata is not None:
        dassl["mergetune"] = json.loads(json.dumps(metadata, default=str))
    _atomic_torch_save(dassl, path)
    return path


def export_mma(
    out_dir: str | os.PathLike,
    adapters: dict[str, Any],
    *,
    metadata: dict[str, Any],
    epoch: int,
    buffers: tuple[Any, Any] | None = None,
) -> dict[str, Path]:
    """Write ``adapters.safetensors`` (MMA's keys; ``mergetune`` JSON header with the layout) and
    ``adapters-mma.tar`` (``adapter_learner/model.pth.tar-<epoch>`` + Dassl's ``checkpoint`` pointer +
    ``mergetune.json``: ``tar xf adapters-mma.tar -C <dir>``, then MMA's ``--model-dir <dir>
    --load-epoch <epoch> --eval-only``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(metadata)
    meta.setdefault("method", "mma")
    tensors = {k: _tensor(v, k).float() for k, v in adapters.items()}
    flat = {"method": "mma"}
    layout = meta.get("layout")
    if isinstance(layout, dict):
        flat.update({f"mma_{k}": str(v) for k, v in layout.items()})
    paths = {"adapters.safetensors": out / "adapters.safetensors", MMA_ARCHIVE: out / MMA_ARCHIVE}
    _atomic_save_file(tensors, paths["adapters.safetensors"], _header_metadata(meta, flat))
    plain_meta = json.loads(json.dumps(meta, default=str))
    staging = out / ".mma-dassl"
    dassl_file = write_mma_dassl(staging, adapters, epoch=epoch, buffers=buffers, metadata=plain_meta)
    tmp = paths[MMA_ARCHIVE].with_name(MMA_ARCHIVE + ".tmp")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tar.gettarinfo(str(dassl_file), arcname=mma_member(epoch))
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        with open(dassl_file, "rb") as f:
            tar.addfile(info, f)
        for name, data in (
            ("adapter_learner/checkpoint", f"model.pth.tar-{int(epoch)}\n".encode()),
            ("mergetune.json", json.dumps(plain_meta, indent=2, sort_keys=True).encode()),
        ):
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode, ti.mtime = len(data), 0o644, 0
            tar.addfile(ti, io.BytesIO(data))
    os.replace(tmp, paths[MMA_ARCHIVE])
    dassl_file.unlink()
    for d in (dassl_file.parent, staging):
        d.rmdir()
    logger.info("exported MMA adapters (%d tensors) to %s", len(tensors), out)
    return paths
