from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from mergetune.api.deps import IdempotencyKeyHeader, PageDep, PrincipalDep, SessionDep, SettingsDep, StoreDep
from mergetune.api.errors import NotFound, error_responses
from mergetune.api.schemas import CheckpointList, CheckpointRead, FreedRead
from mergetune.api.services import lifecycle
from mergetune.api.services.checkpoints import create_checkpoint
from mergetune.api.services.idempotency import create_once
from mergetune.api.uploads import multipart_schema, receive_multipart
from mergetune.common import repositories as repo

router = APIRouter(prefix="/v1/checkpoints", tags=["checkpoints"], responses=error_responses(401, 422))

_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": multipart_schema(
                "Dassl .pth.tar / .pth / .pt, or .safetensors",
                method={
                    "type": "string",
                    "enum": ["coop", "kgcoop", "linear_head", "mma"],
                    "description": "Detected when absent",
                },
                name={"type": "string"},
                class_token_position={
                    "type": "string",
                    "enum": ["end", "middle", "front"],
                    "description": "CoOp's TRAINER.COOP.CLASS_TOKEN_POSITION (not stored in its "
                    "files); jobs use end when neither this nor the job's prompt gives it",
                },
            )
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=CheckpointRead,
    openapi_extra=_UPLOAD_SCHEMA,
    responses=error_responses(400, 401, 409, 413, 415, 422, 503),
    summary="Upload a fine-tuned checkpoint (streamed, validated without unpickling code)",
)
async def upload_checkpoint(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    settings: SettingsDep,
    session: SessionDep,
    store: StoreDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> CheckpointRead:
    upload = await receive_multipart(request, tmp_dir=settings.tmp_dir, max_bytes=settings.MAX_UPLOAD_BYTES)
    try:
        request.app.state.metrics.upload_bytes.inc(upload.size)
        # Concurrent uploads with one Idempotency-Key go one at a time: the later ones replay the first.
        ckpt, created = await create_once(
            request.app.state, principal.project_id, idempotency_key,
            create_checkpoint, session, settings, store, principal.project_id, upload,
        )  # fmt: skip
    finally:
        upload.cleanup()
    if not created:
        response.status_code = status.HTTP_200_OK
    return CheckpointRead.model_validate(ckpt)


@router.get("", response_model=CheckpointList, responses=error_responses(401, 422))
def list_checkpoints(principal: PrincipalDep, session: SessionDep, page: PageDep) -> CheckpointList:
    p = repo.list_checkpoints(session, principal.project_id, limit=page.limit, after=page.after)
    return CheckpointList(
        data=[CheckpointRead.model_validate(c) for c in p.items],
        has_more=p.has_more,
        next_cursor=p.next_cursor,
    )


@router.get("/{checkpoint_id}", response_model=CheckpointRead, responses=error_responses(401, 404))
def get_checkpoint(checkpoint_id: str, principal: PrincipalDep, session: SessionDep) -> CheckpointRead:
    ckpt = repo.get_checkpoint(session, principal.project_id, checkpoint_id)
    if ckpt is None:
        raise NotFound(f"checkpoint {checkpoint_id!r} not found", param="id")
    return CheckpointRead.model_validate(ckpt)


@router.delete("/{checkpoint_id}", response_model=FreedRead, responses=error_responses(401, 404, 409))
def delete_checkpoint(
    checkpoint_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep
) -> FreedRead:
    """The checkpoint's files leave the store (the answer says how many bytes); its record stays,
    deleted, for the jobs that refer to it. 409 while an unfinished job uses it."""
    return lifecycle.delete_checkpoint(session, store, principal.project_id, checkpoint_id)
