"""Job creation (validation against mergetune.core.config, enqueue after commit), reads and cancellation."""

from __future__ import annotations

import difflib
import logging
import os
from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from mergetune.api.errors import ApiError, Conflict, NotFound, Unprocessable, from_pydantic
from mergetune.api.schemas import (
    EstimateRange,
    JobCreate,
    JobError,
    JobRead,
    JobUpdate,
    Progress,
    QueueInfo,
)
from mergetune.api.services import estimates
from mergetune.api.services.idempotency import commit_or_replay, replayed_id, request_hash, still_there
from mergetune.api.services.remote_weights import check_remote_weights
from mergetune.api.services.weights import check_uploaded_weights
from mergetune.common import eta
from mergetune.common import repositories as repo
from mergetune.common.localcache import TTLCache, generation
from mergetune.common.models import (
    TERMINAL_STATUSES,
    CheckpointStatus,
    Job,
    JobStatus,
    JobType,
    Project,
    new_id,
    utcnow,
)
from mergetune.common.queue import enqueue_job
from mergetune.common.quotas import device_over
from mergetune.common.remote import is_reference
from mergetune.common.scheduling import current_queue_plan
from mergetune.common.settings import Settings
from mergetune.common.uploaded_weights import is_uploaded_reference
from mergetune.core.checkpoints.mma_layout import AdapterLayout
from mergetune.core.checkpoints.weights import PARAM as WEIGHTS_PARAM
from mergetune.core.checkpoints.weights import (
    is_file_reference,
    outside_root,
    parse_random,
    resolve_weights,
    weights_relpath,
)
from mergetune.core.config import (
    KNOWN_MODELS,
    TEXT_WIDTHS,
    TINY_MODELS,
    BackboneSpec,
    ClassTokenPosition,
    HeadHyperparameters,
    Hyperparameters,
    Method,
    MMAHyperparameters,
    Protocol,
    class_count_problem,
)
from mergetune.core.errors import BackboneError

log = logging.getLogger(__name__)

ENDPOINT = "POST /v1/jobs"
BUILTIN_MODEL = "tiny-clip"

#: (text width, text blocks, image width, image blocks) of ViT backbones, for MMA checkpoints (adapters sit
#: on transformer blocks of both towers; ResNet image towers have none). Others: checked by the worker.
KNOWN_MMA_TOWERS = {
    "ViT-B-32": (512, 12, 768, 12),
    "ViT-B-16": (512, 12, 768, 12),
    "ViT-L-14": (768, 12, 1024, 24),
    "ViT-L-14-336": (768, 12, 1024, 24),
    "ViT-H-14": (1024, 24, 1280, 32),
    "tiny-clip": (128, 4, 128, 4),
    "tiny-test": (64, 2, 64, 1),
}


def _check_mma(ckpt: Any, model: str) -> None:
    """Refuse MMA adapters whose widths or blocks do not fit the backbone (422 on backbone.model)."""
    if model.startswith("RN"):
        raise Unprocessable(
            f"MMA adapters need a ViT image tower; {model} has a ResNet one",
            code="width_mismatch",
            param="backbone.model",
        )
    towers = KNOWN_MMA_TOWERS.get(model)
    raw = (ckpt.info or {}).get("mma_layout")
    if towers is None or not isinstance(raw, dict):
        return
    tw, tl, vw, vl = towers
    problem = AdapterLayout.from_json(raw).backbone_problem(
        text_width=tw, visual_width=vw, text_layers=tl, visual_layers=vl
    )
    if problem:
        raise Unprocessable(f"{problem} ({model})", code="width_mismatch", param="backbone.model")


def create_job(
    session: Session, settings: Settings, project_id: str, body: JobCreate, *, idempotency_key: str | None
) -> tuple[Job, bool]:
    """Validate, insert as ``queued``, commit, then enqueue. Returns (job, created)."""
    payload = body.model_dump(mode="json")
    if not payload["eval_dataset_ids"]:
        # Absent and empty ask for the same thing; keep the hash of such bodies what it always was.
        del payload["eval_dataset_ids"]
    if payload["protocol"] == Protocol.base2novel.value:
        del payload["protocol"]  # the default: bodies that do not name it keep their old hash
    if payload["prompt"] is None:
        del payload["prompt"]
    if payload["priority"] == "normal":
        del payload["priority"]  # the default: bodies that do not name it keep their old hash
    for absent in ("max_runtime_seconds", "resume_from"):
        if payload[absent] is None:
            del payload[absent]
    req_hash = request_hash(ENDPOINT, payload)
    existing = replayed_id(session, project_id, idempotency_key, req_hash)
    if existing is not None:
        return still_there(repo.get_job(session, project_id, existing), "job"), False

    check_device_quota(session, project_id)
    job = build_job(session, settings, project_id, body)
    session.add(job)
    session.flush()
    repo.add_event(session, job.id, "status", "job queued", data={"status": "queued"})
    replay = commit_or_replay(
        session,
        project_id,
        idempotency_key,
        req_hash,
        lambda job_id: repo.get_job(session, project_id, job_id),
        job_id=job.id,
    )
    if replay is not None:
        return replay, False

    try:
        enqueue_job(settings, job.id)
    except Exception as exc:
        # Postgres is the record of truth: the job is committed as ``queued``; the reconciler sends its
        # message once the broker answers (a queued job with no message, older than
        # RECONCILE_QUEUE_GRACE). The client gets its 202 and polls as usual.
        log.warning("job %s: broker unreachable, left queued for the reconciler", job.id, exc_info=True)
        repo.add_event(
            session,
            job.id,
            "broker",
            f"The job queue did not answer ({type(exc).__name__}); the job stays queued and is sent "
            "as soon as the queue answers",
            level="warning",
        )
        session.commit()
        return job, True
    log.info("job %s queued (checkpoint %s, dataset %s)", job.id, job.checkpoint_id, job.dataset_id)
    return job, True


def build_job(session: Session, settings: Settings, project_id: str, body: JobCreate) -> Job:
    """The validated ``queued`` job a request asks for (not added to the session): every refusal that
    can be made at submission is raised here (sweeps build all their jobs this way before inserting any)."""
    ckpt = repo.get_checkpoint(session, project_id, body.checkpoint_id)
    if ckpt is None:
        raise NotFound(f"checkpoint {body.checkpoint_id!r} not found", param="checkpoint_id")
    if ckpt.status != CheckpointStatus.ready:
        code = (ckpt.error or {}).get("code", "checkpoint_rejected")
        raise Unprocessable(
            f"checkpoint {ckpt.id} was rejected ({code}); upload a valid one",
            code="checkpoint_not_ready",
            param="checkpoint_id",
        )
    ds = repo.get_dataset(session, project_id, body.dataset_id)
    if ds is None:
        raise NotFound(f"dataset {body.dataset_id!r} not found", param="dataset_id")

    eval_ids = _eval_datasets(session, project_id, body.eval_dataset_ids)
    check_dataset_credentials(session, settings, project_id, [body.dataset_id, *eval_ids])

    is_head = ckpt.method == Method.linear_head.value
    is_mma = ckpt.method == Method.mma.value
    hp_model: type[BaseModel] = (
        HeadHyperparameters if is_head else MMAHyperparameters if is_mma else Hyperparameters
    )
    try:
        hp = hp_model.model_validate(body.hyperparameters)
    except ValidationError as exc:
        raise from_pydantic(exc, prefix="hyperparameters", known=hp_model.model_fields) from None

    check_backbone(session, settings, body.backbone, project_id=project_id)
    prompt: dict[str, Any] | None = None
    if is_mma:
        _check_mma(ckpt, body.backbone.model)
    if is_head or is_mma:
        if body.prompt is not None and body.prompt.class_token_position is not None:
            raise Unprocessable(
                f"{'MMA' if is_mma else 'linear-head'} checkpoints have no prompt; "
                "prompt.class_token_position applies to CoOp/KgCoOp checkpoints",
                param="prompt.class_token_position",
            )
    else:
        position = (body.prompt.class_token_position if body.prompt else None) or ckpt.class_token_position
        prompt = {"class_token_position": ClassTokenPosition(position or ClassTokenPosition.end).value}
        problem = class_count_problem(
            csc=bool(ckpt.csc),
            n_ctx_cls=ckpt.n_cls,
            protocol=body.protocol,
            dataset_name=ds.name,
            num_classes=ds.num_classes,
            n_base=len(ds.base_classes or []),
        )
        if problem:
            raise Unprocessable(problem, code="class_count_mismatch", param="checkpoint_id")

    width = TEXT_WIDTHS.get(body.backbone.model)  # every known model: the worker would refuse the same
    if (
        not is_head
        and not is_mma
        and width is not None
        and ckpt.ctx_dim is not None
        and ckpt.ctx_dim != width
    ):
        raise Unprocessable(
            f"the checkpoint's context width {ckpt.ctx_dim} does not match {body.backbone.model} (text width {width})",
            code="width_mismatch",
            param="backbone.model",
        )

    now = utcnow()
    job = Job(
        id=new_id("job"),
        project_id=project_id,
        checkpoint_id=ckpt.id,
        dataset_id=ds.id,
        job_type=Method.mma.value if is_mma else (JobType.linear_head if is_head else JobType.prompt).value,
        backbone=body.backbone.model_dump(mode="json"),
        protocol=body.protocol.value,
        prompt=prompt,
        hyperparameters=hp.model_dump(mode="json"),
        metadata_=dict(body.metadata),
        eval_dataset_ids=eval_ids or None,
        priority=body.priority.value,
        max_runtime_seconds=_max_runtime(session, project_id, body),
        resume_from_job_id=_resume_source(session, project_id, body, hp.model_dump(mode="json")),
        mlflow=_mlflow_target(session, settings, project_id, body),
        status=JobStatus.queued.value,
        created_at=now,
        queued_at=now,
        updated_at=now,
    )
    return job


def _mlflow_target(
    session: Session, settings: Settings, project_id: str, body: JobCreate
) -> dict[str, Any] | None:
    """Where the job logs its MLflow run: the body's, else the project's, else nowhere (None).

    The workers send to that server, so a job's own server other than its project's (which an
    operator set) must resolve to public addresses, like a webhook target, unless
    MLFLOW_ALLOW_PRIVATE."""
    row = session.execute(
        select(Project.mlflow_tracking_uri, Project.mlflow_experiment).where(Project.id == project_id)
    ).first()
    project_uri = row[0] if row is not None else None
    if body.mlflow is not None:
        if body.mlflow.tracking_uri != project_uri:
            from mergetune.common.webhooks import UnsafeTarget, check_url

            try:
                check_url(body.mlflow.tracking_uri, allow_private=settings.MLFLOW_ALLOW_PRIVATE)
            except UnsafeTarget as exc:
                message = exc.message.replace("url", "tracking_uri", 1).replace(
                    "webhooks go to public addresses only",
                    "a job's own tracking server must be public (or the project's, set by an operator)",
                )
                raise Unprocessable(message, code=exc.code, param="mlflow.tracking_uri") from None
        return body.mlflow.model_dump()
    if not project_uri:
        return None
    return {"tracking_uri": project_uri, "experiment": (row[1] if row is not None else None) or "mergetune"}


def check_device_quota(session: Session, project_id: str) -> None:
    """429 ``quota_exceeded`` (Retry-After: until midnight UTC) once the project's device seconds for
    today reached its quota; nothing is created."""
    over = device_over(session, project_id, utcnow())
    if over is not None:
        raise ApiError(
            f"quota_device_seconds_per_day: {over.message}",
            code="quota_exceeded",
            status_code=429,
            headers={"Retry-After": str(over.retry_after)},
        )


def _max_runtime(session: Session, project_id: str, body: JobCreate) -> int | None:
    """The job's deadline: the body's, else the project's default, else none."""
    if body.max_runtime_seconds is not None:
        return body.max_runtime_seconds
    return session.scalar(select(Project.default_max_runtime_seconds).where(Project.id == project_id))


def _resume_source(session: Session, project_id: str, body: JobCreate, hp: dict[str, Any]) -> str | None:
    """The timed-out job ``resume_from`` names, checked to be one this job can continue: refused with
    422 on ``resume_from`` otherwise (404 when the project has no such job)."""
    if body.resume_from is None:
        return None
    src = repo.get_job(session, project_id, body.resume_from)
    if src is None:
        raise NotFound(f"job {body.resume_from!r} not found", param="resume_from")
    if src.status != JobStatus.timed_out.value:
        raise Unprocessable(
            f"job {src.id} is {src.status}; only a timed_out job's epoch state can be resumed from",
            code="not_resumable",
            param="resume_from",
        )
    differs = [
        name
        for name, mine, theirs in (
            ("checkpoint_id", body.checkpoint_id, src.checkpoint_id),
            ("dataset_id", body.dataset_id, src.dataset_id),
            ("backbone", body.backbone.model_dump(mode="json"), src.backbone),
            ("protocol", body.protocol.value, src.protocol),
            ("hyperparameters", hp, src.hyperparameters),
        )
        if mine != theirs
    ]
    if differs:
        raise Unprocessable(
            f"job {src.id} ran with another {differs[0]}; a resumed job must use the same checkpoint, "
            "dataset, backbone, protocol and hyperparameters",
            code="not_resumable",
            param="resume_from",
        )
    return src.id


#: A worker whose heartbeat is older than this is dead (mergetune.worker.jobdb.STALE_AFTER) and vouches for no weights.
LIVE_WORKER_SECONDS = 30


def check_backbone(
    session: Session, settings: Settings, spec: BackboneSpec, *, project_id: str | None = None
) -> None:
    """Refuse at submission a backbone no worker can build: an unknown architecture (422 on
    ``backbone.model``), weights outside the model root (422 ``path_outside_root``, the same answer
    whether or not such a file exists), or weights that no live worker reports it can load (422 on
    ``backbone.pretrained``). Without any live worker reporting, the embedded mode looks at its own
    disk and a separate deployment queues the job for the workers to come."""
    if spec.model not in KNOWN_MODELS:
        close = difflib.get_close_matches(spec.model, sorted(KNOWN_MODELS), n=3)
        raise Unprocessable(
            f"unknown backbone {spec.model[:128]!r}"
            + (f" (did you mean {', '.join(close)}?)" if close else "")
            + "; use an open_clip architecture with the standard CLIP text tower, e.g. ViT-B-16, or tiny-clip",
            code="unknown_backbone",
            param="backbone.model",
        )
    pretrained = spec.pretrained.strip()
    try:
        if parse_random(pretrained) is not None:
            return
        if pretrained == "builtin":
            if spec.model != BUILTIN_MODEL:
                raise BackboneError(
                    f"pretrained 'builtin' only exists for model {BUILTIN_MODEL!r}",
                    code="weights_unavailable",
                    param=WEIGHTS_PARAM,
                )
            return
        if is_reference(pretrained):  # s3://bucket/key: fetched by the worker into its input cache
            check_remote_weights(settings, pretrained, _inventories(session))
            return
        if is_uploaded_reference(pretrained):  # weights:<id> / sha256:<hex>: uploaded to this project
            check_uploaded_weights(session, project_id, spec.model, pretrained)
            return
        is_file = is_file_reference(pretrained)
        rel = ""
        if spec.model in TINY_MODELS and not is_file:
            raise BackboneError(
                f"{spec.model!r} takes pretrained 'random', 'random:<seed>'"
                + (", 'builtin'" if spec.model == BUILTIN_MODEL else "")
                + " or a weights file under the model root",
                code="weights_unavailable",
                param=WEIGHTS_PARAM,
            )
        assert settings.MODEL_ROOT is not None  # derived in Settings
        artifact_dirs = [settings.ARTIFACT_URL] if "://" not in settings.ARTIFACT_URL else []
        if is_file:
            rel = weights_relpath(settings.MODEL_ROOT, pretrained)
            target = os.path.realpath(os.path.join(settings.MODEL_ROOT, rel))
            if any(
                target == os.path.realpath(a)
                or target.startswith(os.path.realpath(a).rstrip(os.sep) + os.sep)
                for a in artifact_dirs
            ):
                raise outside_root(pretrained)  # the artifact store is never a weights source
        inventories = _inventories(session)
        if inventories:
            key, wanted = ("files", rel) if is_file else ("tags", f"{spec.model}/{pretrained}")
            if not any(wanted in (inv.get(key) or []) for inv in inventories):
                what = (
                    f"weights file {rel!r} under the model root" if is_file else f"{spec.model}/{pretrained}"
                )
                raise BackboneError(
                    f"no live worker can load {what} ({len(inventories)} worker(s) report their weights); "
                    "place the file on the workers or name one they have",
                    code="weights_unavailable",
                    param=WEIGHTS_PARAM,
                )
        elif settings.EMBEDDED and is_file:
            try:
                resolve_weights(settings.MODEL_ROOT, pretrained, forbidden=artifact_dirs)
            except BackboneError as exc:
                if exc.code != "weights_missing":
                    raise
                raise BackboneError(
                    f"no weights file {rel!r} under the model root",
                    code="weights_unavailable",
                    param=WEIGHTS_PARAM,
                ) from None
    except BackboneError as exc:
        raise Unprocessable(exc.message, code=exc.code, param=WEIGHTS_PARAM) from None


def check_dataset_credentials(
    session: Session, settings: Settings, project_id: str, ds_ids: list[str]
) -> None:
    """Datasets with their own (sealed) credentials need a worker holding MERGETUNE_SECRET_KEY: refused
    when live workers report and none says it has the key, or when the API's own key (the workers' too)
    no longer opens them (the key that sealed them was dropped)."""
    from mergetune.common.secrets import SecretKeyError, has_key, unseal

    for i, ds_id in enumerate(ds_ids):
        ds = repo.get_dataset(session, project_id, ds_id)
        if ds is None or ds.credentials_sealed is None:
            continue
        param = "dataset_id" if i == 0 else f"eval_dataset_ids[{i - 1}]"
        if has_key(settings):
            try:
                unseal(settings, ds.credentials_sealed)
            except SecretKeyError as exc:
                raise Unprocessable(
                    f"dataset {ds_id!r}: {exc}; store its credentials again",
                    code="secret_key_missing",
                    param=param,
                ) from None
        inventories = _inventories(session)
        if inventories and not any(inv.get("secret_key") for inv in inventories):
            raise Unprocessable(
                f"dataset {ds_id!r} reads its bucket with its own credentials, and no live worker has "
                f"MERGETUNE_SECRET_KEY to open them ({len(inventories)} worker(s) report)",
                code="secret_key_missing",
                param=param,
            )


def _inventories(session: Session) -> list[dict[str, Any]]:
    """The weights the live workers report they can load (their heartbeats)."""
    return [
        w.info["weights"]
        for w in repo.live_workers(session, utcnow() - timedelta(seconds=LIVE_WORKER_SECONDS))
        if isinstance(w.info, dict) and isinstance(w.info.get("weights"), dict)
    ]


def _eval_datasets(session: Session, project_id: str, ids: list[str]) -> list[str]:
    """The extra evaluation datasets, checked: each an existing dataset of the project, no repeats."""
    seen: set[str] = set()
    for i, ds_id in enumerate(ids):
        param = f"eval_dataset_ids[{i}]"
        if not ds_id or len(ds_id) > 40:
            raise Unprocessable(f"{param}: not a dataset id: {ds_id!r}", param=param)
        if ds_id in seen:
            raise Unprocessable(
                f"{param}: dataset {ds_id!r} is listed more than once", code="duplicate_dataset", param=param
            )
        seen.add(ds_id)
        if repo.get_dataset(session, project_id, ds_id) is None:
            raise NotFound(f"dataset {ds_id!r} not found", param=param)
    return list(ids)


def cancel_job(session: Session, project_id: str, job_id: str) -> Job:
    job = repo.get_job(session, project_id, job_id)
    if job is None:
        raise NotFound(f"job {job_id!r} not found", param="id")
    if JobStatus(job.status) in TERMINAL_STATUSES:
        raise Conflict(f"job {job.id} is already {job.status}", code="job_finished", param="id")
    repo.request_cancel(session, job)
    session.commit()
    return job


def event_seq_before(session: Session, job_id: str, event_id: int | None) -> int:
    """How many of the job's events come at or before ``event_id``: the per-job number (``seq``) of
    the event after it is this + 1. Event ids are global, so a job's own ids skip numbers."""
    from sqlalchemy import func, select

    from mergetune.common.models import JobEvent

    if event_id is None:
        return 0
    query = select(func.count()).where(JobEvent.job_id == job_id, JobEvent.id <= event_id)
    return int(session.scalar(query) or 0)


def measured_pace(session: Session) -> list[eta.Finished]:
    """The recent succeeded jobs' measurements (seconds per epoch, the rest of the run, evaluation
    time, model, mode and training images) that the estimates draw similar jobs from: one query,
    reused for ~30 s per process (``mergetune.api.services.estimates``)."""
    return estimates.history(session)


def _estimate(session: Session, settings: Settings, job: Job, position: int | None) -> eta.Estimate | None:
    """Estimated finish as a range with its basis (``mergetune.common.eta``): running jobs from their
    own measured epochs, others from finished jobs like them plus their wait in the queue;
    ESTIMATE_SECONDS_PER_EPOCH before any such job has finished. None once the job ended."""
    return estimates.estimate(session, job, position, settings.ESTIMATE_SECONDS_PER_EPOCH)


def _eta_fields(session: Session, settings: Settings, job: Job, position: int | None) -> dict[str, Any]:
    e = _estimate(session, settings, job, position)
    if e is None:
        return {"estimated_finish": None, "estimated_finish_range": None}
    return {
        "estimated_finish": e.likely,
        "estimated_finish_range": EstimateRange(earliest=e.earliest, latest=e.latest, basis=e.basis),
    }


#: Seconds one process reuses a queued job's estimate (it reads every active job and the live workers):
#: the polls of one job within that time answer the same estimate.
ESTIMATE_REUSE_SECONDS = 1.0

_queued_etas = TTLCache(ESTIMATE_REUSE_SECONDS, maxsize=4096)


def _eta_reused(session: Session, settings: Settings, job: Job, position: int | None) -> dict[str, Any]:
    """:func:`_eta_fields`, reused for ESTIMATE_REUSE_SECONDS for a queued job at the same place (dropped
    at once when this process writes); other jobs' estimates read nothing new once warm."""
    if job.status not in (JobStatus.queued, JobStatus.validating) or job.cancel_requested:
        return _eta_fields(session, settings, job, position)
    key = (session.get_bind(), job.id, job.status, position)
    fields: dict[str, Any] | None = _queued_etas.get(key)
    if fields is None:
        before = generation()
        fields = _eta_fields(session, settings, job, position)
        _queued_etas.put(key, fields, generation=before)
    return fields


def job_read(session: Session, settings: Settings, job: Job) -> JobRead:
    spot = None
    if job.status in (JobStatus.queued, JobStatus.validating) and not job.cancel_requested:
        spot = current_queue_plan(session, settings.FAIR_SHARE_WINDOW, job.id).get(job.id)
    position = spot.position if spot is not None else repo.queue_position(session, job)
    return JobRead(
        id=job.id,
        status=job.status,
        job_type=job.job_type,
        checkpoint_id=job.checkpoint_id,
        dataset_id=job.dataset_id,
        backbone=job.backbone,
        protocol=job.protocol or Protocol.base2novel.value,
        prompt=job.prompt,
        hyperparameters=job.hyperparameters,
        metadata=job.metadata_ or {},
        eval_dataset_ids=list(job.eval_dataset_ids or []),
        progress=Progress.model_validate(job.progress) if job.progress else None,
        metrics=job.metrics,
        verdict=job.verdict,
        error=JobError.model_validate(job.error) if job.error else None,
        cancel_requested=job.cancel_requested,
        priority=job.priority or "normal",
        device_seconds=round(float(job.device_seconds or 0.0), 3),
        max_runtime_seconds=job.max_runtime_seconds,
        resume_from=job.resume_from_job_id,
        queue_position=position,
        queue=QueueInfo(position=spot.position, reason=spot.reason, message=spot.message) if spot else None,
        mlflow=job.mlflow,
        created_at=job.created_at,
        queued_at=job.queued_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        **_eta_reused(session, settings, job, position),
        tags=[str(t) for t in job.tags or []],
        notes=job.notes,
    )


def update_job(session: Session, job: Job, body: JobUpdate) -> Job:
    """Apply a PATCH (only the fields the body names, ``model_fields_set``) and commit."""
    given = body.model_fields_set
    if "name" in given:
        meta = dict(job.metadata_ or {})
        if body.name and body.name.strip():
            meta["name"] = body.name.strip()
        else:
            meta.pop("name", None)
        job.metadata_ = meta
    if "tags" in given:
        job.tags = list(body.tags or []) or None
    if "notes" in given:
        job.notes = body.notes if body.notes and body.notes.strip() else None
    session.commit()
    return job
