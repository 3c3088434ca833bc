"""The new-job form at ``/jobs/new``: its hyperparameter fields (from the job schemas), the form
turned into a ``POST /v1/jobs`` body, a finished job cloned into the form, and ``POST /jobs``.

Job creation goes through the same service function as ``POST /v1/jobs``, so the form never bypasses
validation, idempotency or the enqueue-after-commit rule."""

from __future__ import annotations

import secrets
from enum import StrEnum
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from mergetune.api.dashboard.auth import Viewer, ViewerDep, check_csrf, to_login
from mergetune.api.dashboard.queries import project_checkpoints, project_datasets, project_job
from mergetune.api.dashboard.render import not_found, render, templates
from mergetune.api.deps import SessionDep, SettingsDep
from mergetune.api.errors import ApiError, error_body
from mergetune.api.hygiene import has_control
from mergetune.api.schemas import JobCreate
from mergetune.api.services import jobs as job_service
from mergetune.common import repositories as repo
from mergetune.common.models import CheckpointStatus, Job
from mergetune.core.config import (
    BackboneSpec,
    HeadHyperparameters,
    Hyperparameters,
    Method,
    MMAHyperparameters,
    PromptOptions,
    Protocol,
)

router = APIRouter(include_in_schema=False)

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


#: The job type a checkpoint's method starts (the job's hyperparameter set).
JOB_TYPE_OF_METHOD = {
    Method.coop.value: "prompt",
    Method.kgcoop.value: "prompt",
    Method.linear_head.value: "head",
    Method.mma.value: "mma",
}

#: The form's groups of settings: (id, legend, the job types whose hyperparameters are exactly these).
HP_GROUPS = [
    ("common", "Common to every job", ("prompt", "head", "mma")),
    ("prompt", "MergeTune prompt recovery (CoOp, KgCoOp checkpoints)", ("prompt",)),
    ("prompt-mma", "Warm-up and feature mode (prompt and MMA jobs)", ("prompt", "mma")),
    ("head", "Linear-head recovery (linear-head checkpoints)", ("head",)),
    ("mma", "MMA (Multi-Modal Adapter checkpoints)", ("mma",)),
]


def job_types_of(name: str) -> tuple[str, ...]:
    """The job types whose hyperparameters include ``name``, in the order prompt, head, mma."""
    sets = (("prompt", Hyperparameters), ("head", HeadHyperparameters), ("mma", MMAHyperparameters))
    return tuple(kind for kind, model in sets if name in model.model_fields)


def grouped_fields(fields: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``fields`` in the form's groups: [{id, legend, job_types, fields}], every field in exactly one."""
    members: dict[tuple[str, ...], list[dict[str, Any]]] = {types: [] for _, _, types in HP_GROUPS}
    for field in fields:
        members[job_types_of(field["name"])].append(field)
    return [
        {"id": g, "legend": legend, "job_types": types, "fields": members[types]}
        for g, legend, types in HP_GROUPS
    ]


HP_FIELDS = hyperparameter_fields()
HP_FIELD_GROUPS = grouped_fields(HP_FIELDS)
templates.env.globals["HP_FIELDS"] = HP_FIELDS
templates.env.globals["HP_FIELD_GROUPS"] = HP_FIELD_GROUPS
templates.env.globals["JOB_TYPE_OF_METHOD"] = JOB_TYPE_OF_METHOD


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
        return to_login(request)
    source = project_job(session, viewer, clone) if clone else None
    if clone and source is None:
        return not_found(request, viewer, f"job {clone}")
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
    checkpoints = [
        c for c in project_checkpoints(session, viewer) if c.status == CheckpointStatus.ready.value
    ]
    return render(
        request,
        "new_job.html",
        viewer,
        status_code=status_code,
        checkpoints=checkpoints,
        datasets=project_datasets(session, viewer),
        **context,
    )


@router.post("/jobs")
async def create_job(
    request: Request, session: SessionDep, viewer: ViewerDep, settings: SettingsDep
) -> Response:
    if viewer is None:
        return to_login(request)
    form = {k: v for k, v in (await request.form()).items() if isinstance(v, str)}
    bad = next((k for k, v in form.items() if has_control(k) or has_control(v)), None)
    if bad is not None:  # urlencoded forms are refused at the edge; multipart ones here
        name = bad.encode("unicode_escape").decode("ascii")
        message = f"{name}: control characters are not allowed"
        return JSONResponse(error_body("invalid_characters", message, name), status_code=422)
    if not check_csrf(viewer, form.get("csrf")):
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
