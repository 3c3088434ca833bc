"""``GET /v1/usage``: the caller's project's device time, jobs and stored bytes, per UTC day."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from mergetune.api.deps import PrincipalDep, SessionDep
from mergetune.api.errors import error_responses
from mergetune.api.schemas import UsageRead
from mergetune.common.models import utcnow
from mergetune.common.usage import project_usage

router = APIRouter(prefix="/v1/usage", tags=["usage"], responses=error_responses(401, 422))


@router.get("", response_model=UsageRead, summary="The project's usage: device time, jobs, stored bytes")
def get_usage(
    principal: PrincipalDep,
    session: SessionDep,
    days: Annotated[int, Query(ge=1, le=366, description="How many UTC days, today included (1..366)")] = 30,
) -> UsageRead:
    return UsageRead.model_validate(project_usage(session, principal.project_id, days=days, now=utcnow()))
