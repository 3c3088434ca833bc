"""``/datasets``: the project's datasets and the registration form (``POST /v1/datasets``'s body,
validation and messages)."""

from __future__ import annotations

import json
import secrets
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response
from pydantic import ValidationError

from mergetune.api.dashboard.auth import ViewerDep, check_csrf, to_login
from mergetune.api.dashboard.queries import project_datasets
from mergetune.api.dashboard.render import error_page, render
from mergetune.api.deps import SessionDep, SettingsDep
from mergetune.api.errors import ApiError
from mergetune.api.schemas import DatasetCreate

router = APIRouter(include_in_schema=False)


@router.get("/datasets")
def dataset_list(request: Request, session: SessionDep, viewer: ViewerDep, registered: str = "") -> Response:
    if viewer is None:
        return to_login(request)
    return render(
        request,
        "datasets.html",
        viewer,
        datasets=project_datasets(session, viewer),
        registered=registered,
        form={},
        idempotency_key=secrets.token_hex(16),
    )


@router.post("/datasets")
async def register_dataset_form(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep
) -> Response:
    """The datasets page's form: ``POST /v1/datasets``'s body, validation and messages."""
    from mergetune.api.services.datasets import create_dataset

    if viewer is None:
        return to_login(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if not check_csrf(viewer, form.get("csrf")):
        return Response("bad CSRF token", status_code=403)

    def page(status_code: int, message: str, param: str | None) -> Response:
        return error_page(
            request,
            viewer,
            "datasets.html",
            status_code,
            message,
            param,
            datasets=project_datasets(session, viewer),
            form=form,
        )

    options_text = (form.get("options") or "").strip()
    options: Any = None
    if options_text:
        try:
            options = json.loads(options_text)
        except ValueError as exc:
            return page(422, f"not valid JSON: {exc}", "options")
    fields = {k: (form.get(k) or "").strip() or None for k in ("name", "kind", "path", "coop_name")}
    try:
        body = DatasetCreate.model_validate(
            {**{k: v for k, v in fields.items() if v is not None}, "options": options}
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or None
        return page(422, str(first.get("msg", "invalid")).removeprefix("Value error, "), where)
    try:
        ds, _ = await run_in_threadpool_sync(
            create_dataset,
            session,
            settings,
            viewer.project_id,
            body,
            idempotency_key=form.get("idempotency_key") or None,
        )
    except ApiError as exc:
        return page(exc.status_code, exc.message, exc.param)
    return RedirectResponse(f"/datasets?registered={quote(ds.id)}", status_code=303)


async def run_in_threadpool_sync(func: Any, *args: Any, **kwargs: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(func, *args, **kwargs)
