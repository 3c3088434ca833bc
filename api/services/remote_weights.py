"""``backbone.pretrained`` as an ``s3://bucket/key`` reference, checked at submission: the object exists
and the API can read its metadata with the service's S3 settings, and a live worker (when any reports)
says it can fetch such references."""

from __future__ import annotations

from typing import Any

from mergetune.api.errors import Unprocessable
from mergetune.common.remote import RemoteError, inputs_for, split_reference

PARAM = "backbone.pretrained"


def check_remote_weights(settings: Any, url: str, inventories: list[dict[str, Any]]) -> None:
    try:
        bucket, key = split_reference(url)
    except RemoteError as exc:
        raise Unprocessable(exc.message, code="invalid_reference", param=PARAM) from None
    if not key or key.endswith("/"):
        raise Unprocessable(
            f"{url[:200]!r} names no object (a key is needed)", code="invalid_reference", param=PARAM
        )
    if inventories and not any("s3" in (inv.get("remote") or []) for inv in inventories):
        raise Unprocessable(
            f"no live worker can fetch s3:// weights ({len(inventories)} worker(s) report their weights)",
            code="weights_unavailable",
            param=PARAM,
        )
    try:
        inputs_for(settings, with_cache=False).head(bucket, key)
    except RemoteError as exc:
        raise Unprocessable(exc.message, code="weights_unavailable", param=PARAM) from None
