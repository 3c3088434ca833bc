"""Inputs by object-store reference on the worker: ``s3://`` datasets whose images come through the
machine's input cache, and ``s3://`` weights fetched (verified) into it before the backbone is built."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from mergetune.common.objcache import CacheError
from mergetune.common.remote import (
    CREDENTIAL_CODES,
    RemoteError,
    S3DatasetSource,
    dataset_inputs,
    inputs_for,
    is_reference,
    split_reference,
)
from mergetune.common.secrets import SecretKeyError, unseal
from mergetune.common.uploaded_weights import is_uploaded_reference
from mergetune.core.errors import BackboneError, DatasetError
from mergetune.worker.uploaded_weights import fetched_weights

WEIGHTS_PARAM = "backbone.pretrained"


def open_dataset_row(
    settings: Any,
    kind: Any,
    path: str,
    *,
    coop_name: str | None,
    options: dict[str, Any] | None,
    credentials: str | None = None,
) -> Any:
    """``mergetune.core.data.open_dataset`` for a local path, or the listed dataset of an ``s3://`` one,
    read with the dataset's own credentials when it has them (``credentials``: the sealed token, opened
    with MERGETUNE_SECRET_KEY; a worker without the key fails the job naming that setting)."""
    from mergetune.core.data import open_dataset
    from mergetune.core.data.remote import open_listed_dataset

    if not is_reference(path):
        return open_dataset(kind, settings.DATA_ROOT, path, coop_name=coop_name, options=options)
    own: dict[str, str] | None = None
    if credentials:
        try:
            own = unseal(settings, credentials)
        except SecretKeyError as exc:
            raise DatasetError(
                f"the dataset's own credentials cannot be opened on this worker: {exc}",
                code="secret_key_missing",
                param="dataset_id",
            ) from None
    try:
        source = S3DatasetSource(dataset_inputs(settings, own), path)
        return open_listed_dataset(
            kind, source, name=source.name, shown=path, coop_name=coop_name, options=options
        )
    except RemoteError as exc:
        if exc.reason in ("bad_reference", "not_found"):
            raise DatasetError(exc.message, code="not_found", param="path") from None
        if own is not None and exc.store_code in CREDENTIAL_CODES:
            raise DatasetError(
                f"the store refused the dataset's credentials: {exc.message}",
                code="credentials_rejected",
                param="dataset_id",
            ) from None
        raise  # unreachable store: a system error, the job is retried


@contextlib.contextmanager
def local_weights(
    settings: Any, spec: Any, *, url: str = "", project_id: str = "", store: Any = None
) -> Iterator[Any]:
    """``spec`` itself, or for ``s3://`` weights and weights uploaded to the service (``weights:<id>``,
    ``sha256:<hex>``: the job's project's, read from ``store``) a copy of it naming the verified file in
    the cache (kept there while the block runs)."""
    if is_uploaded_reference(spec.pretrained):
        with fetched_weights(settings, spec, url=url, project_id=project_id, store=store) as local:
            yield local
        return
    if not is_reference(spec.pretrained):
        yield spec
        return
    inputs = inputs_for(settings)
    try:
        bucket, key = split_reference(spec.pretrained)
        obj = inputs.head(bucket, key)
        with inputs.fetch(bucket, obj) as path:
            yield spec.model_copy(update={"pretrained": str(path)})
    except RemoteError as exc:
        if exc.reason in ("bad_reference", "not_found"):
            raise BackboneError(exc.message, code="weights_missing", param=WEIGHTS_PARAM) from None
        raise
    except CacheError as exc:
        raise BackboneError(str(exc), code="weights_invalid", param=WEIGHTS_PARAM) from None
