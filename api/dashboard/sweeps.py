"""The sweep pages: the project's sweeps, one sweep's table (filled in as cells finish), its report
downloads and its cancel button."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from mergetune.api.dashboard.auth import ViewerDep, check_csrf, to_login
from mergetune.api.dashboard.queries import PAGE_SIZE
from mergetune.api.dashboard.render import not_found, render
from mergetune.api.deps import SessionDep, SettingsDep
from mergetune.api.errors import ApiError, error_body
from mergetune.api.services import sweeps as sweep_service
from mergetune.common import repositories as repo
from mergetune.common.storage import get_store

router = APIRouter(include_in_schema=False)


@router.get("/sweeps")
def sweep_list(request: Request, session: SessionDep, viewer: ViewerDep) -> Response:
    if viewer is None:
        return to_login(request)
    page = repo.list_sweeps(session, viewer.project_id, limit=PAGE_SIZE, after=None)
    rows = [sweep_service.sweep_read(session, s) for s in page.items]
    return render(request, "sweeps.html", viewer, sweeps=rows)


@router.get("/sweeps/{sweep_id}")
def sweep_detail(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep, sweep_id: str
) -> Response:
    """The sweep's table (filled in as cells finish: the page swaps in /ui/sweeps/{id}/table) with a
    link to every cell's job."""
    if viewer is None:
        return to_login(request)
    sweep = repo.get_sweep(session, viewer.project_id, sweep_id)
    if sweep is None:
        return not_found(request, viewer, f"sweep {sweep_id}")
    report = sweep_service.sweep_report(session, get_store(settings), sweep)
    return render(request, "sweep.html", viewer, report=report, job_href="/jobs/")


@router.get("/ui/sweeps/{sweep_id}/table")
def sweep_table_html(
    session: SessionDep, viewer: ViewerDep, settings: SettingsDep, sweep_id: str
) -> Response:
    if viewer is None:
        return JSONResponse(error_body("unauthenticated", "log in at /login"), status_code=401)
    sweep = repo.get_sweep(session, viewer.project_id, sweep_id)
    if sweep is None:
        return JSONResponse(
            error_body("not_found", f"sweep {sweep_id!r} not found", "sweep_id"), status_code=404
        )
    report = sweep_service.sweep_report(session, get_store(settings), sweep)
    return Response(
        sweep_service.render_table_fragment(report),
        media_type="text/html; charset=utf-8",
        headers={"Cache-Control": "no-store"},
    )


@router.get("/sweeps/{sweep_id}/report.{fmt}")
def sweep_report_file(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep, sweep_id: str, fmt: str
) -> Response:
    """The REST report formats (json, csv, tex, txt, html) for the logged-in viewer, as downloads."""
    if viewer is None:
        return to_login(request)
    sweep = repo.get_sweep(session, viewer.project_id, sweep_id)
    if sweep is None or fmt not in ("json", "csv", "tex", "html"):
        return not_found(request, viewer, f"sweep {sweep_id} report.{fmt}")
    report = sweep_service.sweep_report(session, get_store(settings), sweep)
    body, media_type = sweep_service.render_report(report, fmt, str(request.base_url) + "jobs/")
    disposition = f'attachment; filename="{sweep.id}-report.{fmt}"'
    return Response(body, media_type=media_type, headers={"Content-Disposition": disposition})


@router.post("/sweeps/{sweep_id}/cancel")
async def cancel_sweep(request: Request, session: SessionDep, viewer: ViewerDep, sweep_id: str) -> Response:
    if viewer is None:
        return to_login(request)
    form = await request.form()
    if not check_csrf(viewer, str(form.get("csrf") or "")):
        return Response("invalid CSRF token", status_code=403)
    try:
        sweep_service.cancel_sweep(session, viewer.project_id, sweep_id)
    except ApiError as exc:
        if exc.status_code == 404:
            return not_found(request, viewer, f"sweep {sweep_id}")
    return RedirectResponse(f"/sweeps/{quote(sweep_id)}", status_code=303)
