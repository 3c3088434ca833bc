"""The report stage: manifest.json (provenance: config, data, checkpoint, backbone, packages, worker,
timings), report.json and, where it renders, report.html and curves.png."""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

from mergetune.common.models import utcnow
from mergetune.worker import jobdb
from mergetune.worker.pipeline.job import JobRun

logger = logging.getLogger(__name__)

PACKAGES = [
    "torch",
    "torchvision",
    "open_clip_torch",
    "numpy",
    "safetensors",
    "pillow",
    "celery",
    "kombu",
    "sqlalchemy",
    "mergetune-service",
]


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = importlib_metadata.version(name)
        except importlib_metadata.PackageNotFoundError:
            out[name] = None
    return out


def _manifest(run: JobRun) -> dict[str, Any]:
    import torch

    job, ck, ds_row, spec, hp, task, dataset = (
        run.job,
        run.ck,
        run.ds_row,
        run.spec,
        run.hp,
        run.task,
        run.dataset,
    )
    device = run.device
    return {
        "job_id": run.job_id,
        "seed": hp.seed,
        "config": {
            "job_type": job["job_type"],
            "method": run.method.value,
            "backbone": spec.model_dump(mode="json"),
            "hyperparameters": hp.model_dump(mode="json"),
            "prompt": run.prompt_spec.model_dump(mode="json") if run.prompt_spec else None,
            "protocol": None if run.head else run.protocol,
            "metadata": job.get("metadata_") or {},
        },
        "dataset": {
            "id": ds_row["id"],
            "name": ds_row["name"],
            "kind": ds_row["kind"],
            "path": ds_row.get("path"),
            "coop_name": ds_row.get("coop_name"),
            "options": ds_row.get("options"),
            "split_sha256": run.task_sha,
            "dataset_sha256": dataset.split_sha256(),
            "registered_split_sha256": ds_row.get("sha256_of_split"),
            "base_classes": list(task.base_classnames),
            "novel_classes": list(task.novel_classnames),
            # the dataset kind's training augmentation (linear heads train on un-augmented features)
            "train_transform": None if run.head else dataset.train_transform.model_dump(mode="json"),
        },
        "eval_datasets": [
            {
                "id": row["id"],
                "name": row["name"],
                "report_name": name,
                "kind": row["kind"],
                "path": row.get("path"),
                "coop_name": row.get("coop_name"),
                "options": row.get("options"),
                "dataset_sha256": d.split_sha256(),
                "registered_split_sha256": row.get("sha256_of_split"),
            }
            for name, d, row in run.eval_opened
        ],
        "checkpoint": {
            "id": ck["id"],
            "sha256": ck.get("sha256"),
            "format": ck.get("format"),
            "method": ck.get("method"),
            "n_ctx": ck.get("n_ctx"),
            "csc": ck.get("csc"),
        },
        "backbone": {
            "model": spec.model,
            "pretrained": spec.pretrained,
            "weights_sha256": run.backbone.identity,
            "weights_format": getattr(run.backbone, "weights_format", None),
            "activation": getattr(run.backbone, "activation", None),
            "warnings": list(getattr(run.backbone, "warnings", [])),
        },
        "packages": package_versions(),
        "worker": {
            "node": run.hostname,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "device": device,
            "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "torch_threads": torch.get_num_threads(),
            "backbone_cached": run.cached,
        },
        "attempts": run.claim.attempt,
        "resumed_from_epoch": run.resumed_from,
        "created_at": job["created_at"].isoformat() if job.get("created_at") else None,
        "started_at": job["started_at"].isoformat() if job.get("started_at") else None,
        "finished_at": utcnow().isoformat(),
        "timings": {
            **{k: round(v, 4) for k, v in run.timings.items()},
            "core": {k: round(float(v), 4) for k, v in (run.result_json.get("timings") or {}).items()},
        },
    }


def stage_report(run: JobRun) -> None:
    """manifest.json, report.json, and (when mergetune.core.evaluation.report renders) report.html and curves.png.

    Failure: a report that cannot be rendered only adds a warning event; the job still succeeds."""
    run.timings["total"] = time.monotonic() - run.t0
    manifest = _manifest(run)
    out_dir = run.out_dir
    assert out_dir is not None
    report = {"job_id": run.job_id, **run.result_json, "manifest": manifest}
    if not run.head:
        from mergetune.core.data.protocols import SPLIT_LABELS

        report["protocol"] = {"name": run.protocol, "labels": SPLIT_LABELS[run.protocol]}
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    run.files["manifest.json"] = out_dir / "manifest.json"
    run.files["report.json"] = out_dir / "report.json"
    try:
        from mergetune.core.evaluation.report import render_report
    except ImportError:
        logger.warning(
            "mergetune.core.evaluation.report is not available: report.html and curves.png skipped"
        )
        return
    try:
        for p in render_report(report, out_dir):
            run.files[Path(p).name] = Path(p)
    except Exception as exc:  # noqa: BLE001 - the report is a convenience; the job still succeeds
        logger.warning("job %s: report rendering failed", run.job_id, exc_info=True)
        jobdb.add_event(
            run.url, run.job_id, "warning", f"report.html could not be rendered: {exc}", "warning"
        )
