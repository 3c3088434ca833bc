"""``/compare``: two to eight jobs of the project side by side, each named by its metadata name (or its
short id): metrics with the best marked (only among comparable runs: same dataset, backbone,
evaluation protocol and job type; a banner lists what differs), settings with the differing ones marked
(``diff=1`` shows only those), a hyperparameter-vs-metric scatter and parallel coordinates, and the
overlaid training and interpolation curves."""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from mergetune.api.dashboard.auth import ViewerDep, to_login
from mergetune.api.dashboard.queries import (
    REPORT_MAX_BYTES,
    epoch_series,
    job_artifacts,
    project_datasets,
    project_job,
)
from mergetune.api.dashboard.render import render
from mergetune.api.deps import SessionDep, SettingsDep
from mergetune.common.models import Artifact, Job
from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactNotFound, get_store
from mergetune.core.config import Protocol

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

COMPARE_MAX = 8
COMPARE_METRICS = (("zero_shot", "zero-shot"), ("fine_tuned", "fine-tuned"), ("recovered", "recovered"))
#: The scatter's y choices: (key, label) of a metric computed from each job's stored metrics.
EXPLORE_METRICS = (
    ("recovered.hm", "recovered HM (%)"),
    ("recovered.base", "recovered base (%)"),
    ("recovered.novel", "recovered novel (%)"),
    ("hm_vs_zero_shot", "recovered HM − zero-shot HM (points)"),
    ("novel_vs_zero_shot", "recovered novel − zero-shot novel (points)"),
    ("hm_vs_fine_tuned", "recovered HM − fine-tuned HM (points)"),
    ("fine_tuned.hm", "fine-tuned HM (%)"),
)
#: What makes two runs' accuracies comparable, and how the banner names it.
COMPARABLE = (
    ("dataset", "dataset"),
    ("model", "backbone model"),
    ("pretrained", "pretrained weights"),
    ("protocol", "evaluation protocol"),
    ("job_type", "job type"),
)
PROTOCOL_LABELS = {"base2novel": "base-to-novel", "all": "all classes"}


def short_id(job_id: str) -> str:
    """The last 8 characters of an id (ids start with their time, so the end tells jobs apart)."""
    return job_id if len(job_id) <= 12 else "…" + job_id[-8:]


def run_labels(jobs: list[Job]) -> list[str]:
    """Each job's name (metadata ``name``, else its short id); a name that several jobs share gets the
    short id after it."""
    names = [str((j.metadata_ or {}).get("name") or "").strip() for j in jobs]
    out = []
    for job, name in zip(jobs, names, strict=True):
        if not name:
            out.append(short_id(job.id))
        elif names.count(name) > 1:
            out.append(f"{name} ({short_id(job.id)})")
        else:
            out.append(name)
    return out


def _num(value: Any) -> float | None:
    return (
        float(value)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        else None
    )


def explore_metrics(job: Job) -> dict[str, float | None]:
    """The EXPLORE_METRICS values of a job (None where its metrics lack a part)."""
    m = job.metrics if isinstance(job.metrics, dict) else {}

    def get(group: str, split: str) -> float | None:
        part = m.get(group)
        return _num(part.get(split)) if isinstance(part, dict) else None

    def minus(a: float | None, b: float | None) -> float | None:
        return a - b if a is not None and b is not None else None

    rec_hm = get("recovered", "hm")
    return {
        "recovered.hm": rec_hm,
        "recovered.base": get("recovered", "base"),
        "recovered.novel": get("recovered", "novel"),
        "hm_vs_zero_shot": minus(rec_hm, get("zero_shot", "hm")),
        "novel_vs_zero_shot": minus(get("recovered", "novel"), get("zero_shot", "novel")),
        "hm_vs_fine_tuned": minus(rec_hm, get("fine_tuned", "hm")),
        "fine_tuned.hm": get("fine_tuned", "hm"),
    }


def comparability(jobs: list[Job], labels: list[str], dataset_names: dict[str, str]) -> dict[str, Any]:
    """What makes the runs' accuracies incomparable: ``differs`` [{what, values: [{value, runs}]}], each
    job's group index (runs of one group share dataset, backbone, protocol and job type) and the groups'
    letters."""
    facts = []
    for job in jobs:
        bb = job.backbone or {}
        protocol = job.protocol or Protocol.base2novel.value
        evaluation = PROTOCOL_LABELS.get(protocol, protocol)
        if job.eval_dataset_ids:
            evaluation += (
                " + cross-dataset (" + ", ".join(dataset_names.get(d, d) for d in job.eval_dataset_ids) + ")"
            )
        facts.append(
            {
                "dataset": dataset_names.get(job.dataset_id, job.dataset_id),
                "model": str(bb.get("model")),
                "pretrained": str(bb.get("pretrained")),
                "protocol": evaluation,
                "job_type": job.job_type,
            }
        )
    differs = []
    for key, what in COMPARABLE:
        values: dict[str, list[str]] = {}
        for fact, label in zip(facts, labels, strict=True):
            values.setdefault(fact[key], []).append(label)
        if len(values) > 1:
            differs.append({"what": what, "values": [{"value": v, "runs": r} for v, r in values.items()]})
    keys = [tuple(f[k] for k, _ in COMPARABLE) for f in facts]
    order = list(dict.fromkeys(keys))
    return {
        "differs": differs,
        "group_of": [order.index(k) for k in keys],
        "group_letters": [chr(ord("A") + i) for i in range(len(order))],
    }


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


def compare_context(
    session: Session, settings: Settings, jobs: list[Job], dataset_names: dict[str, str] | None = None
) -> dict[str, Any]:
    """Side by side: the runs' names, metrics (zero-shot, fine-tuned, recovered x base, novel, HM) with
    the verdict and the best per comparable group, what makes them incomparable, the settings with
    differing keys marked, each job's curves for the overlaid charts and the scatter's data."""
    dataset_names = dataset_names or {}
    labels = run_labels(jobs)
    groups = comparability(jobs, labels, dataset_names)
    settings_rows: dict[str, list[Any]] = {}

    def put(key: str, index: int, value: Any) -> None:
        settings_rows.setdefault(key, [None] * len(jobs))[index] = value

    series = []
    for i, job in enumerate(jobs):
        put("checkpoint_id", i, job.checkpoint_id)
        put("dataset_id", i, job.dataset_id)
        put("backbone", i, f"{(job.backbone or {}).get('model')} / {(job.backbone or {}).get('pretrained')}")
        put("protocol", i, job.protocol or Protocol.base2novel.value)
        put("job_type", i, job.job_type)
        if any(j.eval_dataset_ids for j in jobs):
            put("eval_datasets", i, ", ".join(dataset_names.get(d, d) for d in job.eval_dataset_ids or []))
        for key, value in sorted((job.hyperparameters or {}).items()):
            put(f"hyperparameters.{key}", i, value)
        report = (
            _report_json(settings, job.id, job_artifacts(session, job.id))
            if job.status == "succeeded"
            else {}
        )
        series.append(
            {
                "id": job.id,
                "label": labels[i],
                "epochs": epoch_series(session, job.id),
                "interpolation": interpolation_hm(report),
            }
        )
    rows: list[dict[str, Any]] = [
        {"key": k, "values": v, "differs": len({json.dumps(x, sort_keys=True, default=str) for x in v}) > 1}
        for k, v in settings_rows.items()
    ]
    # The best value per column, within each group of comparable runs (the whole set when all are).
    best: list[dict[str, float]] = [{} for _ in groups["group_letters"]]
    for job, group in zip(jobs, groups["group_of"], strict=True):
        for key, _ in COMPARE_METRICS:
            for split in ("base", "novel", "hm"):
                v = ((job.metrics or {}).get(key) or {}).get(split)
                if isinstance(v, int | float):
                    best[group][f"{key}.{split}"] = max(
                        best[group].get(f"{key}.{split}", float("-inf")), float(v)
                    )
    group_sizes = [groups["group_of"].count(g) for g in range(len(best))]
    runs = [
        {
            "id": job.id,
            "label": labels[i],
            "href": f"/jobs/{job.id}",
            "group": groups["group_letters"][groups["group_of"][i]],
            "hp": {k: v for k, v in sorted((job.hyperparameters or {}).items()) if _scalar(v)},
            "metrics": explore_metrics(job),
        }
        for i, job in enumerate(jobs)
    ]
    # The differing hyperparameters, the one with the most distinct values first (the scatter's default x).
    spread = {
        r["key"].removeprefix("hyperparameters."): len({json.dumps(v, default=str) for v in r["values"]})
        for r in rows
        if r["differs"] and r["key"].startswith("hyperparameters.")
    }
    differing_hp = sorted(spread, key=lambda k: (-spread[k], k))
    return {
        "settings_rows": rows,
        "series": series,
        "best": best,
        "group_sizes": group_sizes,
        "metric_groups": COMPARE_METRICS,
        "labels": labels,
        "short_ids": [short_id(j.id) for j in jobs],
        "comparability": groups,
        "explore": {
            "runs": runs,
            "metrics": [{"key": k, "label": label} for k, label in EXPLORE_METRICS],
            "differing": differing_hp,
        },
    }


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


@router.get("/compare")
def compare_page(
    request: Request,
    session: SessionDep,
    viewer: ViewerDep,
    settings: SettingsDep,
    ids: Annotated[list[str] | None, Query(max_length=COMPARE_MAX + 1)] = None,
    diff: bool = False,
) -> Response:
    """``/compare?ids=job_a&ids=job_b``: 2-8 jobs of the project side by side (a shareable URL)."""
    if viewer is None:
        return to_login(request)
    wanted = list(dict.fromkeys(i.strip() for i in ids or [] if i.strip()))
    jobs = [j for j in (project_job(session, viewer, i) for i in wanted[:COMPARE_MAX]) if j is not None]
    missing = [i for i in wanted[:COMPARE_MAX] if i not in {j.id for j in jobs}]
    problem = None
    if len(wanted) > COMPARE_MAX:
        problem = f"ids: compare at most {COMPARE_MAX} jobs at once ({len(wanted)} selected)."
    elif missing:
        problem = f"ids: no job {', '.join(missing)} in this project."
    elif len(jobs) < 2:
        problem = "ids: select at least 2 jobs in the list to compare them."
    names = {d.id: d.name for d in project_datasets(session, viewer)}
    context = compare_context(session, settings, jobs, names) if not problem else {}
    ids_query = urlencode([("ids", j.id) for j in jobs])
    return render(
        request,
        "compare.html",
        viewer,
        status_code=200 if not problem else 422,
        jobs=jobs,
        problem=problem,
        diff=diff,
        diff_url=f"/compare?{ids_query}&diff=1",
        all_url=f"/compare?{ids_query}",
        **context,
    )
