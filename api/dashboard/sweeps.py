"""The sweep pages: the project's sweeps, one sweep's table (filled in as cells finish) with the swept
hyperparameters against each cell's recovered HM, its reports (the HTML one opens in the browser, the
others download) and its cancel button."""

from __future__ import annotations

from typing import Any
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
    return render(
        request,
        "sweep.html",
        viewer,
        report=report,
        job_href="/jobs/",
        created_at=sweep.created_at,
        finished_at=sweep.finished_at,
        explore=sweep_explore(report),
    )


def sweep_explore(report: dict[str, Any]) -> dict[str, Any]:
    """The sweep page's scatter: the swept axes (grid keys with more than one value) and every finished
    cell's grid values, recovered HM, name and link."""
    sweep = report["sweep"]
    grid: dict[str, list[Any]] = sweep.get("grid") or {}
    axes = [k for k, values in grid.items() if len(values) > 1]
    points: list[dict[str, Any]] = sweep.get("points") or [{}]
    cells = []
    for row in report["jobs"]:
        rec = row.get("recovered") or {}
        hm = rec.get("hm") if isinstance(rec, dict) else None
        if not isinstance(hm, int | float) or isinstance(hm, bool):
            continue
        params = points[row["point"]] if 0 <= row["point"] < len(points) else {}
        setting = ", ".join(f"{k}={params.get(k)}" for k in axes)
        cells.append(
            {
                "params": params,
                "hm": float(hm),
                "label": f"{row['dataset']} seed {row['seed']}" + (f" ({setting})" if setting else ""),
                "href": f"/jobs/{row['job_id']}",
            }
        )
    return {"axes": axes, "cells": cells}


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
    """The REST report formats (json, csv, tex, html) for the logged-in viewer: the HTML one opens in the
    browser (our own Jinja-rendered page, served sandboxed: no scripts, nothing loaded from elsewhere;
    ``?download=1`` downloads it), the others download."""
    if viewer is None:
        return to_login(request)
    sweep = repo.get_sweep(session, viewer.project_id, sweep_id)
    if sweep is None or fmt not in ("json", "csv", "tex", "html"):
        return not_found(request, viewer, f"sweep {sweep_id} report.{fmt}")
    report = sweep_service.sweep_report(session, get_store(settings), sweep)
    body, media_type = sweep_service.render_report(report, fmt, str(request.base_url) + "jobs/")
    inline = fmt == "html" and request.query_params.get("download") != "1"
    disposition = f'{"inline" if inline else "attachment"}; filename="{sweep.id}-report.{fmt}"'
    headers = {"Content-Disposition": disposition, "X-Content-Type-Options": "nosniff"}
    if fmt == "html":
        headers["Content-Security-Policy"] = "sandbox; default-src 'none'; style-src 'unsafe-inline'"
    return Response(body, media_type=media_type, headers=headers)


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
