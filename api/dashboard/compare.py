"""``/compare``: two to eight jobs of the project side by side (metrics with the best marked, settings
with the differing ones marked, overlaid training and interpolation curves)."""

from __future__ import annotations

import json
import logging
import math
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.orm import Session

from mergetune.api.dashboard.auth import ViewerDep, to_login
from mergetune.api.dashboard.queries import REPORT_MAX_BYTES, epoch_series, job_artifacts, project_job
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
            _report_json(settings, job.id, job_artifacts(session, job.id))
            if job.status == "succeeded"
            else {}
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
    context = compare_context(session, settings, jobs) if not problem else {}
    return render(
        request,
        "compare.html",
        viewer,
        status_code=200 if not problem else 422,
        jobs=jobs,
        problem=problem,
        **context,
    )
