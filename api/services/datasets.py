"""Dataset registration: the path is confined under DATA_ROOT, then the dataset is opened with
mergetune.core.data (PIL/numpy only, no torch) to record classes, the base/novel split and split hashes."""

from __future__ import annotations

import errno
import logging
from pathlib import Path, PurePosixPath
from typing import Any

from sqlalchemy.orm import Session

from mergetune.api.errors import ApiError, BadRequest, Unprocessable, core_status
from mergetune.api.schemas import DatasetCreate
from mergetune.api.services.idempotency import commit_or_replay, replayed_id, request_hash, still_there
from mergetune.common import repositories as repo
from mergetune.common.models import Dataset, new_id
from mergetune.common.remote import RemoteError, S3DatasetSource, inputs_for, is_reference
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
    settings: Settings, kind: DatasetKind, url: str, coop_name: str | None, options: dict
) -> Any:
    """An ``s3://bucket/prefix`` dataset opened from its listing (the images are not read here)."""
    source = S3DatasetSource(inputs_for(settings, with_cache=False), url)
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
    try:
        ds = open_reference(settings, body.kind, url, body.coop_name, body.options or {})
        task = base_to_novel(ds, shots=1, seed=1)
    except RemoteError as exc:
        code = {"bad_reference": "invalid_reference", "not_found": "not_found"}.get(
            exc.reason, "dataset_unreadable"
        )
        raise Unprocessable(exc.message, code=code, param="path") from None
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
    return _store_row(session, project_id, body, url, ds, task, idempotency_key, req_hash)


def _store_row(
    session: Session,
    project_id: str,
    body: DatasetCreate,
    path: str | None,
    ds: Any,
    task: Any,
    idempotency_key: str | None,
    req_hash: str,
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
