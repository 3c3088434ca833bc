"""Weights uploaded to the service, on the worker: ``backbone.pretrained = "weights:<id>"`` (or
``"sha256:<hex>"``) names a record of the job's project; its file comes from the artifact store (a folder
or S3: no shared disk needed) into the machine's input cache, named by its sha256 and verified against it
and its size, then is built as a local file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mergetune.common import uploaded_weights as uw
from mergetune.common.db import session_scope
from mergetune.common.objcache import CacheError, Expected, ObjectCache, entry_name
from mergetune.core.errors import BackboneError
from mergetune.worker.jobdb import retrying

PARAM = "backbone.pretrained"
_CACHES: dict[tuple[str, int], ObjectCache] = {}


@retrying
def _record(url: str, project_id: str, pretrained: str) -> dict[str, Any] | None:
    with session_scope(url) as s:
        row = uw.find(s, project_id, pretrained)
        return None if row is None else {"sha256": row.sha256, "bytes": row.bytes, "key": row.storage_key}


def _cache(settings: Any) -> ObjectCache:
    key = (str(settings.INPUT_CACHE_DIR), int(settings.INPUT_CACHE_MAX_BYTES))
    if key not in _CACHES:
        _CACHES[key] = ObjectCache(settings.INPUT_CACHE_DIR, settings.INPUT_CACHE_MAX_BYTES)
    return _CACHES[key]


@contextlib.contextmanager
def fetched_weights(settings: Any, spec: Any, *, url: str, project_id: str, store: Any) -> Iterator[Any]:
    """A copy of ``spec`` naming the verified file in the cache (kept there while the block runs)."""
    try:
        rec = _record(url, project_id, spec.pretrained)
    except uw.BadReference as exc:
        raise BackboneError(str(exc), code="weights_invalid", param=PARAM) from None
    if rec is None:
        raise BackboneError(
            f"{spec.pretrained[:120]!r}: no uploaded weights of this project (deleted?)",
            code="weights_missing",
            param=PARAM,
        )
    suffix = "." + rec["key"].rsplit(".", 1)[-1] if "." in rec["key"].rsplit("/", 1)[-1] else ""

    def download(out: Any) -> None:
        try:
            for chunk in store.iter_chunks(rec["key"]):
                out.write(chunk)
        except FileNotFoundError:
            raise BackboneError(
                f"the file of {spec.pretrained[:120]!r} is gone from the artifact store",
                code="weights_missing",
                param=PARAM,
            ) from None

    name = entry_name(location=rec["key"], etag=None, sha256=rec["sha256"], suffix=suffix)
    try:
        with _cache(settings).fetch(
            name, download, Expected(size=rec["bytes"], sha256=rec["sha256"])
        ) as path:
            yield spec.model_copy(update={"pretrained": str(path)})
    except CacheError as exc:
        raise BackboneError(str(exc), code="weights_invalid", param=PARAM) from None
