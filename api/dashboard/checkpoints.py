"""``/checkpoints``: the project's checkpoints and the upload form (the same streaming, checks and
messages as ``POST /v1/checkpoints``)."""

from __future__ import annotations

import secrets
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import RedirectResponse, Response

from mergetune.api.dashboard.auth import ViewerDep, check_csrf, to_login
from mergetune.api.dashboard.queries import project_checkpoints
from mergetune.api.dashboard.render import error_page, render
from mergetune.api.deps import SessionDep, SettingsDep
from mergetune.api.errors import ApiError
from mergetune.common.models import CheckpointStatus
from mergetune.common.storage import get_store

router = APIRouter(include_in_schema=False)


@router.get("/checkpoints")
def checkpoint_list(request: Request, session: SessionDep, viewer: ViewerDep, uploaded: str = "") -> Response:
    if viewer is None:
        return to_login(request)
    return render(
        request,
        "checkpoints.html",
        viewer,
        checkpoints=project_checkpoints(session, viewer),
        uploaded=uploaded,
        idempotency_key=secrets.token_hex(16),
    )


@router.post("/checkpoints")
async def upload_checkpoint_form(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep
) -> Response:
    """The checkpoints page's upload form: the same streaming, checks and messages as
    ``POST /v1/checkpoints``; a refused file shows the API's error naming the field."""
    from starlette.concurrency import run_in_threadpool

    from mergetune.api.services.checkpoints import create_checkpoint
    from mergetune.api.uploads import receive_multipart

    if viewer is None:
        return to_login(request)

    def page(status_code: int, message: str, param: str | None) -> Response:
        return error_page(
            request,
            viewer,
            "checkpoints.html",
            status_code,
            message,
            param,
            checkpoints=project_checkpoints(session, viewer),
        )

    try:
        upload = await receive_multipart(
            request, tmp_dir=settings.tmp_dir, max_bytes=settings.MAX_UPLOAD_BYTES
        )
    except ApiError as exc:
        return page(exc.status_code, exc.message, exc.param)
    try:
        if not check_csrf(viewer, upload.fields.get("csrf")):
            return Response("bad CSRF token", status_code=403)
        if upload.path is None or upload.size == 0:
            return page(422, "choose a checkpoint file (it is empty or missing)", "file")
        request.app.state.metrics.upload_bytes.inc(upload.size)
        ckpt, _ = await run_in_threadpool(
            create_checkpoint,
            session,
            settings,
            get_store(settings),
            viewer.project_id,
            upload,
            idempotency_key=upload.fields.get("idempotency_key") or None,
        )
    except ApiError as exc:
        return page(exc.status_code, exc.message, exc.param)
    finally:
        upload.cleanup()
    if ckpt.status != CheckpointStatus.ready.value:
        err = ckpt.error or {}
        return page(
            422, f"{ckpt.filename} was refused: {err.get('message', 'not a checkpoint')}", err.get("param")
        )
    return RedirectResponse(f"/checkpoints?uploaded={quote(ckpt.id)}", status_code=303)
