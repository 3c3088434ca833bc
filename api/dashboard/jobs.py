"""The jobs list at ``/``: newest first by keyset pages, or searched and sorted by any column by page
number, filtered by status and dataset, with the queue health panel. ``columns=lr,w_lmc`` adds the
jobs' resolved hyperparameters (and ``name``, ``backbone``, ``dataset``) as sortable columns; the choice
is kept per browser in a cookie (``columns=`` empty resets it)."""

from __future__ import annotations

import math
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from mergetune.api.dashboard.auth import Viewer, ViewerDep, to_login
from mergetune.api.dashboard.overview import queue_health
from mergetune.api.dashboard.queries import (
    COLUMNS_COOKIE,
    HP_NAMES,
    JOB_FIELDS,
    PAGE_SIZE,
    column_sort_key,
    column_value,
    parse_columns,
    project_checkpoints,
    project_datasets,
)
from mergetune.api.dashboard.render import STATUSES, render
from mergetune.api.deps import SessionDep
from mergetune.common.models import Dataset, Job

SORT_KEYS = ("created", "base", "novel", "hm", "hm_gain", "duration", "name")
SEARCH_LIMIT = 5000  # jobs of a project a search or a sort looks at (newest first)

router = APIRouter(include_in_schema=False)


@router.get("/")
def job_list(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    status: str | None = None,
    dataset_id: str | None = None,
    after: str | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = PAGE_SIZE,
    q: Annotated[str, Query(max_length=200)] = "",
    sort: str = "",
    order: str = "desc",
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
    columns: Annotated[list[str] | None, Query(max_length=100)] = None,
) -> Response:
    if viewer is None:
        return to_login(request)
    given = columns is not None
    raw = (
        ",".join(columns)
        if columns is not None
        else request.cookies.get(COLUMNS_COOKIE, "").replace(".", ",")
    )
    cols, unknown, problem = parse_columns(raw)
    response = _job_list_page(
        request, session, viewer, status, dataset_id, after, limit, q, sort, order, page, cols, problem
    )
    if given:
        if cols:  # the valid names are remembered; an empty choice forgets
            response.set_cookie(
                COLUMNS_COOKIE, ".".join(cols), max_age=365 * 86400, httponly=True, samesite="lax"
            )
        elif not unknown:
            response.delete_cookie(COLUMNS_COOKIE, httponly=True, samesite="lax")
    if problem and given:
        response.status_code = 422
    return response


def _job_list_page(
    request: Request,
    session: Session,
    viewer: Viewer,
    status: str | None,
    dataset_id: str | None,
    after: str | None,
    limit: int,
    q: str,
    sort: str,
    order: str,
    page: int,
    cols: list[str],
    problem: str | None,
) -> Response:
    if q.strip() or sort in SORT_KEYS or sort in cols:
        return _job_list_sorted(
            request, session, viewer, status, dataset_id, limit, q.strip(), sort, order, page, cols, problem
        )
    query, status = _job_query(viewer, status, dataset_id)
    if after:
        query = query.where(Job.id < after)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(limit + 1)))
    jobs, more = rows[:limit], len(rows) > limit
    lists = _job_list_names(session, viewer)
    base = {k: v for k, v in (("status", status), ("dataset_id", dataset_id)) if v}
    if limit != PAGE_SIZE:
        base["limit"] = str(limit)
    if cols:
        base["columns"] = ",".join(cols)
    next_url = "/?" + urlencode({**base, "after": jobs[-1].id}) if more and jobs else None
    first_url = "/?" + urlencode(base) if after else None
    page_urls = (next_url, first_url)
    return _render_jobs(
        request,
        session,
        viewer,
        lists,
        jobs,
        status,
        dataset_id,
        page_urls,
        q="",
        sort="",
        order="desc",
        sort_url=lambda key: _sort_url(base, key, "", "desc"),
        columns=cols,
        columns_problem=problem,
    )


def _job_query(viewer: Viewer, status: str | None, dataset_id: str | None) -> tuple[Any, str | None]:
    """The project's jobs filtered by status (None unless a known one) and dataset; and that status."""
    query = select(Job).where(Job.project_id == viewer.project_id)
    if status in STATUSES:
        query = query.where(Job.status == status)
    else:
        status = None
    if dataset_id:
        query = query.where(Job.dataset_id == dataset_id)
    return query, status


def _job_list_names(session: Session, viewer: Viewer) -> tuple[list[Dataset], dict[str, str], dict[str, str]]:
    """The project's datasets, dataset names by id and checkpoint names by id, for the jobs list."""
    datasets = project_datasets(session, viewer)
    ckpt_names = {c.id: c.name for c in project_checkpoints(session, viewer)}
    return datasets, {d.id: d.name for d in datasets}, ckpt_names


def _render_jobs(
    request: Request,
    session: Session,
    viewer: Viewer,
    lists: tuple[list[Dataset], dict[str, str], dict[str, str]],
    jobs: list[Job],
    status: str | None,
    dataset_id: str | None,
    page_urls: tuple[str | None, str | None],
    **context: Any,
) -> Response:
    """The jobs page: ``lists`` from _job_list_names, the (next, first) page links, the queue health,
    and the page's own search/sort context."""
    datasets, names, ckpt_names = lists
    cols: list[str] = context.get("columns") or []
    context["column_values"] = {j.id: {c: column_value(j, c, names) for c in cols} for j in jobs}
    context.update(hp_names=HP_NAMES, job_fields=JOB_FIELDS)
    return render(
        request,
        "jobs.html",
        viewer,
        jobs=jobs,
        dataset_names=names,
        checkpoint_names=ckpt_names,
        datasets=datasets,
        status=status,
        dataset_id=dataset_id,
        next_url=page_urls[0],
        first_url=page_urls[1],
        health=queue_health(session, viewer.project_id),
        **context,
    )


def job_row_values(job: Job) -> dict[str, Any]:
    """The sortable values of a job: recovered base/novel/HM, the HM gain over the fine-tuned model,
    the run time in seconds, its name and creation time (None where a job has none)."""
    metrics = job.metrics if isinstance(job.metrics, dict) else {}
    rec: dict[str, Any] = metrics["recovered"] if isinstance(metrics.get("recovered"), dict) else {}
    ft: dict[str, Any] = metrics["fine_tuned"] if isinstance(metrics.get("fine_tuned"), dict) else {}

    def num(d: dict[str, Any], k: str) -> float | None:
        v = d.get(k)
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    hm, ft_hm = num(rec, "hm"), num(ft, "hm")
    duration = (
        (job.finished_at - job.started_at).total_seconds() if job.started_at and job.finished_at else None
    )
    return {
        "created": job.created_at.timestamp() if job.created_at else None,
        "base": num(rec, "base"),
        "novel": num(rec, "novel"),
        "hm": hm,
        "hm_gain": hm - ft_hm if hm is not None and ft_hm is not None else None,
        "duration": duration,
        "name": str((job.metadata_ or {}).get("name") or "").lower() or None,
    }


def _sort_url(base: dict[str, str], key: str, current: str, order: str) -> str:
    flip = "asc" if key == current and order == "desc" else "desc"
    return "/?" + urlencode({**base, "sort": key, "order": flip})


def _job_list_sorted(
    request: Request,
    session: Session,
    viewer: Viewer,
    status: str | None,
    dataset_id: str | None,
    limit: int,
    q: str,
    sort: str,
    order: str,
    page: int,
    cols: list[str],
    problem: str | None,
) -> Response:
    """Search (job id or name, tag, checkpoint name or id, dataset name or id; case-insensitive) and
    sort by any column, over the project's newest SEARCH_LIMIT jobs; pages by number."""
    query, status = _job_query(viewer, status, dataset_id)
    rows = list(session.scalars(query.order_by(Job.id.desc()).limit(SEARCH_LIMIT)))
    lists = _job_list_names(session, viewer)
    _, names, ckpt_names = lists
    if q:
        needle = q.lower()

        def hay(job: Job) -> str:
            meta = job.metadata_ or {}
            parts = [
                job.id,
                str(meta.get("name") or ""),
                " ".join(str(t) for t in job.tags or []),
                job.notes or "",
            ]
            parts += [job.checkpoint_id, ckpt_names.get(job.checkpoint_id, ""), job.dataset_id]
            parts += [names.get(job.dataset_id, ""), str((job.backbone or {}).get("model") or "")]
            return "\n".join(parts).lower()

        rows = [j for j in rows if needle in hay(j)]
    order = "asc" if order == "asc" else "desc"
    if sort in SORT_KEYS or sort in cols:
        values: dict[str, Any] = {
            j.id: job_row_values(j)[sort]
            if sort in SORT_KEYS
            else column_sort_key(column_value(j, sort, names))
            for j in rows
        }
        present = [j for j in rows if values[j.id] is not None]
        present.sort(key=lambda j: (values[j.id], j.id), reverse=order == "desc")
        rows = present + [j for j in rows if values[j.id] is None]  # jobs without the value last
    total = len(rows)
    jobs = rows[(page - 1) * limit : page * limit]
    base = {k: v for k, v in (("status", status), ("dataset_id", dataset_id), ("q", q)) if v}
    if sort in SORT_KEYS or sort in cols:
        base |= {"sort": sort, "order": order}
    if limit != PAGE_SIZE:
        base["limit"] = str(limit)
    if cols:
        base["columns"] = ",".join(cols)
    next_url = "/?" + urlencode({**base, "page": str(page + 1)}) if page * limit < total else None
    first_url = "/?" + urlencode(base) if page > 1 else None
    sort_base = {k: v for k, v in base.items() if k not in ("sort", "order")}
    page_urls = (next_url, first_url)
    return _render_jobs(
        request,
        session,
        viewer,
        lists,
        jobs,
        status,
        dataset_id,
        page_urls,
        q=q,
        sort=sort if sort in SORT_KEYS or sort in cols else "",
        order=order,
        total=total,
        sort_url=lambda key: _sort_url(sort_base, key, sort, order),
        columns=cols,
        columns_problem=problem,
    )
