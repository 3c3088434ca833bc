"""The MLOps dashboard: server-rendered pages under ``/`` plus two tiny JSON endpoints for polling.

Login takes an API token (the same bearer tokens the REST API uses) and keeps it in an HttpOnly,
SameSite=Strict cookie; every page and JSON endpoint resolves the cookie to the token's project and
shows only that project's objects (other projects' ids answer 404, like the REST API). Without a
valid cookie, pages redirect to ``/login`` and JSON endpoints answer 401. State-changing forms
(new job, cancel, logout) carry a CSRF token derived from the cookie (an HMAC), checked on POST.

Job creation and cancellation go through the same service functions as ``POST /v1/jobs`` and
``POST /v1/jobs/{id}/cancel`` so the dashboard never bypasses validation or the enqueue-after-commit
rule. Everything else is read-only SQL over the shared ORM models.

Wire it with ``app.include_router(dashboard.router)`` (static files are served by a route of this
router, so nothing has to be mounted).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import mimetypes
import secrets
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates
from markupsafe import Markup
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from mergetune.api.deps import SessionDep, SettingsDep
from mergetune.api.errors import ApiError, error_body
from mergetune.api.hygiene import has_control
from mergetune.api.schemas import DatasetCreate, JobCreate, JobUpdate
from mergetune.api.services import jobs as job_service
from mergetune.api.services import sweeps as sweep_service
from mergetune.common import repositories as repo
from mergetune.common.models import (
    ACTIVE_STATUSES,
    TERMINAL_STATUSES,
    ApiToken,
    Artifact,
    Checkpoint,
    CheckpointStatus,
    Dataset,
    Job,
    JobEvent,
    JobStatus,
)
from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactNotFound, get_store
from mergetune.core.config import (
    BackboneSpec,
    HeadHyperparameters,
    Hyperparameters,
    Method,
    MMAHyperparameters,
    PromptOptions,
    Protocol,
)

logger = logging.getLogger(__name__)

HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"
COOKIE = "mergetune_token"
PAGE_SIZE = 20
EVENTS_PAGE = 200
WORKER_RECENT = timedelta(seconds=60)
TERMINAL = {s.value for s in TERMINAL_STATUSES}
STATUSES = [s.value for s in JobStatus]

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


# ------------------------------------------------------------------------------------ template helpers


def _fmt_time(value: datetime | None) -> str:
    if value is None:
        return "—"
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _fmt_duration(start: datetime | None, end: datetime | None) -> str:
    if start is None:
        return "—"
    seconds = int(((end or datetime.now(UTC)) - start).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def _fmt_num(value: Any, digits: int = 2) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "—"
    return f"{value:.{digits}f}"


def _fmt_bytes(value: int | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(value)  # pragma: no cover


def _fmt_ago(value: datetime | None) -> str:
    """ "3 min ago" style (the UTC time goes in a title next to it)."""
    if value is None:
        return "—"
    seconds = max(0, int((datetime.now(UTC) - value.astimezone(UTC)).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"


templates.env.filters["time"] = _fmt_time
templates.env.filters["ago"] = _fmt_ago
templates.env.filters["num"] = _fmt_num
templates.env.filters["bytes"] = _fmt_bytes
templates.env.globals["duration"] = _fmt_duration
templates.env.globals["TERMINAL"] = TERMINAL


# ------------------------------------------------------------------------------------------------ auth


class Viewer:
    """The logged-in token: its project and the CSRF token for its forms."""

    def __init__(self, token: ApiToken, raw: str) -> None:
        self.token = token
        self.project_id = token.project_id
        self.project_name = token.project.name if token.project is not None else token.project_id
        self.csrf = csrf_token(raw)


def csrf_token(raw: str) -> str:
    """A per-token CSRF value: forging it needs the HttpOnly cookie, which scripts cannot read."""
    return hmac.new(raw.encode("utf-8"), b"mergetune-dashboard-csrf", hashlib.sha256).hexdigest()


def _lookup(session: Session, raw: str | None) -> ApiToken | None:
    """The usable token for the cookie/form value: unknown, revoked and expired tokens read as None."""
    if not raw or len(raw) > 512:
        return None
    token = session.scalar(select(ApiToken).where(ApiToken.token_hash == repo.hash_token(raw)))
    return token if token is not None and repo.token_refusal(token) is None else None


def get_viewer(request: Request, session: SessionDep) -> Viewer | None:
    """The logged-in viewer from the cookie, or None (pages then redirect, JSON answers 401)."""
    raw = request.cookies.get(COOKIE)
    token = _lookup(session, raw)
    return Viewer(token, raw) if token is not None and raw else None


ViewerDep = Annotated[Viewer | None, Depends(get_viewer)]


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?{urlencode({'next': target})}", status_code=303)


def _safe_next(target: str | None) -> str:
    # Only same-site paths: no scheme, no host, no protocol-relative "//evil".
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _check_csrf(viewer: Viewer, value: str | None) -> bool:
    return bool(value) and hmac.compare_digest(viewer.csrf, value or "")


def _render(request: Request, name: str, viewer: Viewer | None, status_code: int = 200, **context: Any):
    context.update(viewer=viewer, statuses=STATUSES, nav=name.removesuffix(".html"))
    return templates.TemplateResponse(request, name, context, status_code=status_code)


def _not_found(request: Request, viewer: Viewer, what: str) -> Response:
    return _render(request, "not_found.html", viewer, status_code=404, what=what)


# --------------------------------------------------------------------------------------------- queries


def _job(session: Session, viewer: Viewer, job_id: str) -> Job | None:
    return session.scalar(select(Job).where(Job.id == job_id, Job.project_id == viewer.project_id))


def _artifacts(session: Session, job_id: str) -> list[Artifact]:
    return list(session.scalars(select(Artifact).where(Artifact.job_id == job_id).order_by(Artifact.name)))


def _events(session: Session, job_id: str, after: int = 0) -> list[JobEvent]:
    query = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.id > after)
        .order_by(JobEvent.id)
        .limit(EVENTS_PAGE)
    )
    return list(session.scalars(query))


def _latest_events(session: Session, job_id: str) -> tuple[list[JobEvent], int]:
    """The newest EVENTS_PAGE events in order, and how many the job has in all."""
    query = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id.desc()).limit(EVENTS_PAGE)
    total = session.scalar(select(func.count()).select_from(JobEvent).where(JobEvent.job_id == job_id)) or 0
    return list(session.scalars(query))[::-1], int(total)


def _checkpoints(session: Session, viewer: Viewer) -> list[Checkpoint]:
    query = (
        select(Checkpoint)
        .where(Checkpoint.project_id == viewer.project_id, Checkpoint.deleted_at.is_(None))
        .order_by(Checkpoint.id.desc())
    )
    return list(session.scalars(query))


def _datasets(session: Session, viewer: Viewer) -> list[Dataset]:
    query = select(Dataset).where(Dataset.project_id == viewer.project_id).order_by(Dataset.id.desc())
    return list(session.scalars(query))


def queue_health(session: Session, project_id: str) -> dict[str, Any]:
    """Queue depth and activity over all projects (one queue serves them all) + recent workers. A
    worker busy with another project's job shows as ``busy`` without that job's id."""
    counts = repo.count_jobs_by_status(session)
    active = sum(counts.get(s.value, 0) for s in ACTIVE_STATUSES)
    workers = sorted(repo.live_workers(session, datetime.now(UTC) - WORKER_RECENT), key=lambda w: w.hostname)
    running = {w.current_job_id for w in workers if w.current_job_id}
    own = (
        set(session.scalars(select(Job.id).where(Job.id.in_(running), Job.project_id == project_id)))
        if running
        else set()
    )
    return {
        "queued": counts.get(JobStatus.queued.value, 0) + counts.get(JobStatus.validating.value, 0),
        "running": active,
        "workers": [
            {
                "hostname": w.hostname,
                "last_seen": _fmt_time(w.last_seen),
                "age_s": int((datetime.now(UTC) - w.last_seen).total_seconds()),
                "current_job_id": w.current_job_id if w.current_job_id in own else None,
                "busy": w.current_job_id is not None,
            }
            for w in workers
        ],
    }


def status_history(session: Session, job_id: str) -> list[dict[str, Any]]:
    """The job's status changes as the server recorded them (its "status" events), oldest first, with
    repeats folded: [{"status", "at", "message"}]."""
    query = (
        select(JobEvent)
        .where(JobEvent.job_id == job_id, JobEvent.type == "status")
        .order_by(JobEvent.id)
        .limit(1000)
    )
    out: list[dict[str, Any]] = []
    for e in session.scalars(query):
        st = (e.data or {}).get("status") if isinstance(e.data, dict) else None
        if isinstance(st, str) and (not out or out[-1]["status"] != st):
            out.append({"status": st, "at": _fmt_time(e.created_at), "message": e.message})
    return out


EPOCH_KEYS = ("loss", "ce", "zs", "lmc", "val_acc")


def epoch_series(session: Session, job_id: str) -> list[dict[str, Any]]:
    """Per-epoch means from the job's "epoch" events (loss parts, validation accuracy), by epoch; a
    resumed job's repeated epoch keeps its last record. What the live chart draws."""
    query = (
        select(JobEvent.data).where(JobEvent.job_id == job_id, JobEvent.type == "epoch").order_by(JobEvent.id)
    )
    by_epoch: dict[int, dict[str, Any]] = {}
    for data in session.scalars(query.limit(5000)):
        if not isinstance(data, dict) or not isinstance(data.get("epoch"), int):
            continue
        raw = data.get("record")
        record: dict[str, Any] = raw if isinstance(raw, dict) else {}
        row: dict[str, Any] = {"epoch": data["epoch"]}
        for key in EPOCH_KEYS:
            value = record.get(key, data.get(key) if key == "loss" else None)
            if isinstance(value, int | float) and math.isfinite(value):
                row[key] = float(value)
        by_epoch[data["epoch"]] = row
    return [by_epoch[k] for k in sorted(by_epoch)]


def _event_json(event: JobEvent, seq: int | None = None) -> dict[str, Any]:
    return {
        "id": event.id,
        "seq": seq,
        "created_at": _fmt_time(event.created_at),
        "level": event.level,
        "type": event.type,
        "message": event.message,
    }


def _queue_facts(session: Session, settings: Settings, job: Job) -> dict[str, Any]:
    """Queue position and estimated finish, computed exactly as ``GET /v1/jobs/{id}`` does."""
    read = job_service.job_read(session, settings, job)
    return {
        "queue_position": read.queue_position,
        "estimated_finish": _fmt_time(read.estimated_finish) if read.estimated_finish else "—",
    }


def job_live(session: Session, settings: Settings, job: Job, after: int = 0) -> dict[str, Any]:
    """What the job page polls: status, progress, metrics, queue facts, new events."""
    return {
        "id": job.id,
        "status": job.status,
        **_queue_facts(session, settings, job),
        "terminal": job.status in TERMINAL,
        "progress": job.progress or {},
        "metrics": job.metrics,
        "error": job.error,
        "started_at": _fmt_time(job.started_at),
        "finished_at": _fmt_time(job.finished_at),
        "duration": _fmt_duration(job.started_at, job.finished_at),
        "worker_host": job.worker_host,
        "events": [
            _event_json(e, first + i)
            for first in [job_service.event_seq_before(session, job.id, after or None) + 1]
            for i, e in enumerate(_events(session, job.id, after))
        ],
        "status_history": status_history(session, job.id),
        "epochs": epoch_series(session, job.id),
    }


# -------------------------------------------------------------------------------------- new-job form

FORM_LABELS = {
    "w_zs": "Zero-shot surrogate weight W",
    "loss_type": "Surrogate loss",
    "w_lmc": "Path weight W_LMC",
    "num_samples": "Path samples K",
    "path_term": "Path term",
    "epochs": "Epochs",
    "lr": "Learning rate",
    "batch_size": "Batch size",
    "shots": "Shots per class",
    "seed": "Seed",
    "precision": "Precision",
    "momentum": "SGD momentum",
    "weight_decay": "Weight decay",
    "warmup_epochs": "Warm-up epochs",
    "warmup_lr": "Warm-up learning rate",
    "feature_mode": "Feature mode",
    "bank_views": "Bank views V (bank mode)",
    "curve_step": "Curve alpha step",
    "lam": "Head lambda (linear heads)",
    "adapter_scale": "Adapter scale (MMA)",
    "gradient_scale": "MMA gradient-scale layers",
    "normalise_endpoints": "Normalised path endpoints (MMA)",
}


def _bounds(info: Any) -> tuple[Any, Any]:
    lo = hi = None
    for m in info.metadata:
        lo = getattr(m, "ge", getattr(m, "gt", lo))
        hi = getattr(m, "le", getattr(m, "lt", hi))
    return lo, hi


def _default(info: Any) -> Any:
    return info.default.value if hasattr(info.default, "value") else info.default


def hyperparameter_fields() -> list[dict[str, Any]]:
    """Every hyperparameter ``POST /v1/jobs`` accepts (prompt jobs, then the linear-head-only ones, then
    the MMA-only ones), with its real default (and the linear-head or MMA default where it differs),
    range or choices. ``applies``: both (prompt and head jobs), prompt, head or mma (MMA jobs only)."""
    prompt, head, mma = (
        Hyperparameters.model_fields,
        HeadHyperparameters.model_fields,
        MMAHyperparameters.model_fields,
    )
    names = [*prompt, *(n for n in head if n not in prompt)]
    names += [n for n in mma if n not in names]
    out: list[dict[str, Any]] = []
    for name in names:
        info = prompt.get(name) or head.get(name) or mma[name]
        default = _default(info)
        ann = info.annotation
        field: dict[str, Any] = {"name": name, "label": FORM_LABELS.get(name, name), "default": default}
        if isinstance(ann, type) and issubclass(ann, StrEnum):
            field["kind"], field["choices"] = "choice", [m.value for m in ann]
        elif ann is bool:
            field["kind"], field["choices"] = "bool", ["true", "false"]
            field["default"] = "true" if default else "false"
        else:
            field["kind"] = "int" if ann is int else "float"
            field["min"], field["max"] = _bounds(info)
        if name in prompt:
            field["applies"] = "both" if name in head else "prompt"
        else:
            field["applies"] = "head" if name in head else "mma"
        if field["applies"] == "both" and head[name].default != info.default:
            field["head_default"] = _default(head[name])
        if name in mma and name in prompt and mma[name].default != info.default:
            md = _default(mma[name])
            field["mma_default"] = ("true" if md else "false") if ann is bool else md
        out.append(field)
    return out


HP_FIELDS = hyperparameter_fields()
templates.env.globals["HP_FIELDS"] = HP_FIELDS


class FormError(Exception):
    """A message for the person filling the new-job form."""


def default_form() -> dict[str, str]:
    # The bundled tiny CLIP is the one backbone every installation has; a fresh idempotency key per
    # rendered form turns a double submit into one job.
    return {
        "backbone_model": "tiny-clip",
        "backbone_pretrained": "builtin",
        "idempotency_key": secrets.token_hex(16),
    }


def job_create_from_form(session: Session, viewer: Viewer, form: dict[str, str]) -> JobCreate:
    """The ``POST /v1/jobs`` body the form describes (only fields the checkpoint's method knows)."""
    checkpoint = repo.get_checkpoint(session, viewer.project_id, form.get("checkpoint_id", ""))
    if checkpoint is None:
        raise FormError("Pick a checkpoint of this project.")
    is_head = checkpoint.method == Method.linear_head.value
    is_mma = checkpoint.method == Method.mma.value
    known = (
        HeadHyperparameters if is_head else MMAHyperparameters if is_mma else Hyperparameters
    ).model_fields
    hyperparameters: dict[str, Any] = {}
    for field in HP_FIELDS:
        name = field["name"]
        text = (form.get(name) or "").strip()
        if not text or name not in known:
            continue
        if field["kind"] in ("choice", "bool"):
            if text not in field["choices"]:
                raise FormError(f"{name} must be one of {', '.join(field['choices'])}, not {text!r}.")
            hyperparameters[name] = text == "true" if field["kind"] == "bool" else text
            continue
        try:
            hyperparameters[name] = int(text) if field["kind"] == "int" else float(text)
        except ValueError:
            raise FormError(f"{name} must be a number, not {text!r}.") from None
    metadata = {"name": form["name"].strip()} if (form.get("name") or "").strip() else {}
    protocol_text = (form.get("protocol") or "").strip() or Protocol.base2novel.value
    if protocol_text not in {p.value for p in Protocol}:
        raise FormError(
            f"protocol must be one of {', '.join(p.value for p in Protocol)}, not {protocol_text!r}."
        )
    protocol = Protocol(protocol_text)
    try:
        return JobCreate(
            checkpoint_id=checkpoint.id,
            dataset_id=form.get("dataset_id", ""),
            backbone=BackboneSpec(
                model=form.get("backbone_model", "").strip(),
                pretrained=form.get("backbone_pretrained", "").strip(),
            ),
            hyperparameters=hyperparameters,
            metadata=metadata,
            # empty: the default protocol (base2novel) and the checkpoint's own class-token position
            protocol=protocol,
            prompt=None
            if is_head or is_mma or not (form.get("class_token_position") or "").strip()
            else PromptOptions.model_validate({"class_token_position": form["class_token_position"].strip()}),
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise FormError(f"{where}: {first.get('msg')}") from None


# ------------------------------------------------------------------------------------------- login


@router.get("/login")
def login_page(request: Request, viewer: ViewerDep, next: str = "/") -> Response:
    if viewer is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    return _render(request, "login.html", None, next=_safe_next(next), error=None)


@router.post("/login")
def login(
    request: Request,
    session: SessionDep,
    token: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    raw = token.strip()
    found = _lookup(session, raw)
    if found is None:
        return _render(
            request,
            "login.html",
            None,
            status_code=401,
            next=_safe_next(next),
            error="Unknown or revoked token.",
        )
    found.last_used_at = datetime.now(UTC)
    session.commit()
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        raw,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
        max_age=7 * 24 * 3600,
        path="/",
    )
    logger.info("dashboard login for project %s", found.project_id)
    return response


@router.post("/logout")
def logout(viewer: ViewerDep, csrf: Annotated[str, Form()] = "") -> Response:
    if viewer is not None and not _check_csrf(viewer, csrf):
        return Response("bad CSRF token", status_code=403)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


# -------------------------------------------------------------------------------------------- pages


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
) -> Response:
    if viewer is None:
        return _to_login(request)
    if q.strip() or sort in SORT_KEYS:
        return _job_list_sorted(
            request, session, viewer, status, dataset_id, limit, q.strip(), sort, order, page
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
    datasets = _datasets(session, viewer)
    ckpt_names = {c.id: c.name for c in _checkpoints(session, viewer)}
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
    return _render(
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


SORT_KEYS = ("created", "base", "novel", "hm", "hm_gain", "duration", "name")
SEARCH_LIMIT = 5000  # jobs of a project a search or a sort looks at (newest first)


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
    if sort in SORT_KEYS:
        values = {j.id: job_row_values(j)[sort] for j in rows}
        present = [j for j in rows if values[j.id] is not None]
        present.sort(key=lambda j: (values[j.id], j.id), reverse=order == "desc")
        rows = present + [j for j in rows if values[j.id] is None]  # jobs without the value last
    total = len(rows)
    jobs = rows[(page - 1) * limit : page * limit]
    base = {k: v for k, v in (("status", status), ("dataset_id", dataset_id), ("q", q)) if v}
    if sort in SORT_KEYS:
        base |= {"sort": sort, "order": order}
    if limit != PAGE_SIZE:
        base["limit"] = str(limit)
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
        sort=sort if sort in SORT_KEYS else "",
        order=order,
        total=total,
        sort_url=lambda key: _sort_url(sort_base, key, sort, order),
    )


def clone_form(job: Job) -> dict[str, str]:
    """The new-job form filled in from ``job``: same checkpoint, dataset, backbone, protocol, class-token
    position and resolved hyperparameters, a fresh idempotency key, the name marked as a clone."""
    form = default_form()
    form |= {
        "checkpoint_id": job.checkpoint_id,
        "dataset_id": job.dataset_id,
        "backbone_model": str((job.backbone or {}).get("model") or form["backbone_model"]),
        "backbone_pretrained": str((job.backbone or {}).get("pretrained") or form["backbone_pretrained"]),
    }
    if job.protocol and job.protocol != Protocol.base2novel.value:
        form["protocol"] = job.protocol
    position = (job.prompt or {}).get("class_token_position") if isinstance(job.prompt, dict) else None
    if position:
        form["class_token_position"] = str(position)
    for key, value in (job.hyperparameters or {}).items():
        if value is not None:
            form[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    name = str((job.metadata_ or {}).get("name") or job.id)
    form["name"] = f"{name} (clone)"[:200]
    return form


@router.get("/jobs/new")
def new_job_page(request: Request, session: SessionDep, viewer: ViewerDep, clone: str = "") -> Response:
    if viewer is None:
        return _to_login(request)
    source = _job(session, viewer, clone) if clone else None
    if clone and source is None:
        return _not_found(request, viewer, f"job {clone}")
    return _new_job_page(
        request,
        session,
        viewer,
        error=None,
        form=clone_form(source) if source is not None else default_form(),
        cloned_from=source.id if source is not None else None,
    )


def _new_job_page(
    request: Request, session: Session, viewer: Viewer, status_code: int = 200, **context: Any
) -> Response:
    """The new-job form over the project's ready checkpoints and its datasets."""
    checkpoints = [c for c in _checkpoints(session, viewer) if c.status == CheckpointStatus.ready.value]
    return _render(
        request,
        "new_job.html",
        viewer,
        status_code=status_code,
        checkpoints=checkpoints,
        datasets=_datasets(session, viewer),
        **context,
    )


@router.post("/jobs")
async def create_job(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep
) -> Response:
    if viewer is None:
        return _to_login(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    bad = next((k for k, v in form.items() if has_control(k) or has_control(v)), None)
    if bad is not None:  # urlencoded forms are refused at the edge; multipart ones here
        name = bad.encode("unicode_escape").decode("ascii")
        message = f"{name}: control characters are not allowed"
        return JSONResponse(error_body("invalid_characters", message, name), status_code=422)
    if not _check_csrf(viewer, form.get("csrf")):
        return Response("bad CSRF token", status_code=403)
    try:
        body = job_create_from_form(session, viewer, form)
        job, _ = job_service.create_job(
            session, settings, viewer.project_id, body, idempotency_key=form.get("idempotency_key") or None
        )
    except (FormError, ApiError) as exc:
        return _new_job_page(
            request,
            session,
            viewer,
            status_code=422,
            error=getattr(exc, "message", None) or str(exc),
            error_param=getattr(exc, "param", None),
            form={**default_form(), **form},
        )
    return RedirectResponse(f"/jobs/{quote(job.id)}", status_code=303)


TRAINING_PANELS = (
    ("loss", "total loss"),
    ("ce", "cross-entropy"),
    ("zs", "zero-shot surrogate"),
    ("lmc", "path term"),
    ("val_acc", "validation accuracy (%)"),
)
REPORT_MAX_BYTES = 64 * 2**20


def _training_log(settings: Settings, artifacts: list[Artifact]) -> list[dict[str, Any]]:
    """The per-epoch records of a finished job's report.json (empty when there is none)."""
    art = next((a for a in artifacts if a.name == "report.json"), None)
    if art is None or (art.bytes or 0) > REPORT_MAX_BYTES:
        return []
    try:
        report = json.loads(get_store(settings).get_bytes(art.key))
    except (ArtifactNotFound, OSError, ValueError):
        logger.warning("report.json of artifact %s is unreadable", art.key, exc_info=True)
        return []
    rows = report.get("training") if isinstance(report, dict) else None
    return [r for r in rows if isinstance(r, dict)] if isinstance(rows, list) else []


def training_charts(rows: list[dict[str, Any]], width: int = 240, height: int = 120) -> list[dict[str, Any]]:
    """One small SVG line chart per training record that has finite values (server-side, no script)."""
    charts = []
    for key, title in TRAINING_PANELS:
        pts = [
            (float(r.get("epoch", i)), float(v))
            for i, r in enumerate(rows)
            if isinstance(v := r.get(key), int | float) and math.isfinite(v)
        ]
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
        pad, w, h = 6.0, width - 12.0, height - 12.0
        line = " ".join(
            f"{pad + (x - x0) / ((x1 - x0) or 1.0) * w:.1f},{height - pad - (y - y0) / ((y1 - y0) or 1.0) * h:.1f}"
            for x, y in pts
        )
        svg = (
            f'<svg viewBox="0 0 {width} {height}" width="{width}" height="{height}" role="img" '
            f'aria-label="{title}"><rect x="0" y="0" width="{width}" height="{height}" fill="none" '
            f'stroke="#d8dde3"/><polyline fill="none" stroke="#2458b3" stroke-width="1.5" points="{line}"/></svg>'
        )
        charts.append(
            {"key": key, "title": title, "svg": Markup(svg), "first": ys[0], "last": ys[-1], "min": y0}
            | {"max": y1}
        )
    return charts


@router.get("/jobs/{job_id}")
def job_detail(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    settings: SettingsDep,
    job_id: str,
    annotate_error: Annotated[str, Query(max_length=500)] = "",
) -> Response:
    if viewer is None:
        return _to_login(request)
    job = _job(session, viewer, job_id)
    if job is None:
        return _not_found(request, viewer, f"job {job_id}")
    artifacts = _artifacts(session, job.id)
    events, events_total = _latest_events(session, job.id)
    return _render(
        request,
        "job.html",
        viewer,
        job=job,
        artifacts=artifacts,
        artifact_names={a.name for a in artifacts},
        events=events,
        events_total=events_total,
        first_event_seq=events_total - len(events) + 1,
        status_history=status_history(session, job.id),
        epochs=epoch_series(session, job.id),
        annotate_error=annotate_error,
        last_event_id=events[-1].id if events else 0,
        dataset=session.get(Dataset, job.dataset_id),
        checkpoint=session.get(Checkpoint, job.checkpoint_id),
        queue=_queue_facts(session, settings, job),
        training=training_charts(_training_log(settings, artifacts)) if job.status == "succeeded" else [],
    )


COMPARE_MAX = 8
COMPARE_METRICS = (("zero_shot", "zero-shot"), ("fine_tuned", "fine-tuned"), ("recovered", "recovered"))


def _report_json(settings: Settings, job_id: str, artifacts: list[Artifact]) -> dict[str, Any]:
    art = next((a for a in artifacts if a.name == "report.json"), None)
    if art is None or (art.bytes or 0) > REPORT_MAX_BYTES:
        return {}
    try:
        report = json.loads(get_store(settings).get_bytes(art.key))
    except (ArtifactNotFound, OSError, ValueError):
        logger.warning("report.json of job %s is unreadable", job_id, exc_info=True)
        return {}
    return report if isinstance(report, dict) else {}


def interpolation_hm(
    report: dict[str, Any], space: str = "classifier", segment: str = "zs_rec"
) -> list[list[float]]:
    """[[alpha, HM of base and novel accuracy]] along one interpolation segment of report.json."""
    curves: dict[str, Any] = report["curves"] if isinstance(report.get("curves"), dict) else {}
    by_space: dict[str, Any] = curves[space] if isinstance(curves.get(space), dict) else {}
    seg = by_space.get(segment)
    if not isinstance(seg, dict):
        return []
    out = []
    for a, b, n in zip(
        seg.get("alphas") or [], seg.get("base_acc") or [], seg.get("novel_acc") or [], strict=False
    ):
        if all(isinstance(v, int | float) and math.isfinite(v) for v in (a, b, n)):
            out.append([float(a), 2 * b * n / (b + n) if b + n > 0 else 0.0])
    return out


def compare_context(session: Session, settings: Settings, jobs: list[Job]) -> dict[str, Any]:
    """Side by side: metrics (zero-shot, fine-tuned, recovered x base, novel, HM) with the verdict, the
    settings with differing keys marked, and each job's curves for the overlaid charts."""
    settings_rows: dict[str, list[Any]] = {}

    def put(key: str, index: int, value: Any) -> None:
        settings_rows.setdefault(key, [None] * len(jobs))[index] = value

    series = []
    for i, job in enumerate(jobs):
        put("checkpoint_id", i, job.checkpoint_id)
        put("dataset_id", i, job.dataset_id)
        put("backbone", i, f"{(job.backbone or {}).get('model')} / {(job.backbone or {}).get('pretrained')}")
        put("protocol", i, job.protocol or Protocol.base2novel.value)
        for key, value in sorted((job.hyperparameters or {}).items()):
            put(f"hyperparameters.{key}", i, value)
        report = (
            _report_json(settings, job.id, _artifacts(session, job.id)) if job.status == "succeeded" else {}
        )
        series.append(
            {
                "id": job.id,
                "label": str((job.metadata_ or {}).get("name") or job.id),
                "epochs": epoch_series(session, job.id),
                "interpolation": interpolation_hm(report),
            }
        )
    rows = [
        {"key": k, "values": v, "differs": len({json.dumps(x, sort_keys=True, default=str) for x in v}) > 1}
        for k, v in settings_rows.items()
    ]
    best: dict[str, float] = {}
    for job in jobs:
        for key, _ in COMPARE_METRICS:
            for split in ("base", "novel", "hm"):
                v = ((job.metrics or {}).get(key) or {}).get(split)
                if isinstance(v, int | float):
                    best[f"{key}.{split}"] = max(best.get(f"{key}.{split}", float("-inf")), float(v))
    return {"settings_rows": rows, "series": series, "best": best, "metric_groups": COMPARE_METRICS}


@router.get("/compare")
def compare_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    settings: SettingsDep,
    ids: Annotated[list[str] | None, Query(max_length=COMPARE_MAX + 1)] = None,
) -> Response:
    """``/compare?ids=job_a&ids=job_b``: 2-8 jobs of the project side by side (a shareable URL)."""
    if viewer is None:
        return _to_login(request)
    wanted = list(dict.fromkeys(i.strip() for i in ids or [] if i.strip()))
    jobs = [j for j in (_job(session, viewer, i) for i in wanted[:COMPARE_MAX]) if j is not None]
    missing = [i for i in wanted[:COMPARE_MAX] if i not in {j.id for j in jobs}]
    problem = None
    if len(wanted) > COMPARE_MAX:
        problem = f"ids: compare at most {COMPARE_MAX} jobs at once ({len(wanted)} selected)."
    elif missing:
        problem = f"ids: no job {', '.join(missing)} in this project."
    elif len(jobs) < 2:
        problem = "ids: select at least 2 jobs in the list to compare them."
    context = compare_context(session, settings, jobs) if not problem else {}
    return _render(
        request,
        "compare.html",
        viewer,
        status_code=200 if not problem else 422,
        jobs=jobs,
        problem=problem,
        **context,
    )


@router.post("/jobs/{job_id}/annotate")
async def annotate_job(request: Request, session: SessionDep, viewer: ViewerDep, job_id: str) -> Response:
    """The job page's name / tags / notes form: the same validation as ``PATCH /v1/jobs/{id}``."""
    if viewer is None:
        return _to_login(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if not _check_csrf(viewer, form.get("csrf")):
        return Response("bad CSRF token", status_code=403)
    job = _job(session, viewer, job_id)
    if job is None:
        return _not_found(request, viewer, f"job {job_id}")
    tags = [t for t in (form.get("tags") or "").split(",") if t.strip()]
    try:
        body = JobUpdate(name=form.get("name") or None, tags=tags, notes=form.get("notes") or None)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = str(first.get("msg", "invalid")).removeprefix("Value error, ")
        return RedirectResponse(
            f"/jobs/{quote(job.id)}?" + urlencode({"annotate_error": f"{where}: {message}"}), status_code=303
        )
    job_service.update_job(session, job, body)
    return RedirectResponse(f"/jobs/{quote(job.id)}#annotations", status_code=303)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(request: Request, session: SessionDep, viewer: ViewerDep, job_id: str) -> Response:
    if viewer is None:
        return _to_login(request)
    form = await request.form()
    csrf = form.get("csrf")
    if not _check_csrf(viewer, csrf if isinstance(csrf, str) else None):
        return Response("bad CSRF token", status_code=403)
    job = _job(session, viewer, job_id)
    if job is None:
        return _not_found(request, viewer, f"job {job_id}")
    if job.status not in TERMINAL:
        try:
            job_service.cancel_job(session, viewer.project_id, job.id)
        except ApiError as exc:  # finished meanwhile: the page shows the final status
            logger.info("dashboard cancel of %s refused: %s", job.id, exc.message)
    return RedirectResponse(f"/jobs/{quote(job.id)}", status_code=303)


@router.get("/jobs/{job_id}/artifacts/{name}")
def job_artifact(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep, job_id: str, name: str
) -> Response:
    if viewer is None:
        return _to_login(request)
    job = _job(session, viewer, job_id)
    artifact = (
        session.scalar(select(Artifact).where(Artifact.job_id == job.id, Artifact.name == name))
        if job is not None
        else None
    )
    if artifact is None:
        return _not_found(request, viewer, f"artifact {name}")
    store = get_store(settings)
    try:
        size = store.size(artifact.key)
    except ArtifactNotFound:
        return _not_found(request, viewer, f"artifact {name}")
    inline = artifact.media_type.startswith(("image/", "text/html"))
    disposition = "inline" if inline else "attachment"
    headers = {
        "Content-Length": str(size),
        "Content-Disposition": f'{disposition}; filename="{quote(artifact.name)}"',
        "X-Content-Type-Options": "nosniff",
    }
    if artifact.media_type.startswith("text/html"):
        # The report is self-contained: no scripts, no external loads.
        headers["Content-Security-Policy"] = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    return StreamingResponse(store.iter_chunks(artifact.key), media_type=artifact.media_type, headers=headers)


@router.get("/checkpoints")
def checkpoint_list(request: Request, session: SessionDep, viewer: ViewerDep, uploaded: str = "") -> Response:
    if viewer is None:
        return _to_login(request)
    return _render(
        request,
        "checkpoints.html",
        viewer,
        checkpoints=_checkpoints(session, viewer),
        uploaded=uploaded,
        idempotency_key=secrets.token_hex(16),
    )


def _error_page(
    request: Request, viewer: Viewer, name: str, status_code: int, message: str, param: str | None, **ctx: Any
) -> Response:
    return _render(
        request,
        name,
        viewer,
        status_code=status_code,
        error=message,
        error_param=param,
        idempotency_key=secrets.token_hex(16),
        **ctx,
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
        return _to_login(request)

    def page(status_code: int, message: str, param: str | None) -> Response:
        return _error_page(
            request,
            viewer,
            "checkpoints.html",
            status_code,
            message,
            param,
            checkpoints=_checkpoints(session, viewer),
        )

    try:
        upload = await receive_multipart(
            request, tmp_dir=settings.tmp_dir, max_bytes=settings.MAX_UPLOAD_BYTES
        )
    except ApiError as exc:
        return page(exc.status_code, exc.message, exc.param)
    try:
        if not _check_csrf(viewer, upload.fields.get("csrf")):
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


@router.get("/datasets")
def dataset_list(request: Request, session: SessionDep, viewer: ViewerDep, registered: str = "") -> Response:
    if viewer is None:
        return _to_login(request)
    return _render(
        request,
        "datasets.html",
        viewer,
        datasets=_datasets(session, viewer),
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
        return _to_login(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    if not _check_csrf(viewer, form.get("csrf")):
        return Response("bad CSRF token", status_code=403)

    def page(status_code: int, message: str, param: str | None) -> Response:
        return _error_page(
            request,
            viewer,
            "datasets.html",
            status_code,
            message,
            param,
            datasets=_datasets(session, viewer),
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


# -------------------------------------------------------------------------------------- JSON polling


@router.get("/ui/jobs/{job_id}/live")
def job_live_json(
    session: SessionDep,
    viewer: ViewerDep,
    settings: SettingsDep,
    job_id: str,
    after: Annotated[int, Query(ge=0)] = 0,
) -> Response:
    if viewer is None:
        return JSONResponse(error_body("unauthenticated", "log in at /login"), status_code=401)
    job = _job(session, viewer, job_id)
    if job is None:
        return JSONResponse(error_body("not_found", f"job {job_id!r} not found", "job_id"), status_code=404)
    return JSONResponse(job_live(session, settings, job, after), headers={"Cache-Control": "no-store"})


@router.get("/ui/overview")
def overview_json(session: SessionDep, viewer: ViewerDep, ids: str = "") -> Response:
    """Health panel numbers and the statuses of the jobs shown on the list page."""
    if viewer is None:
        return JSONResponse(error_body("unauthenticated", "log in at /login"), status_code=401)
    wanted = [i for i in ids.split(",") if i][:100]
    statuses = {}
    if wanted:
        rows = session.execute(
            select(Job.id, Job.status, Job.progress).where(
                Job.project_id == viewer.project_id, Job.id.in_(wanted)
            )
        ).all()
        statuses = {r.id: {"status": r.status, "progress": r.progress or {}} for r in rows}
    return JSONResponse(
        {"health": queue_health(session, viewer.project_id), "jobs": statuses},
        headers={"Cache-Control": "no-store"},
    )


# ------------------------------------------------------------------------------------------- sweeps


@router.get("/sweeps")
def sweep_list(request: Request, session: SessionDep, viewer: ViewerDep) -> Response:
    if viewer is None:
        return _to_login(request)
    page = repo.list_sweeps(session, viewer.project_id, limit=PAGE_SIZE, after=None)
    rows = [sweep_service.sweep_read(session, s) for s in page.items]
    return _render(request, "sweeps.html", viewer, sweeps=rows)


@router.get("/sweeps/{sweep_id}")
def sweep_detail(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep, sweep_id: str
) -> Response:
    """The sweep's table (filled in as cells finish: the page swaps in /ui/sweeps/{id}/table) with a
    link to every cell's job."""
    if viewer is None:
        return _to_login(request)
    sweep = repo.get_sweep(session, viewer.project_id, sweep_id)
    if sweep is None:
        return _not_found(request, viewer, f"sweep {sweep_id}")
    report = sweep_service.sweep_report(session, get_store(settings), sweep)
    return _render(request, "sweep.html", viewer, report=report, job_href="/jobs/")


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
    """The REST report formats (json, csv, tex, html) for the logged-in viewer, as downloads."""
    if viewer is None:
        return _to_login(request)
    sweep = repo.get_sweep(session, viewer.project_id, sweep_id)
    if sweep is None or fmt not in ("json", "csv", "tex", "html"):
        return _not_found(request, viewer, f"sweep {sweep_id} report.{fmt}")
    report = sweep_service.sweep_report(session, get_store(settings), sweep)
    body, media_type = sweep_service.render_report(report, fmt, str(request.base_url) + "jobs/")
    disposition = f'attachment; filename="{sweep.id}-report.{fmt}"'
    return Response(body, media_type=media_type, headers={"Content-Disposition": disposition})


@router.post("/sweeps/{sweep_id}/cancel")
async def cancel_sweep(request: Request, session: SessionDep, viewer: ViewerDep, sweep_id: str) -> Response:
    if viewer is None:
        return _to_login(request)
    form = await request.form()
    if not _check_csrf(viewer, str(form.get("csrf") or "")):
        return Response("invalid CSRF token", status_code=403)
    try:
        sweep_service.cancel_sweep(session, viewer.project_id, sweep_id)
    except ApiError as exc:
        if exc.status_code == 404:
            return _not_found(request, viewer, f"sweep {sweep_id}")
    return RedirectResponse(f"/sweeps/{quote(sweep_id)}", status_code=303)


# ------------------------------------------------------------------------------------------- static

_STATIC_FILES = {p.name: p for p in STATIC_DIR.iterdir() if p.is_file()} if STATIC_DIR.is_dir() else {}


@router.get("/static/{name}")
def static_file(name: str) -> Response:
    path = _STATIC_FILES.get(name)
    if path is None:
        return Response("not found", status_code=404)
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "no-cache"})


__all__ = ["router", "queue_health", "job_live", "csrf_token"]
