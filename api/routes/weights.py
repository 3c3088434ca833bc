"""``/v1/weights``: backbone weights uploaded once and named by jobs as ``backbone.pretrained =
"weights:<id>"`` (or ``"sha256:<hex>"``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request, Response, status
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from mergetune.api.deps import PageDep, PrincipalDep, SessionDep, SettingsDep, StoreDep
from mergetune.api.errors import error_responses
from mergetune.api.schemas import FreedRead, ListResponse
from mergetune.api.services.weights import create_weights, delete_weights, get_weights
from mergetune.api.uploads import multipart_schema, receive_multipart
from mergetune.common.models import UploadedWeights
from mergetune.common.repositories import paginate

router = APIRouter(prefix="/v1/weights", tags=["weights"], responses=error_responses(401, 422))


class WeightsRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    object: str = "weights"
    name: str
    filename: str
    bytes: int
    sha256: str
    format: str = Field(description="safetensors | state_dict")
    summary: dict[str, Any] = Field(
        description="What the upload's check found: tensors, parameters, dtypes, layout (clip | openai | "
        "other) and, in CLIP's layout, text_width, embed_dim, context_length and vocab_size"
    )
    pretrained: str = Field(description='What a job names them by: backbone.pretrained = "weights:<id>"')
    created_at: datetime


class WeightsList(ListResponse[WeightsRead]):
    pass


def _read(row: UploadedWeights) -> WeightsRead:
    return WeightsRead.model_validate(
        {
            **{c.key: getattr(row, c.key) for c in row.__mapper__.column_attrs},
            "pretrained": f"weights:{row.id}",
        }
    )


_UPLOAD_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": multipart_schema(
                "a safetensors file or a torch state dict (.pt / .pth / .bin) of a CLIP open_clip builds",
                name={"type": "string"},
            )
        },
    }
}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WeightsRead,
    openapi_extra=_UPLOAD_SCHEMA,
    responses=error_responses(400, 401, 403, 413, 415, 422, 503),
    summary="Upload backbone weights once (streamed; the same bytes again answer the same record, 200)",
)
async def upload_weights(
    request: Request,
    response: Response,
    principal: PrincipalDep,
    settings: SettingsDep,
    session: SessionDep,
    store: StoreDep,
) -> WeightsRead:
    upload = await receive_multipart(request, tmp_dir=settings.tmp_dir, max_bytes=settings.MAX_WEIGHTS_BYTES)
    try:
        row, created = await run_in_threadpool(
            create_weights, session, settings, store, principal.project_id, upload
        )
    finally:
        upload.cleanup()
    if not created:
        response.status_code = status.HTTP_200_OK
    return _read(row)


@router.get("", response_model=WeightsList, responses=error_responses(401, 422))
def list_weights(principal: PrincipalDep, session: SessionDep, page: PageDep) -> WeightsList:
    stmt = select(UploadedWeights).where(UploadedWeights.project_id == principal.project_id)
    p = paginate(session, stmt, UploadedWeights.id, limit=page.limit, after=page.after)
    return WeightsList(data=[_read(r) for r in p.items], has_more=p.has_more, next_cursor=p.next_cursor)


@router.get("/{weights_id}", response_model=WeightsRead, responses=error_responses(401, 404))
def read_weights(weights_id: str, principal: PrincipalDep, session: SessionDep) -> WeightsRead:
    return _read(get_weights(session, principal.project_id, weights_id))


@router.delete("/{weights_id}", response_model=FreedRead, responses=error_responses(401, 404, 409))
def remove_weights(
    weights_id: str, principal: PrincipalDep, session: SessionDep, store: StoreDep
) -> FreedRead:
    """The file leaves the store and the record goes; jobs that ran on them keep naming them.
    409 ``in_use`` while a queued or running job names them."""
    return delete_weights(session, store, principal.project_id, weights_id)
