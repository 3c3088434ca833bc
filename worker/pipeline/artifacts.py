"""The export stage (the recovered prompts or head written into the work directory) and the finish stage
(artifacts uploaded, the job marked succeeded)."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

from mergetune.common.models import JobStatus
from mergetune.worker import jobdb
from mergetune.worker.pipeline import mma
from mergetune.worker.pipeline.job import JobRun, job_prefix, state_key

logger = logging.getLogger(__name__)

MEDIA_TYPES = {
    ".safetensors": "application/octet-stream",
    ".tar": "application/x-tar",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".png": "image/png",
}
#: Upload order: the report and manifest last, so a partial upload never looks complete.
ARTIFACT_ORDER = [
    "prompts.safetensors",
    "prompts.pth.tar",
    "prompts-coop.tar",
    "head.safetensors",
    "curves.png",
    "report.html",
    "manifest.json",
    "report.json",
]


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stage_export(run: JobRun) -> None:
    """Write the recovered prompts (CoOp/Dassl and safetensors) or head into the work directory.

    Failure: any error fails the job (system error); nothing is uploaded yet."""
    t = time.monotonic()
    result, method, spec, hp, task = run.output.result, run.method, run.spec, run.hp, run.task
    export_meta = {
        "job_id": run.job_id,
        "method": method.value,
        # A head may cover all classes (robust fine-tuning) or the base classes only.
        "classnames": list(result.config.get("classes", {}).get("head") or task.base_classnames),
        "backbone": {"model": spec.model, "pretrained": spec.pretrained},
        "weights_sha256": run.backbone.identity,
        "parent_sha256": run.ck.get("sha256"),
        "hyperparameters": hp.model_dump(mode="json"),
    }
    if not run.head:
        export_meta.update(
            class_token_position=run.position,
            protocol=run.protocol,
            # one CSC row per class, in this order (a generic context was trained on these classes)
            context_classes=list(task.base_classnames),
            activation=getattr(run.backbone, "activation", None),
        )
    out_dir = run.out_dir = run.work / "out"
    out_dir.mkdir()
    if mma.is_mma(run.method):
        run.files.update(mma.export(run, out_dir, export_meta))
    elif run.head:
        from mergetune.core.checkpoints.export import export_head

        rec = run.output.ctx
        if isinstance(rec, dict):
            w, b = rec["weight"], rec.get("bias")
        elif isinstance(rec, tuple | list):
            w, b = rec[0], (rec[1] if len(rec) > 1 else None)
        else:
            w, b = rec, None
        run.files.update(
            export_head(
                out_dir, w.detach().cpu(), None if b is None else b.detach().cpu(), metadata=export_meta
            )
        )
    else:
        from mergetune.core.checkpoints.export import export_prompts
        from mergetune.core.model.prompts import PromptLearner

        backbone = run.backbone
        ctx = run.output.ctx.detach().float().cpu()
        learner = PromptLearner(
            backbone, list(task.base_classnames), ctx.to(backbone.device), run.prompt_spec
        )
        prefix, suffix = learner.dassl_buffers()
        run.files.update(
            export_prompts(
                out_dir,
                ctx,
                token_prefix=prefix.detach().cpu(),
                token_suffix=suffix.detach().cpu(),
                metadata=export_meta,
                epoch=hp.epochs,
            )
        )
    run.timings["export"] = time.monotonic() - t


def stage_finish(run: JobRun) -> str:
    """Upload the artifacts (report and manifest last), then one transaction replaces the job's artifact
    rows and marks it ``succeeded``; the epoch state is deleted after that.

    Retry: artifacts go to fixed keys, so a rerun overwrites them. A node that lost the job (taken over
    meanwhile) uploads nothing, or, if it lost it during the upload, does not mark it: ``skipped``."""
    url, job_id, hostname, store, files = run.url, run.job_id, run.hostname, run.store, run.files
    if jobdb.stop_flags(url, job_id, run.claim.attempt)[1] != hostname:  # taken over: keep its files
        logger.warning("job %s: taken over by another node before upload; dropping this run", job_id)
        return "skipped: lost ownership"
    artifacts: list[dict[str, Any]] = []
    for name in sorted(files, key=lambda n: ARTIFACT_ORDER.index(n) if n in ARTIFACT_ORDER else 0):
        path = files[name]
        key = job_prefix(job_id) + name
        store.put_file(key, path)
        artifacts.append(
            {
                "name": name,
                "bytes": path.stat().st_size,
                "sha256": _sha256_file(path),
                "media_type": MEDIA_TYPES.get(path.suffix, "application/octet-stream"),
                "key": key,
            }
        )
    cb, hp = run.cb, run.hp
    total = run.claim.previous_seconds + (time.monotonic() - run.t0)  # all attempts, not just this one
    progress = (
        dict(cb.progress) if cb is not None and cb.progress else {"epoch": hp.epochs, "epochs": hp.epochs}
    )
    ok = jobdb.finish_job(
        url,
        job_id,
        hostname,
        JobStatus.succeeded,
        message=f"Job succeeded in {total:.1f} s"
        + (f" ({run.claim.attempt} attempts)" if run.claim.attempt > 1 else ""),
        metrics=run.result_json.get("metrics"),
        progress=progress,
        artifacts=artifacts,
        verdict=run.result_json.get("verdict"),
        attempt=run.claim.attempt,
        run_seconds=total,
    )
    if not ok:
        return "skipped: lost ownership before finishing"
    store.delete(state_key(job_id))
    logger.info("job %s succeeded (%s)", job_id, ", ".join(a["name"] for a in artifacts))
    return "succeeded"
