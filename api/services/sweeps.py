"""Sweeps: many ordinary jobs created together (cells of (checkpoint, dataset, seed) x grid points),
tracked, cancelled and reported as one.

A sweep's jobs are built and validated like ``POST /v1/jobs`` (mergetune.api.services.jobs.build_job), inserted
with the sweep row in one transaction, and enqueued after the commit: the same queue, workers,
idempotency and resume-after-fault as single jobs. Cells from an archive (a CoOp output tree) go
through the checkpoint upload service first; if anything is refused, every checkpoint the request
stored is removed again, so a refused sweep leaves nothing behind.
"""

from __future__ import annotations

import itertools
import json
import logging
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, select_autoescape
from pydantic import ValidationError
from sqlalchemy import delete
from sqlalchemy.orm import Session

from mergetune.api.errors import ApiError, Conflict, NotFound, Unprocessable, did_you_mean, from_pydantic
from mergetune.api.schemas import (
    MAX_GRID_POINTS,
    MAX_GRID_VALUES,
    JobCreate,
    SweepCellRead,
    SweepCreate,
    SweepJobRead,
    SweepProgress,
    SweepRead,
)
from mergetune.api.services.checkpoints import create_checkpoint
from mergetune.api.services.idempotency import commit_or_replay, replayed_id, request_hash, still_there
from mergetune.api.services.jobs import build_job, check_device_quota
from mergetune.api.services.sweep_archive import UnpackedTree, unpacked_tree
from mergetune.api.uploads import ReceivedUpload
from mergetune.common import repositories as repo
from mergetune.common.models import (
    TERMINAL_STATUSES,
    Checkpoint,
    CheckpointStatus,
    Job,
    JobStatus,
    Sweep,
    new_id,
)
from mergetune.common.queue import enqueue_job
from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactNotFound, ArtifactStore
from mergetune.core.checkpoints.archive import TreeCheckpoint
from mergetune.core.config import Hyperparameters
from mergetune.core.evaluation.sweep_table import (
    SELECTION_RULES,
    CellResult,
    build_table,
    to_csv,
    to_latex,
    to_text,
)

log = logging.getLogger(__name__)

ENDPOINT = "POST /v1/sweeps"
#: Job metadata keys a sweep sets on each of its jobs (user metadata may use the rest of the 32).
SWEEP_METADATA_KEYS = ("sweep", "sweep_cell", "sweep_point", "dataset", "seed")
TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
_env = Environment(loader=FileSystemLoader(str(TEMPLATES_DIR)), autoescape=select_autoescape(["html"]))


# ---------------------------------------------------------------------------------------- creation


def expand_grid(grid: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, the first axis slowest; ``[{}]`` without a grid."""
    for name, values in grid.items():
        param = f"grid.{name}"
        if name not in Hyperparameters.model_fields:
            hint = did_you_mean(name, Hyperparameters.model_fields)
            raise Unprocessable(f"{param}: not a hyperparameter{hint}", param=param)
        if name == "seed":
            raise Unprocessable("seeds come from the cells, not from the grid", param=param)
        if not 1 <= len(values) <= MAX_GRID_VALUES:
            raise Unprocessable(f"{param}: give 1 to {MAX_GRID_VALUES} values", param=param)
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise Unprocessable(f"{param}: a value is listed twice", param=param)
    points = [dict(zip(grid, combo, strict=True)) for combo in itertools.product(*grid.values())]
    if len(points) > MAX_GRID_POINTS:
        raise Unprocessable(
            f"the grid has {len(points)} combinations; at most {MAX_GRID_POINTS}", param="grid"
        )
    return points


def create_sweep(
    session: Session,
    settings: Settings,
    store: ArtifactStore,
    project_id: str,
    body: SweepCreate,
    *,
    archive: ReceivedUpload | None,
    idempotency_key: str | None,
) -> tuple[Sweep, bool]:
    """Validate every job, insert the sweep and its jobs, commit, enqueue. Returns (sweep, created)."""
    payload: dict[str, Any] = body.model_dump(mode="json")
    if payload["priority"] == "normal":
        del payload["priority"]  # the default: bodies that do not name it keep their old hash
    if archive is not None:
        payload["archive_sha256"] = archive.sha256
    req_hash = request_hash(ENDPOINT, payload)
    existing = replayed_id(session, project_id, idempotency_key, req_hash)
    if existing is not None:
        return _replay(session, project_id, existing), False

    check_device_quota(session, project_id)
    points = expand_grid(body.grid)
    if body.selection not in SELECTION_RULES:
        raise Unprocessable(f"selection must be one of {', '.join(SELECTION_RULES)}", param="selection")
    if "seed" in body.hyperparameters:
        raise Unprocessable("seeds come from the cells (or the tree's seed<N>)", param="hyperparameters.seed")
    if archive is None and not body.cells:
        raise Unprocessable("a sweep needs cells, or a `file` with a CoOp output tree", param="cells")
    if archive is not None and body.cells:
        raise Unprocessable("give cells or a `file`, not both", param="cells")
    if archive is None and body.dataset_map:
        raise Unprocessable("dataset_map applies to an uploaded tree (`file`)", param="dataset_map")

    created_ckpts: list[str] = []
    sweep_id = new_id("swp")
    try:
        if archive is not None:
            cells, source = _cells_from_archive(
                session, settings, store, project_id, body, archive, len(points), created_ckpts
            )
        else:
            cells, source = _cells_from_body(session, project_id, body), None
        if len(cells) * len(points) > settings.SWEEP_MAX_JOBS:
            raise Unprocessable(
                f"{len(cells)} cells x {len(points)} grid points is over the limit of "
                f"{settings.SWEEP_MAX_JOBS} jobs per sweep",
                code="too_many_jobs",
                param="grid" if len(points) > 1 else "cells",
            )
        jobs = _build_jobs(session, settings, project_id, body, sweep_id, cells, points, archive is not None)
        sweep = Sweep(
            id=sweep_id,
            project_id=project_id,
            name=(body.name or "").strip() or (source or {}).get("filename") or sweep_id,
            spec={
                "backbone": jobs[0].backbone,
                "protocol": body.protocol.value,
                "prompt": body.prompt.model_dump(mode="json") if body.prompt else None,
                "hyperparameters": dict(body.hyperparameters),
                "grid": dict(body.grid),
                "points": points,
                "selection": body.selection,
                "metadata": dict(body.metadata),
            },
            cells=cells,
            source=source,
            priority=body.priority.value,
        )
        session.add(sweep)
        session.flush()
        session.add_all(jobs)
        session.flush()
        for job in jobs:
            repo.add_event(
                session, job.id, "status", f"job queued (sweep {sweep_id})", data={"status": "queued"}
            )
        replay = commit_or_replay(
            session,
            project_id,
            idempotency_key,
            req_hash,
            lambda sid: repo.get_sweep(session, project_id, sid),
            resource_id=sweep_id,
        )
    except BaseException:
        session.rollback()
        _discard_checkpoints(session, store, created_ckpts)
        raise
    if replay is not None:
        _discard_checkpoints(session, store, created_ckpts)
        return replay, False
    _enqueue_all(session, settings, jobs)
    log.info("sweep %s: %d cells x %d points queued", sweep_id, len(cells), len(points))
    return sweep, True


def _replay(session: Session, project_id: str, sweep_id: str) -> Sweep:
    return still_there(repo.get_sweep(session, project_id, sweep_id), "sweep")


def _cells_from_body(session: Session, project_id: str, body: SweepCreate) -> list[dict[str, Any]]:
    cells = []
    for i, c in enumerate(body.cells):
        ds = repo.get_dataset(session, project_id, c.dataset_id)
        if ds is None:
            raise NotFound(f"dataset {c.dataset_id!r} not found", param=f"cells[{i}].dataset_id")
        cells.append(
            {
                "checkpoint_id": c.checkpoint_id,
                "dataset_id": ds.id,
                "dataset": ds.name,
                "seed": c.seed,
                "source": None,
            }
        )
    return cells


def _map_datasets(
    session: Session, project_id: str, names: list[str], explicit: dict[str, str]
) -> dict[str, Any]:
    for name in explicit:
        if name not in names:
            raise Unprocessable(
                f"dataset_map names {name!r}, which is not in the tree (its datasets: {', '.join(names)})",
                param=f"dataset_map.{name}",
            )
    mapping = {}
    for name in names:
        param = f"dataset_map.{name}"
        if name in explicit:
            ds = repo.get_dataset(session, project_id, explicit[name])
            if ds is None:
                raise NotFound(f"dataset {explicit[name]!r} (mapped from {name!r}) not found", param=param)
        else:
            found = repo.datasets_named(session, project_id, name)
            if not found:
                raise Unprocessable(
                    f"the tree's dataset {name!r} matches no registered dataset: register one with that name "
                    f'or map it, e.g. dataset_map {{"{name}": "ds_..."}}',
                    code="unknown_dataset",
                    param=param,
                )
            if len(found) > 1:
                raise Unprocessable(
                    f"{len(found)} datasets are named {name!r}; say which in dataset_map",
                    code="ambiguous_dataset",
                    param=param,
                )
            ds = found[0]
        mapping[name] = ds
    return mapping


def _cells_from_archive(
    session: Session,
    settings: Settings,
    store: ArtifactStore,
    project_id: str,
    body: SweepCreate,
    archive: ReceivedUpload,
    n_points: int,
    created: list[str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Check the archive, map its datasets, then store each run's last checkpoint through the upload
    service (its ids are appended to ``created`` as they are stored, for the caller's clean-up)."""
    assert archive.path is not None
    with unpacked_tree(settings, archive.path, project_id=project_id) as tree:
        mapping = _map_datasets(
            session, project_id, sorted({c.dataset for c in tree.checkpoints}), body.dataset_map
        )
        if len(tree.checkpoints) * n_points > settings.SWEEP_MAX_JOBS:
            raise Unprocessable(
                f"{len(tree.checkpoints)} runs x {n_points} grid points is over the limit of "
                f"{settings.SWEEP_MAX_JOBS} jobs per sweep",
                code="too_many_jobs",
                param="file",
            )
        stored = sum(ck.size for ck in tree.checkpoints)  # each is kept whole: checked before any is
        if stored > settings.SWEEP_MAX_STORED_BYTES:
            raise Unprocessable(
                f"the archive's {len(tree.checkpoints)} checkpoints hold {stored} bytes, over the limit of "
                f"{settings.SWEEP_MAX_STORED_BYTES} bytes one sweep may store",
                code="too_large",
                param="file",
            )
        cells = []
        settings.tmp_dir.mkdir(parents=True, exist_ok=True)
        for ck in tree.checkpoints:
            ckpt = _ingest_member(session, settings, store, project_id, tree, ck, body, created)
            ds = mapping[ck.dataset]
            cells.append(
                {
                    "checkpoint_id": ckpt.id,
                    "dataset_id": ds.id,
                    "dataset": ck.dataset,
                    "seed": ck.seed,
                    "source": ck.member,
                }  # fmt: skip
            )
    source = {
        "filename": (archive.filename or "archive")[:255],
        "bytes": archive.size,
        "sha256": archive.sha256,
        "runs": len(cells),
        "trainers": sorted({c.trainer for c in tree.checkpoints}),
        "configs": sorted({c.cfg for c in tree.checkpoints}),
    }
    return cells, source


def _ingest_member(
    session: Session,
    settings: Settings,
    store: ArtifactStore,
    project_id: str,
    tree: UnpackedTree,
    ck: TreeCheckpoint,
    body: SweepCreate,
    created: list[str],
) -> Checkpoint:
    upload = ReceivedUpload(path=tree.path(ck), filename=Path(ck.member).name, size=ck.size, sha256=ck.sha256)
    try:
        fields = {"name": f"{ck.run}/{Path(ck.member).name}"[:255]}
        if body.prompt is not None and body.prompt.class_token_position is not None:
            fields["class_token_position"] = body.prompt.class_token_position.value
        upload.fields = fields
        ckpt, _ = create_checkpoint(session, settings, store, project_id, upload, idempotency_key=None)
    except ApiError as exc:
        exc.message = f"{ck.member[:200]}: {exc.message}"
        exc.param = "file"
        raise
    finally:
        upload.cleanup()
    created.append(ckpt.id)
    if ckpt.status != CheckpointStatus.ready:
        err = ckpt.error or {}
        raise Unprocessable(
            f"{ck.member[:200]}: {err.get('message', 'not a valid checkpoint')}",
            code=str(err.get("code") or "checkpoint_rejected"),
            param="file",
        )
    return ckpt


def _build_jobs(
    session: Session,
    settings: Settings,
    project_id: str,
    body: SweepCreate,
    sweep_id: str,
    cells: list[dict[str, Any]],
    points: list[dict[str, Any]],
    from_archive: bool,
) -> list[Job]:
    """One validated job per (grid point, cell); a refusal names the cell (or the grid) it comes from."""
    clash = sorted(set(body.metadata) & set(SWEEP_METADATA_KEYS))
    if clash:
        raise Unprocessable(f"metadata key {clash[0]!r} is set by the sweep", param=f"metadata.{clash[0]}")
    jobs = []
    for p, point in enumerate(points):
        for i, cell in enumerate(cells):
            meta = {**body.metadata, "sweep": sweep_id, "sweep_cell": str(i), "sweep_point": str(p),
                    "dataset": cell["dataset"], "seed": str(cell["seed"])}  # fmt: skip
            try:
                jc = JobCreate(
                    checkpoint_id=cell["checkpoint_id"],
                    dataset_id=cell["dataset_id"],
                    backbone=body.backbone,
                    protocol=body.protocol,
                    prompt=body.prompt,
                    hyperparameters={**body.hyperparameters, **point, "seed": cell["seed"]},
                    metadata=meta,
                    priority=body.priority,
                )
            except ValidationError as exc:
                raise from_pydantic(exc) from None
            try:
                job = build_job(session, settings, project_id, jc)
            except ApiError as exc:
                where = cell["source"] if from_archive else f"cells[{i}]"
                exc.message = f"{where} ({cell['dataset']}, seed {cell['seed']}): {exc.message}"
                name = (exc.param or "").removeprefix("hyperparameters.")
                if exc.param and exc.param.startswith("hyperparameters.") and name in point:
                    exc.param = f"grid.{name}"
                elif exc.param in ("checkpoint_id", "dataset_id"):
                    exc.param = "file" if from_archive else f"cells[{i}].{exc.param}"
                raise
            job.sweep_id = sweep_id
            jobs.append(job)
    return jobs


def _discard_checkpoints(session: Session, store: ArtifactStore, ids: list[str]) -> None:
    """Remove the checkpoints a refused sweep request stored (rows and bytes)."""
    if not ids:
        return
    try:
        session.rollback()
        session.execute(delete(Checkpoint).where(Checkpoint.id.in_(ids)))
        session.commit()
    except Exception:
        session.rollback()
        log.error("could not remove checkpoint rows %s of a refused sweep", ids, exc_info=True)
    for ck_id in ids:
        try:
            store.delete_prefix(f"checkpoints/{ck_id}/")
        except Exception:
            log.error("could not remove stored files of checkpoint %s", ck_id, exc_info=True)


def _enqueue_all(session: Session, settings: Settings, jobs: list[Job]) -> None:
    """Send every job. When the broker fails, the jobs not sent stay ``queued`` in Postgres with a
    warning event, and the reconciler sends them once the broker answers (as for a single job)."""
    for n, job in enumerate(jobs):
        try:
            enqueue_job(settings, job.id)
        except Exception as exc:
            log.warning("sweep job %s: broker unreachable, %d jobs left queued for the reconciler",
                        job.id, len(jobs) - n, exc_info=True)  # fmt: skip
            for left in jobs[n:]:
                repo.add_event(
                    session,
                    left.id,
                    "broker",
                    f"The job queue did not answer ({type(exc).__name__}); the job stays queued and is "
                    "sent as soon as the queue answers",
                    level="warning",
                )
            session.commit()
            return


# ------------------------------------------------------------------------------------ reads, cancel


def _index(job: Job) -> tuple[int, int]:
    meta = job.metadata_ or {}
    try:
        return int(meta.get("sweep_point", 0)), int(meta.get("sweep_cell", 0))
    except (TypeError, ValueError):
        return 0, 0


def _fraction(job: Job) -> float:
    if JobStatus(job.status) in TERMINAL_STATUSES:
        return 1.0
    p: dict[str, Any] = job.progress or {}
    try:
        done = (int(p["epoch"]) - 1 + int(p["step"]) / max(1, int(p["steps"]))) / max(1, int(p["epochs"]))
    except (KeyError, TypeError, ValueError):
        return 0.0
    return min(1.0, max(0.0, done))


def sweep_status(sweep: Sweep, jobs: list[Job]) -> str:
    statuses = [JobStatus(j.status) for j in jobs]
    if all(s in TERMINAL_STATUSES for s in statuses):
        if sweep.cancel_requested:
            return "cancelled"
        return "succeeded" if all(s == JobStatus.succeeded for s in statuses) else "failed"
    if sweep.cancel_requested:
        return "cancelling"
    if all(s in (JobStatus.queued, JobStatus.validating) for s in statuses):
        return "queued"
    return "running"


def sweep_read(session: Session, sweep: Sweep, jobs: list[Job] | None = None) -> SweepRead:
    jobs = repo.sweep_jobs(session, sweep.id) if jobs is None else jobs
    jobs = sorted(jobs, key=_index)
    counts = {s: 0 for s in ("queued", "running", "succeeded", "failed", "cancelled")}
    for j in jobs:
        s = JobStatus(j.status)
        key = "queued" if s in (JobStatus.queued, JobStatus.validating) else "running"
        if s == JobStatus.expired:  # its files went with the retention; its metrics stayed
            counts["succeeded" if j.metrics is not None else "failed"] += 1
        elif s == JobStatus.timed_out:
            counts["failed"] += 1  # stopped at its deadline: it did not finish
        else:
            counts[s.value if s in TERMINAL_STATUSES else key] += 1
    spec = sweep.spec
    return SweepRead(
        id=sweep.id,
        name=sweep.name,
        priority=sweep.priority or "normal",
        status=sweep_status(sweep, jobs),
        backbone=spec["backbone"],
        protocol=spec["protocol"],
        prompt=spec.get("prompt"),
        hyperparameters=spec["hyperparameters"],
        grid=spec["grid"],
        points=spec["points"],
        selection=spec["selection"],
        cells=[
            SweepCellRead(
                index=i, **{k: c[k] for k in ("dataset", "dataset_id", "checkpoint_id", "seed", "source")}
            )
            for i, c in enumerate(sweep.cells)
        ],
        jobs=[
            SweepJobRead(id=j.id, cell=c, point=p, status=j.status, fraction=_fraction(j), metrics=j.metrics)
            for j in jobs
            for p, c in [_index(j)]
        ],
        progress=SweepProgress(
            jobs=len(jobs), **counts, fraction=sum(_fraction(j) for j in jobs) / max(1, len(jobs))
        ),
        source=sweep.source,
        cancel_requested=sweep.cancel_requested,
        created_at=sweep.created_at,
    )


def get_sweep(session: Session, project_id: str, sweep_id: str) -> Sweep:
    sweep = repo.get_sweep(session, project_id, sweep_id)
    if sweep is None:
        raise NotFound(f"sweep {sweep_id!r} not found", param="id")
    return sweep


def cancel_sweep(session: Session, project_id: str, sweep_id: str) -> Sweep:
    """Cancel every job of the sweep that has not finished (queued ones at once, running ones at their
    next step); 409 when all have finished already."""
    sweep = get_sweep(session, project_id, sweep_id)
    jobs = repo.sweep_jobs(session, sweep.id)
    open_jobs = [j for j in jobs if JobStatus(j.status) not in TERMINAL_STATUSES]
    if not open_jobs:
        raise Conflict(f"every job of sweep {sweep.id} has finished", code="sweep_finished", param="id")
    sweep.cancel_requested = True
    for job in open_jobs:
        repo.request_cancel(session, job)
    session.commit()
    log.info("sweep %s: cancel requested for %d jobs", sweep.id, len(open_jobs))
    return sweep


# ------------------------------------------------------------------------------------------ report

_report_cache: OrderedDict[str, tuple[dict[str, tuple[float, float]], float | None]] = OrderedDict()
_report_lock = threading.Lock()
_CACHE_SIZE = 4096


def _report_facts(
    session: Session, store: ArtifactStore, job: Job
) -> tuple[dict[str, tuple[float, float]], float | None]:
    """The naive baselines and the last epoch's validation accuracy from the job's report.json (cached
    by the file's sha256: a report never changes once written)."""
    art = repo.get_artifact(session, job.id, "report.json")
    if art is None:
        return {}, None
    with _report_lock:
        hit = _report_cache.get(art.sha256)
        if hit is not None:
            _report_cache.move_to_end(art.sha256)
            return hit
    try:
        report = json.loads(store.get_bytes(art.key))
    except (ArtifactNotFound, OSError, ValueError):
        log.warning("sweep report: job %s report.json unreadable", job.id, exc_info=True)
        return {}, None
    acc: dict[str, tuple[float, float]] = {}
    base = report.get("baselines") or {}
    for name in ("feature_interpolation", "ensemble"):
        b = base.get(name) or {}
        if isinstance(b.get("base"), int | float) and isinstance(b.get("novel"), int | float):
            acc[name] = (float(b["base"]), float(b["novel"]))
    vals = [e.get("val_acc") for e in report.get("training") or [] if isinstance(e, dict)]
    val = vals[-1] if vals and isinstance(vals[-1], int | float) else None
    facts = (acc, float(val) if val is not None else None)
    with _report_lock:
        _report_cache[art.sha256] = facts
        while len(_report_cache) > _CACHE_SIZE:
            _report_cache.popitem(last=False)
    return facts


def sweep_report(session: Session, store: ArtifactStore, sweep: Sweep) -> dict[str, Any]:
    """The report's data: the sweep (status, progress, jobs), the table of the selected grid point (or
    the only one), the whole grid, and one row per job with its link."""
    jobs = repo.sweep_jobs(session, sweep.id)
    read = sweep_read(session, sweep, jobs)
    results: list[CellResult] = []
    rows = []
    for j in sorted(jobs, key=_index):
        point, cell_i = _index(j)
        cell: dict[str, Any] = (
            sweep.cells[cell_i] if cell_i < len(sweep.cells) else {"dataset": "?", "seed": 0}
        )
        row: dict[str, Any] = {"job_id": j.id, "cell": cell_i, "point": point, "dataset": cell["dataset"],
                               "seed": cell["seed"], "status": j.status, "fraction": _fraction(j), "val_acc": None,
                               "recovered": None}  # fmt: skip
        m = j.metrics or {}
        if j.status == JobStatus.succeeded and all(
            isinstance(m.get(k), dict) for k in ("zero_shot", "fine_tuned", "recovered")
        ):
            acc = {
                k: (float(m[k]["base"]), float(m[k]["novel"]))
                for k in ("zero_shot", "fine_tuned", "recovered")
            }
            extra, val = _report_facts(session, store, j)
            results.append(CellResult(cell["dataset"], int(cell["seed"]), point, {**acc, **extra}, val))
            row.update(val_acc=val, recovered=m["recovered"])
        rows.append(row)
    datasets = list(dict.fromkeys(c["dataset"] for c in sweep.cells))
    table = build_table(
        results,
        datasets=datasets,
        points=sweep.spec["points"] or [{}],
        cells_per_point=len(sweep.cells),
        rule=sweep.spec["selection"],
    )
    # The choice cannot change once no job is left to finish (failed or cancelled cells included).
    table["selection"]["final"] = table["selection"]["final"] or read.status in (
        "succeeded",
        "failed",
        "cancelled",
    )
    return {"sweep": read.model_dump(mode="json"), "table": table, "jobs": rows}


def render_report(report: dict[str, Any], fmt: str, job_href: str = "/jobs/") -> tuple[str, str]:
    """(body, media type) of the report in ``json`` | ``csv`` | ``tex`` | ``txt`` | ``html`` (whose job
    links are ``job_href`` + the job id: the dashboard's job pages). ``txt`` is the fixed-width table
    that ``mergetune sweep wait`` prints."""
    if fmt == "json":
        return json.dumps(report, indent=2, sort_keys=False), "application/json"
    if fmt == "csv":
        return to_csv(report["table"]), "text/csv; charset=utf-8"
    if fmt == "tex":
        caption = f"Base-to-novel accuracy (%), sweep {report['sweep']['name']}"
        return to_latex(report["table"], caption=caption), "application/x-tex; charset=utf-8"
    if fmt == "txt":
        return to_text(report["table"]), "text/plain; charset=utf-8"
    if fmt == "html":
        page = _env.get_template("sweep_report.html").render(report=report, job_href=job_href)
        return page, "text/html; charset=utf-8"
    raise NotFound(f"no report format {fmt!r} (json, csv, tex, txt, html)", param="format")


def render_table_fragment(report: dict[str, Any], job_href: str = "/jobs/") -> str:
    """The report's tables alone (the dashboard's sweep page swaps this in while the sweep runs)."""
    return _env.get_template("_sweep_table.html").render(report=report, job_href=job_href)
