"""Per-process LRU cache of loaded backbones (a ViT-B/16 takes seconds to build and ~600 MB of GPU
memory; consecutive jobs on the same worker usually share it)."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from typing import Any

logger = logging.getLogger(__name__)

MAX_BACKBONES = 2

_lock = threading.Lock()
_cache: OrderedDict[tuple[str, str, str], Any] = OrderedDict()


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible (``CUDA_VISIBLE_DEVICES`` decides which), else ``cpu``."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def get_backbone(spec: Any, device: str, cache_dir: str | None = None) -> tuple[Any, bool]:
    """(backbone, was_cached) for a ``core.config.BackboneSpec``; least recently used evicted first."""
    from core.backbone import load_backbone

    key = (spec.model, spec.pretrained, str(device))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key], True
        backbone = load_backbone(spec, device=device, cache_dir=cache_dir)
        _cache[key] = backbone
        while len(_cache) > MAX_BACKBONES:
            old, _ = _cache.popitem(last=False)
            logger.info("evicted backbone %s from the cache", old)
        if str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        return backbone, False


def clear() -> None:
    with _lock:
        _cache.clear()
