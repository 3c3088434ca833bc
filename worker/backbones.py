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


def get_backbone(
    spec: Any,
    device: str,
    cache_dir: str | None = None,
    *,
    model_root: str | None = None,
    forbidden: tuple[str, ...] = (),
) -> tuple[Any, bool]:
    """(backbone, was_cached) for a ``mergetune.core.config.BackboneSpec``; least recently used evicted first.
    Weights files are confined to ``model_root`` and never come from the ``forbidden`` trees."""
    from mergetune.core.model.backbone import load_backbone

    key = (spec.model, spec.pretrained, str(device))
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key], True
        backbone = load_backbone(
            spec, device=device, cache_dir=cache_dir, model_root=model_root, forbidden=forbidden
        )
        _cache[key] = backbone
        while len(_cache) > MAX_BACKBONES:
            old, _ = _cache.popitem(last=False)
            logger.info("evicted backbone %s from the cache", old)
        if str(device).startswith("cuda"):
            import torch

            torch.cuda.empty_cache()
        return backbone, False


def weights_sources(settings: Any) -> tuple[str | None, str | None, tuple[str, ...]]:
    """(cache_dir, model_root, forbidden trees) for ``get_backbone`` from the service settings: weights come
    from the model root (default MODEL_CACHE_DIR), never from the local artifact store."""
    cache_dir = str(settings.MODEL_CACHE_DIR) if settings.MODEL_CACHE_DIR else None
    root = settings.MODEL_ROOT or settings.MODEL_CACHE_DIR
    forbidden = (str(settings.ARTIFACT_URL),) if "://" not in str(settings.ARTIFACT_URL) else ()
    return cache_dir, (str(root) if root else None), forbidden


def weights_report(settings: Any) -> dict[str, Any]:
    """What this worker can load, for its heartbeat: weights files under the model root (relative paths)
    and the open_clip tags whose files are in the local cache (``model/tag``). The API refuses jobs whose
    weights no live worker reports."""
    from mergetune.core.checkpoints.weights import inventory
    from mergetune.core.model.backbone import cached_tags

    cache_dir, root, forbidden = weights_sources(settings)
    try:
        files = inventory(root, forbidden=forbidden) if root else []
        tags = cached_tags(cache_dir)
    except Exception:  # noqa: BLE001 - a report failure must never stop the heartbeat
        logger.warning("could not list the loadable weights", exc_info=True)
        return {"files": [], "tags": [], "error": True}
    from mergetune.common.secrets import has_key

    # secret_key: this worker can open datasets' own (sealed) credentials
    return {"files": files, "tags": tags, "remote": _remote_schemes(), "secret_key": has_key(settings)}


def _remote_schemes() -> list[str]:
    """The object stores whose references (``s3://``) this worker can fetch into its input cache."""
    try:
        import boto3  # noqa: F401
    except ImportError:
        return []
    return ["s3"]


def clear() -> None:
    with _lock:
        _cache.clear()
