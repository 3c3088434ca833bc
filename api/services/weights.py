"""Backbone weights uploaded once (``POST /v1/weights``): checked in a sandboxed parse child (a safetensors
file or a torch state dict of tensors; the API never imports torch), stored once per project and content
(``weights/<project>/<sha256>.<suffix>`` in the artifact store, local or S3), listed, deleted (409 while
an unfinished job names them), and checked when a job names them in ``backbone.pretrained``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from mergetune.api.errors import ApiError, Conflict, NotFound, Unprocessable
from mergetune.api.parse_pool import parse_pool, sandbox_limits
from mergetune.api.schemas import FreedRead
from mergetune.api.uploads import ReceivedUpload
from mergetune.common import uploaded_weights as uw
from mergetune.common.models import TERMINAL_STATUSES, Job, UploadedWeights, new_id
from mergetune.common.quotas import stored_over
from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactStore
from mergetune.core.checkpoints.sandbox import SandboxRun
from mergetune.core.checkpoints.weights_file import SUFFIXES, architecture_problem, scan_weights_sandboxed
from mergetune.core.config import TEXT_WIDTHS
from mergetune.core.errors import CheckpointError

log = logging.getLogger(__name__)

PARAM = "backbone.pretrained"
_TERMINAL = [s.value for s in TERMINAL_STATUSES]


def _same(session: Session, project_id: str, sha256: str) -> UploadedWeights | None:
    return session.scalar(
        select(UploadedWeights).where(
            UploadedWeights.project_id == project_id, UploadedWeights.sha256 == sha256
        )
    )


def create_weights(
    session: Session, settings: Settings, store: ArtifactStore, project_id: str, upload: ReceivedUpload
) -> tuple[UploadedWeights, bool]:
    """(record, created): the project's record of these bytes when it has one (nothing stored twice),
    else the file checked, stored under its sha256 and recorded. Commits."""
    assert upload.path is not None
    existing = _same(session, project_id, upload.sha256)
    if existing is not None:
        return existing, False
    over = stored_over(session, project_id, upload.size)
    if over is not None:
        raise ApiError(
            f"quota_stored_bytes: {over.message}", code="quota_exceeded", param="file", status_code=403
        )
    summary = _scan(settings, upload.path, project_id)
    filename = (upload.filename or "weights").strip()[:255] or "weights"
    name = (upload.fields.get("name") or "").strip()[:255] or filename
    key = uw.storage_key(project_id, upload.sha256, SUFFIXES[summary["format"]])
    row = UploadedWeights(
        id=new_id("wgt"),
        project_id=project_id,
        name=name,
        filename=filename,
        bytes=upload.size,
        sha256=upload.sha256,
        format=summary["format"],
        storage_key=key,
        summary=summary,
    )
    store.put_file(key, upload.path)  # a committed row always has its file
    session.add(row)
    try:
        session.commit()
    except IntegrityError:  # the same bytes, uploaded at the same moment: the first record answers
        session.rollback()
        won = _same(session, project_id, upload.sha256)
        if won is None:
            raise
        return won, False
    except BaseException:
        session.rollback()
        if _same(session, project_id, upload.sha256) is None:
            store.delete(key)
        raise
    log.info("weights %s stored (%s, %d bytes)", row.id, row.format, row.bytes)
    return row, True


def _scan(settings: Settings, path: Path, project_id: str) -> dict[str, Any]:
    pool = parse_pool(settings)
    run = SandboxRun()
    try:
        with pool.deployment_slot(settings, project_id), pool.slot(project_id):
            return scan_weights_sandboxed(
                path, limits=sandbox_limits(settings), tmp_dir=Path(settings.tmp_dir), run=run
            )
    except CheckpointError as exc:
        code = exc.code if exc.code in ("too_large", "too_slow", "unsafe_pickle") else "not_weights"
        raise Unprocessable(exc.message, code=code, param="file") from None
    finally:
        log.info("weights scan: %.2f s, exit %s", run.wall_seconds, run.returncode)


def get_weights(session: Session, project_id: str, weights_id: str) -> UploadedWeights:
    row = session.scalar(
        select(UploadedWeights).where(
            UploadedWeights.project_id == project_id, UploadedWeights.id == weights_id
        )
    )
    if row is None:
        raise NotFound(f"weights {weights_id!r} not found", param="id")
    return row


def users(session: Session, row: UploadedWeights) -> list[str]:
    """The project's unfinished jobs whose ``backbone.pretrained`` names ``row``."""
    jobs = session.execute(
        select(Job.id, Job.backbone)
        .where(Job.project_id == row.project_id, Job.status.not_in(_TERMINAL))
        .order_by(Job.id)
    )
    return [job_id for job_id, backbone in jobs if uw.names(row, (backbone or {}).get("pretrained"))]


def delete_weights(session: Session, store: ArtifactStore, project_id: str, weights_id: str) -> FreedRead:
    row = get_weights(session, project_id, weights_id)
    busy = users(session, row)
    if busy:
        raise Conflict(
            f"weights {row.id} are used by unfinished job(s) {', '.join(busy[:5])}", code="in_use", param="id"
        )
    freed_bytes = 0
    if store.exists(row.storage_key):
        freed_bytes = store.size(row.storage_key)
        store.delete(row.storage_key)
    session.delete(row)
    session.commit()
    return FreedRead(
        id=weights_id, object="weights", freed_bytes=freed_bytes, freed_files=1 if freed_bytes else 0
    )


def check_uploaded_weights(session: Session, project_id: str | None, model: str, pretrained: str) -> None:
    """A job's ``weights:<id>`` / ``sha256:<hex>``: weights of this project (404 on
    ``backbone.pretrained`` otherwise, the same for another project's) that fit ``model`` when the
    file's keys tell (422 ``weights_mismatch``)."""
    try:
        uw.parse_reference(pretrained)
    except uw.BadReference as exc:
        raise Unprocessable(str(exc), code="invalid_reference", param=PARAM) from None
    row = uw.find(session, project_id, pretrained) if project_id is not None else None
    if row is None:
        raise NotFound(
            f"{pretrained.strip()[:120]!r}: no uploaded weights of this project (POST /v1/weights)",
            param=PARAM,
        )
    problem = architecture_problem(row.summary or {}, model, TEXT_WIDTHS.get(model))
    if problem is not None:
        raise Unprocessable(problem, code="weights_mismatch", param=PARAM)
