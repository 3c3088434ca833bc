"""Dataset registration: the path is confined under DATA_ROOT, then the dataset is opened with
mergetune.core.data (PIL/numpy only, no torch) to record classes, the base/novel split and split hashes."""

from __future__ import annotations

import errno
import logging
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy.orm import Session

from mergetune.api.errors import ApiError, BadRequest, NotFound, Unprocessable, core_status
from mergetune.api.schemas import DatasetCreate, DatasetCredentials
from mergetune.api.services.idempotency import commit_or_replay, replayed_id, request_hash, still_there
from mergetune.common import repositories as repo
from mergetune.common.models import Dataset, new_id
from mergetune.common.remote import (
    CREDENTIAL_CODES,
    RemoteError,
    S3DatasetSource,
    dataset_inputs,
    is_reference,
)
from mergetune.common.secrets import SETTING as SECRET_SETTING
from mergetune.common.secrets import SecretKeyError, mask, seal
from mergetune.common.settings import Settings
from mergetune.core.config import DatasetKind
from mergetune.core.data import base_to_novel, open_dataset
from mergetune.core.data.remote import open_listed_dataset
from mergetune.core.errors import DatasetError

log = logging.getLogger(__name__)

ENDPOINT = "POST /v1/datasets"


def confine_path(data_root: Path, path: str) -> str:
    """Normalised relative path, refused (400 path_outside_root) when it could leave ``data_root``."""
    raw = path.replace("\\", "/").strip()
    p = PurePosixPath(raw)
    if not raw or "\x00" in raw:
        raise Unprocessable("path must be a non-empty relative path", param="path")
    if p.is_absolute() or ".." in p.parts:
        raise BadRequest(
            "path must be relative to the data root and stay inside it",
            code="path_outside_root",
            param="path",
        )
    root = data_root.resolve()
    try:
        target = (root / p).resolve()  # follows symlinks: a link out of the root is refused too
    except (RuntimeError, OSError) as exc:  # a symlink loop (RuntimeError before Python 3.13)
        raise Unprocessable(
            f"path cannot be resolved: {type(exc).__name__} (a symlink loop?)",
            code="symlink_loop",
            param="path",
        ) from None
    if not target.is_relative_to(root):
        raise BadRequest("path resolves outside the data root", code="path_outside_root", param="path")
    return str(p)


def create_dataset(
    session: Session, settings: Settings, project_id: str, body: DatasetCreate, *, idempotency_key: str | None
) -> tuple[Dataset, bool]:
    req_hash = request_hash(ENDPOINT, body.model_dump(mode="json"))
    existing = replayed_id(session, project_id, idempotency_key, req_hash)
    if existing is not None:
        return _replay(session, project_id, existing), False

    assert settings.DATA_ROOT is not None
    path: str | None = None
    if body.credentials is not None and not (body.path and is_reference(body.path)):
        raise Unprocessable(
            "credentials are only for s3:// paths (a dataset in its own bucket)", param="credentials"
        )
    if body.path and is_reference(body.path):
        return _create_listed(session, settings, project_id, body, idempotency_key, req_hash)
    if body.kind != DatasetKind.builtin:
        if not body.path:
            raise Unprocessable(f"path is required for kind {body.kind.value}", param="path")
        path = confine_path(settings.DATA_ROOT, body.path)
    elif body.path:
        path = confine_path(settings.DATA_ROOT, body.path)
    try:
        ds = open_dataset(
            body.kind, settings.DATA_ROOT, path or "", coop_name=body.coop_name, options=body.options or {}
        )
        task = base_to_novel(ds, shots=1, seed=1)  # the class split does not depend on shots/seed
    except DatasetError as exc:
        raise ApiError(
            exc.message, code=exc.code, param=exc.param or "path", status_code=core_status(exc)
        ) from None
    except (TypeError, ValueError, KeyError) as exc:  # bad options values
        raise Unprocessable(f"invalid dataset options: {exc}", param="options") from None
    except (RuntimeError, OSError) as exc:  # a symlink loop or an unreadable entry inside the dataset
        # Named without the server's absolute paths.
        loop = isinstance(exc, RuntimeError) or getattr(exc, "errno", None) == errno.ELOOP
        reason = "a symlink loop" if loop else (getattr(exc, "strerror", None) or type(exc).__name__)
        raise Unprocessable(
            f"the dataset cannot be read: {reason}",
            code="symlink_loop" if loop else "dataset_unreadable",
            param="path",
        ) from None

    return _store_row(session, project_id, body, path, ds, task, idempotency_key, req_hash)


def open_reference(
    settings: Settings,
    kind: DatasetKind,
    url: str,
    coop_name: str | None,
    options: dict,
    credentials: dict[str, str] | None = None,
) -> Any:
    """An ``s3://bucket/prefix`` dataset opened from its listing (the images are not read here), with
    the dataset's own credentials when it has them, else the service's S3 settings."""
    source = S3DatasetSource(dataset_inputs(settings, credentials, with_cache=False), url)
    return open_listed_dataset(
        kind, source, name=source.name, shown=url, coop_name=coop_name, options=options
    )


def _create_listed(
    session: Session,
    settings: Settings,
    project_id: str,
    body: DatasetCreate,
    idempotency_key: str | None,
    req_hash: str,
) -> tuple[Dataset, bool]:
    assert body.path is not None
    url = body.path.strip()
    if body.kind not in (DatasetKind.coop, DatasetKind.imagefolder):
        raise Unprocessable(
            f"kind {body.kind.value} cannot be read from an object store; s3:// paths are for coop and imagefolder",
            param="path",
        )
    credentials = _plain_credentials(settings, body.credentials)
    try:
        ds = open_reference(settings, body.kind, url, body.coop_name, body.options or {}, credentials)
        task = base_to_novel(ds, shots=1, seed=1)
    except RemoteError as exc:
        raise _remote_refusal(exc, credentials) from None
    except DatasetError as exc:
        raise ApiError(
            exc.message, code=exc.code, param=exc.param or "path", status_code=core_status(exc)
        ) from None
    except (TypeError, ValueError, KeyError) as exc:
        raise Unprocessable(f"invalid dataset options: {exc}", param="options") from None
    except OSError as exc:  # a key no folder tree can hold (a part longer than a file name may be)
        raise Unprocessable(
            f"the dataset cannot be laid out: {exc.strerror or type(exc).__name__}",
            code="dataset_unreadable",
            param="path",
        ) from None
    return _store_row(
        session, project_id, body, url, ds, task, idempotency_key, req_hash, _sealed(settings, credentials)
    )


def _plain_credentials(settings: Settings, given: DatasetCredentials | None) -> dict[str, str] | None:
    """The given credentials' values; refused (422 naming credentials) when nothing can seal them."""
    if given is None:
        return None
    if settings.SECRET_KEY is None:
        raise Unprocessable(
            f"this service stores no credentials: {SECRET_SETTING} is not configured",
            code="secret_key_missing",
            param="credentials",
        )
    return given.plain()


def _sealed(settings: Settings, credentials: dict[str, str] | None) -> tuple[str, str] | None:
    """(token, masked access key id) of credentials to store."""
    if credentials is None:
        return None
    try:
        return seal(settings, credentials), mask(credentials["access_key_id"])
    except SecretKeyError as exc:
        raise Unprocessable(str(exc), code="secret_key_missing", param="credentials") from None


def _remote_refusal(exc: RemoteError, credentials: dict[str, str] | None) -> Unprocessable:
    if credentials is not None and exc.store_code in CREDENTIAL_CODES:
        return Unprocessable(
            f"the store refused these credentials: {exc.message}",
            code="credentials_rejected",
            param="credentials",
        )
    code = {"bad_reference": "invalid_reference", "not_found": "not_found"}.get(
        exc.reason, "dataset_unreadable"
    )
    return Unprocessable(exc.message, code=code, param="path")


def set_credentials(
    session: Session, settings: Settings, project_id: str, ds_id: str, given: DatasetCredentials | None
) -> Dataset:
    """Store new credentials for an s3:// dataset (checked by listing its bucket with them), or clear
    them (``None``): the service's own identity reads the bucket again."""
    row = repo.get_dataset(session, project_id, ds_id)
    if row is None:
        raise NotFound(f"dataset {ds_id!r} not found", param="id")
    if not is_reference(row.path):
        raise Unprocessable(
            "credentials are only for s3:// paths (a dataset in its own bucket)", param="credentials"
        )
    credentials = _plain_credentials(settings, given)
    if credentials is not None:
        try:
            S3DatasetSource(dataset_inputs(settings, credentials, with_cache=False), row.path or "").objects()
        except RemoteError as exc:
            raise _remote_refusal(exc, credentials) from None
    sealed = _sealed(settings, credentials)
    row.credentials_sealed, row.credentials_hint = sealed if sealed else (None, None)
    session.commit()
    log.info("dataset %s credentials %s", row.id, "replaced" if sealed else "cleared")
    return row


def _store_row(
    session: Session,
    project_id: str,
    body: DatasetCreate,
    path: str | None,
    ds: Any,
    task: Any,
    idempotency_key: str | None,
    req_hash: str,
    sealed: tuple[str, str] | None = None,
) -> tuple[Dataset, bool]:
    row = Dataset(
        id=new_id("ds"),
        project_id=project_id,
        name=body.name,
        kind=body.kind.value,
        path=path,
        coop_name=ds.name if body.kind == DatasetKind.coop else body.coop_name,
        options=body.options,
        num_classes=ds.num_classes,
        classnames=list(ds.classnames),
        base_classes=list(task.base_classnames),
        novel_classes=list(task.novel_classnames),
        split_sizes={s: len(r) for s, r in ds.splits.items()},
        template=ds.template,
        sha256_of_split=ds.split_sha256(),
        credentials_sealed=sealed[0] if sealed else None,
        credentials_hint=sealed[1] if sealed else None,
    )
    session.add(row)
    replay = commit_or_replay(
        session,
        project_id,
        idempotency_key,
        req_hash,
        lambda ds_id: _replay(session, project_id, ds_id),
        resource_id=row.id,
    )
    if replay is not None:
        return replay, False
    log.info("dataset %s registered (%s, %d classes)", row.id, row.kind, row.num_classes)
    return row, True


def _replay(session: Session, project_id: str, ds_id: str) -> Dataset:
    return still_there(repo.get_dataset(session, project_id, ds_id), "dataset")
