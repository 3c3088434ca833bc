"""Checkpoint uploads: validation with the torch-free safe loader, storage of the original (audit)
and of the extracted tensors (safetensors)."""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file
from sqlalchemy.orm import Session

from mergetune.api.errors import ApiError, ServiceUnavailable, Unprocessable
from mergetune.api.parse_pool import parse_pool
from mergetune.api.services.idempotency import commit_or_replay, replayed_id, request_hash, still_there
from mergetune.api.uploads import ReceivedUpload, safe_filename
from mergetune.common.db import is_unavailable
from mergetune.common.models import Checkpoint, CheckpointStatus, new_id
from mergetune.common.quotas import stored_over
from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactStore, is_storage_full
from mergetune.core.checkpoints.ingest import IngestedCheckpoint
from mergetune.core.config import ClassTokenPosition, Method
from mergetune.core.errors import CheckpointError

log = logging.getLogger(__name__)

ENDPOINT = "POST /v1/checkpoints"
#: Parser refusals for exceeding a limit: answered 422 without storing the file.
LIMIT_CODES = frozenset({"too_large", "too_slow"})
#: The most ``checkpoints.info`` may hold as JSON; larger metadata is dropped (the tensors stay).
INFO_MAX_BYTES = 128 * 1024


def parse_method(value: str | None) -> Method | None:
    if value is None or value.strip() == "":
        return None
    try:
        return Method(value.strip())
    except ValueError:
        choices = ", ".join(m.value for m in Method)
        raise Unprocessable(f"method must be one of {choices}", param="method") from None


def parse_position(value: str | None) -> ClassTokenPosition | None:
    """The ``class_token_position`` form field (CoOp's CLASS_TOKEN_POSITION; not stored in its files)."""
    if value is None or value.strip() == "":
        return None
    try:
        return ClassTokenPosition(value.strip().lower())
    except ValueError:
        choices = ", ".join(p.value for p in ClassTokenPosition)
        raise Unprocessable(
            f"class_token_position must be one of {choices} (CoOp's TRAINER.COOP.CLASS_TOKEN_POSITION)",
            param="class_token_position",
        ) from None


def create_checkpoint(
    session: Session,
    settings: Settings,
    store: ArtifactStore,
    project_id: str,
    upload: ReceivedUpload,
    *,
    idempotency_key: str | None,
) -> tuple[Checkpoint, bool]:
    """Validate and store one upload; returns (checkpoint, created). Commits."""
    assert upload.path is not None
    method = parse_method(upload.fields.get("method"))
    position = parse_position(upload.fields.get("class_token_position"))
    filename = (upload.filename or "checkpoint").strip()[:255] or "checkpoint"
    name = (upload.fields.get("name") or "").strip()[:255] or filename
    hashed: dict[str, object] = {
        "sha256": upload.sha256,
        "method": method,
        "name": name,
        "filename": filename,
    }
    if position is not None:  # absent keeps the hash such requests always had
        hashed["class_token_position"] = position.value
    req_hash = request_hash(ENDPOINT, hashed)
    existing = replayed_id(session, project_id, idempotency_key, req_hash)
    if existing is not None:
        return _replay(session, project_id, existing), False
    over = stored_over(session, project_id, upload.size)
    if over is not None:  # a hard cap: it frees only when the project deletes something
        raise ApiError(
            f"quota_stored_bytes: {over.message}", code="quota_exceeded", param="file", status_code=403
        )

    ckpt_id = new_id("ckpt")
    original_key = f"checkpoints/{ckpt_id}/original/{safe_filename(filename)}"
    ckpt = Checkpoint(
        id=ckpt_id,
        project_id=project_id,
        name=name,
        filename=filename,
        bytes=upload.size,
        sha256=upload.sha256,
        original_key=original_key,
        class_token_position=position.value if position is not None else None,
    )
    ingested: IngestedCheckpoint | None = None
    # End the read transaction: the parse may wait for a slot and holds connections of its own (the
    # project's place in the deployment), so this request must not keep one more meanwhile.
    session.commit()
    try:  # in a limited child process (memory, CPU, wall time); 503 when the parse pool is full
        ingested = parse_pool(settings).parse(
            settings, upload.path, filename=filename, method=method, project_id=project_id
        )
    except ServiceUnavailable:
        raise
    except CheckpointError as exc:
        if exc.code in LIMIT_CODES:  # a file that hits a limit leaves nothing stored
            raise Unprocessable(exc.message, code=exc.code, param="file") from None
        _reject(ckpt, exc.code, exc.message, exc.param or "file")
    except Exception as exc:  # the loader must never turn bad input into a 500
        if is_unavailable(exc) or is_storage_full(exc):  # the server is busy or short of disk, the file
            raise  # may be fine: 503 / 507 with Retry-After (mergetune.api.errors), nothing stored
        log.warning("checkpoint %s: unexpected ingestion failure", ckpt_id, exc_info=True)
        _reject(ckpt, "not_a_checkpoint", f"could not read the checkpoint: {type(exc).__name__}", "file")

    # Bytes are stored before the row commits (a committed row always has its files). Every way out
    # other than this request's own commit (a concurrent request with the same key won, the database
    # refused the row, the store failed half-way) removes what this request stored. A rejected file
    # keeps its row (the answer, for replays and the dashboard) but none of its bytes.
    stored_prefix = f"checkpoints/{ckpt_id}/"
    try:
        if ingested is not None:
            _accept(ckpt, ingested, store, settings)
            store.put_file(original_key, upload.path)
        else:
            ckpt.original_key = None
        session.add(ckpt)
        replay = commit_or_replay(
            session,
            project_id,
            idempotency_key,
            req_hash,
            lambda ckpt_id: _replay(session, project_id, ckpt_id),
            resource_id=ckpt.id,
        )
    except BaseException:
        session.rollback()
        _discard(store, stored_prefix)
        raise
    if replay is not None:  # a concurrent request with the same key won the race
        _discard(store, stored_prefix)
        return replay, False
    log.info("checkpoint %s stored (%s, %d bytes)", ckpt.id, ckpt.status, ckpt.bytes)
    return ckpt, True


def _discard(store: ArtifactStore, prefix: str) -> None:
    try:
        store.delete_prefix(prefix)
    except Exception:  # never hide the original outcome; the log names what is left behind
        log.error("could not remove stored files under %s", prefix, exc_info=True)


def _replay(session: Session, project_id: str, ckpt_id: str) -> Checkpoint:
    ckpt = session.get(Checkpoint, ckpt_id)
    return still_there(ckpt if ckpt is not None and ckpt.project_id == project_id else None, "checkpoint")


def _reject(ckpt: Checkpoint, code: str, message: str, param: str | None) -> None:
    ckpt.status = CheckpointStatus.rejected
    ckpt.error = {"code": code, "message": message, "param": param}


def _accept(ckpt: Checkpoint, ing: IngestedCheckpoint, store: ArtifactStore, settings: Settings) -> None:
    tensors: dict[str, np.ndarray] = {}
    if ing.method == Method.linear_head:
        assert ing.head_weight is not None
        tensors["weight"] = np.ascontiguousarray(ing.head_weight, dtype=np.float32)
        if ing.head_bias is not None:
            tensors["bias"] = np.ascontiguousarray(ing.head_bias, dtype=np.float32)
    elif ing.method == Method.mma:  # the adapters under MMA's keys; their layout in info["mma_layout"]
        assert ing.adapters is not None
        tensors.update({k: np.ascontiguousarray(v, dtype=np.float32) for k, v in ing.adapters.items()})
    else:
        assert ing.ctx is not None
        tensors["ctx"] = np.ascontiguousarray(ing.ctx, dtype=np.float32)
    meta = {
        "method": ing.method.value,
        "format": ing.format,
        "source_sha256": ckpt.sha256,
        "n_ctx": str(ing.n_ctx) if ing.n_ctx is not None else "",
        "csc": str(ing.csc).lower(),
    }
    key = f"checkpoints/{ckpt.id}/tensors.safetensors"
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=settings.tmp_dir) as tmp:
        path = Path(tmp) / "tensors.safetensors"
        save_file(tensors, str(path), metadata=meta)
        store.put_file(key, path)
    info: dict[str, Any] = {"epoch": ing.epoch, "unknown_globals": list(ing.unknown_globals)}
    if ing.mma_layout:
        info["mma_layout"] = dict(ing.mma_layout)
    if ing.metadata:
        info["metadata"] = json.loads(json.dumps(ing.metadata, default=str))
    if len(json.dumps(info, default=str)) > INFO_MAX_BYTES:  # the parser bounds it; never store more
        info.pop("metadata", None)
        info["metadata_dropped"] = True
    ckpt.status = CheckpointStatus.ready
    ckpt.error = None
    ckpt.format = ing.format
    ckpt.method = ing.method.value
    ckpt.n_ctx = ing.n_ctx
    ckpt.ctx_dim = ing.ctx_dim
    ckpt.csc = ing.csc
    ckpt.n_cls = ing.n_cls
    ckpt.tensors_key = key
    ckpt.info = info
    recorded = (ing.metadata or {}).get("class_token_position")  # our own exports record it
    if ckpt.class_token_position is None and recorded in {p.value for p in ClassTokenPosition}:
        ckpt.class_token_position = recorded
