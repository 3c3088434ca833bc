from __future__ import annotations

from fastapi import APIRouter, Response, status

from mergetune.api.deps import IdempotencyKeyHeader, PageDep, PrincipalDep, SessionDep, SettingsDep
from mergetune.api.errors import NotFound, error_responses
from mergetune.api.schemas import DatasetCreate, DatasetCredentials, DatasetList, DatasetRead, FreedRead
from mergetune.api.services import lifecycle
from mergetune.api.services.datasets import create_dataset, set_credentials
from mergetune.common import repositories as repo

router = APIRouter(prefix="/v1/datasets", tags=["datasets"], responses=error_responses(401, 422))


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetRead,
    responses=error_responses(400, 401, 409, 422),
    summary="Register a dataset (path relative to the server's data root)",
)
def post_dataset(
    body: DatasetCreate,
    response: Response,
    principal: PrincipalDep,
    settings: SettingsDep,
    session: SessionDep,
    idempotency_key: IdempotencyKeyHeader = None,
) -> DatasetRead:
    ds, created = create_dataset(
        session, settings, principal.project_id, body, idempotency_key=idempotency_key
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    return DatasetRead.model_validate(ds)


@router.get("", response_model=DatasetList, responses=error_responses(401, 422))
def list_datasets(principal: PrincipalDep, session: SessionDep, page: PageDep) -> DatasetList:
    p = repo.list_datasets(session, principal.project_id, limit=page.limit, after=page.after)
    return DatasetList(
        data=[DatasetRead.model_validate(d) for d in p.items], has_more=p.has_more, next_cursor=p.next_cursor
    )


@router.get("/{dataset_id}", response_model=DatasetRead, responses=error_responses(401, 404))
def get_dataset(dataset_id: str, principal: PrincipalDep, session: SessionDep) -> DatasetRead:
    ds = repo.get_dataset(session, principal.project_id, dataset_id)
    if ds is None:
        raise NotFound(f"dataset {dataset_id!r} not found", param="id")
    return DatasetRead.model_validate(ds)


@router.delete("/{dataset_id}", response_model=FreedRead, responses=error_responses(401, 404, 409))
def delete_dataset(dataset_id: str, principal: PrincipalDep, session: SessionDep) -> FreedRead:
    """A dataset no job refers to (its data is not in the store: nothing is freed there); 409 otherwise."""
    return lifecycle.delete_dataset(session, principal.project_id, dataset_id)


@router.put(
    "/{dataset_id}/credentials",
    response_model=DatasetRead,
    responses=error_responses(401, 404, 422),
    summary="Replace an s3:// dataset's own credentials (checked by listing its bucket with them)",
)
def put_dataset_credentials(
    dataset_id: str,
    body: DatasetCredentials,
    principal: PrincipalDep,
    settings: SettingsDep,
    session: SessionDep,
) -> DatasetRead:
    ds = set_credentials(session, settings, principal.project_id, dataset_id, body)
    return DatasetRead.model_validate(ds)


@router.delete(
    "/{dataset_id}/credentials",
    response_model=DatasetRead,
    responses=error_responses(401, 404, 422),
    summary="Forget a dataset's own credentials: the service's identity reads its bucket again",
)
def delete_dataset_credentials(
    dataset_id: str, principal: PrincipalDep, settings: SettingsDep, session: SessionDep
) -> DatasetRead:
    ds = set_credentials(session, settings, principal.project_id, dataset_id, None)
    return DatasetRead.model_validate(ds)
