"""The input stages: the job's rows and hyperparameters, the checkpoint's tensors and the backbone, the
dataset and its split, the extra evaluation datasets, and the starting tensors the core trains from."""

from __future__ import annotations

import time
from typing import Any

from mergetune.common.settings import Settings
from mergetune.common.storage import ArtifactStore, LocalStore
from mergetune.worker import jobdb
from mergetune.worker.backbones import get_backbone, weights_sources
from mergetune.worker.pipeline import mma
from mergetune.worker.pipeline.job import JobRun
from mergetune.worker.remote_inputs import local_weights, open_dataset_row


def _load_tensors(store: ArtifactStore, key: str) -> dict[str, Any]:
    """The checkpoint's stored tensors, read by the same bounded, sandboxed parser as uploads (a child
    process with the PARSE_* limits) before the worker trusts them."""
    import torch

    from mergetune.common.settings import get_settings
    from mergetune.core.checkpoints.safe_pickle import ParseLimits
    from mergetune.core.checkpoints.sandbox import SandboxLimits, ingest_sandboxed

    settings = get_settings()
    limits = SandboxLimits(
        memory_bytes=settings.PARSE_MEMORY_BYTES,
        cpu_seconds=settings.PARSE_CPU_SECONDS,
        wall_seconds=settings.PARSE_WALL_SECONDS,
        parse=ParseLimits(
            max_tensor_bytes=settings.PARSE_MAX_TENSOR_BYTES, max_total_bytes=settings.PARSE_MAX_TOTAL_BYTES
        ),
    )
    path = store.local_path(key)
    try:
        ck = ingest_sandboxed(path, filename="tensors.safetensors", limits=limits)
        arrays = {"ctx": ck.ctx, "weight": ck.head_weight, "bias": ck.head_bias, **(ck.adapters or {})}
        return {name: torch.from_numpy(arr) for name, arr in arrays.items() if arr is not None}
    finally:
        if not isinstance(store, LocalStore):  # a temporary download; LocalStore gives the stored file
            path.unlink(missing_ok=True)


def _split_sha(task: Any) -> str | None:
    value = getattr(task, "split_sha256", None)
    return str(value() if callable(value) else value) if value else None


def _open_eval_datasets(
    settings: Settings, ids: list[str], rows: list[dict[str, Any] | None], taken: set[str]
) -> list[tuple[str, Any, dict[str, Any]]]:
    """Open the job's extra evaluation datasets as the main one is opened: [(name, Dataset, row)].

    A missing, unreadable or image-less one fails the job as a user error naming it (param
    ``eval_dataset_ids[i]``). Names are the registered names, made unique (``name (id)``) where they
    repeat or clash with ``taken`` (the head report's own split names)."""
    from mergetune.core.config import DatasetKind
    from mergetune.core.errors import CoreError, DatasetError
    from mergetune.core.evaluation.crossdata import eval_records

    out: list[tuple[str, Any, dict[str, Any]]] = []
    used = set(taken)
    for i, (ds_id, row) in enumerate(zip(ids, rows, strict=True)):
        param = f"eval_dataset_ids[{i}]"
        if row is None:
            raise DatasetError(f"evaluation dataset {ds_id!r} not found", code="not_found", param=param)
        label = f"evaluation dataset {row['name']!r} ({ds_id})"
        try:
            dataset = open_dataset_row(
                settings,
                DatasetKind(row["kind"]),
                row.get("path") or "",
                coop_name=row.get("coop_name"),
                options=row.get("options"),
                credentials=row.get("credentials_sealed"),
            )
            eval_records(dataset)  # raises when it has neither test nor val images
        except CoreError as exc:
            raise DatasetError(
                f"{label} cannot be used: {exc.message}",
                code=exc.code if exc.user_error else "bad_dataset",
                param=param,
            ) from exc
        except Exception as exc:  # noqa: BLE001 - unreadable files, bad options: the dataset is at fault
            raise DatasetError(
                f"{label} cannot be opened: {type(exc).__name__}: {exc}", code="bad_dataset", param=param
            ) from exc
        name = str(row["name"])
        if name in used:
            name = f"{name} ({ds_id})"
        used.add(name)
        out.append((name, dataset, row))
    return out


def stage_load_inputs(run: JobRun) -> None:
    """Job, checkpoint and dataset rows; method and validated hyperparameters.

    Failure: a hyperparameter the core refuses fails the job (validation error)."""
    from mergetune.core.config import BackboneSpec, HeadHyperparameters, Hyperparameters, Method

    rows = jobdb.load_job_inputs(run.url, run.job_id)
    run.job, run.ck, run.ds_row = rows["job"], rows["checkpoint"], rows["dataset"]
    run.method = Method(run.ck["method"] or "coop")
    run.head = run.job["job_type"] == "linear_head" or run.method == Method.linear_head
    hp_cls = HeadHyperparameters if run.head else Hyperparameters
    if mma.is_mma(run.method):
        run.hp = mma.hyperparameters(run.job["hyperparameters"])
    else:
        run.hp = hp_cls(**(run.job["hyperparameters"] or {}))
    run.spec = BackboneSpec(**run.job["backbone"])
    run.protocol = str(run.job.get("protocol") or "base2novel")
    run.position = str((run.job.get("prompt") or {}).get("class_token_position") or "end")


def stage_backbone(run: JobRun) -> None:
    """The checkpoint's tensors and the (cached) backbone.

    Failure: a checkpoint without extracted tensors fails the job as a user error (``missing_ctx``);
    a backbone that cannot be built fails it as a system error."""
    from mergetune.core.errors import CheckpointError

    t = time.monotonic()
    if not run.ck.get("tensors_key"):
        raise CheckpointError(
            "checkpoint has no extracted tensors", code="missing_ctx", param="checkpoint_id"
        )
    run.tensors = _load_tensors(run.store, run.ck["tensors_key"])
    cache_dir, model_root, forbidden = weights_sources(run.settings)
    with local_weights(  # s3:// or uploaded weights: a verified file in the input cache
        run.settings, run.spec, url=run.url, project_id=run.job["project_id"], store=run.store
    ) as spec:
        if spec is not run.spec:
            model_root, forbidden = None, ()
        run.backbone, run.cached = get_backbone(
            spec, run.device, cache_dir, model_root=model_root, forbidden=forbidden
        )
    run.timings["load_backbone"] = time.monotonic() - t
    for message in getattr(run.backbone, "warnings", []):  # e.g. OpenAI weights under a GELU name
        jobdb.add_event(run.url, run.job_id, "warning", message, "warning", code="backbone_activation")


def stage_features(run: JobRun) -> None:
    """The dataset and its base-to-novel split, the extra evaluation datasets, and the starting tensors
    (prompt context or head weights) the core encodes and trains from.

    Failure: an unreadable dataset, a missing extra dataset or a checkpoint without ``ctx`` fails the job
    as a user error naming the parameter; a changed split only adds a warning event."""
    from mergetune.core.config import ClassTokenPosition, DatasetKind, PromptLearnerSpec
    from mergetune.core.data.protocols import make_task
    from mergetune.core.errors import CheckpointError

    url, ds_row, job = run.url, run.ds_row, run.job
    t = time.monotonic()
    dataset = open_dataset_row(
        run.settings,
        DatasetKind(ds_row["kind"]),
        ds_row.get("path") or "",
        coop_name=ds_row.get("coop_name"),
        options=ds_row.get("options"),
        credentials=ds_row.get("credentials_sealed"),
    )
    # prompt jobs follow the job's protocol; heads pick their rows from the checkpoint (mergetune.core.method.recovery)
    task = make_task(dataset, "base2novel" if run.head else run.protocol, run.hp.shots, run.hp.seed)
    run.dataset, run.task = dataset, task
    run.timings["load_dataset"] = time.monotonic() - t
    task_sha = run.task_sha = _split_sha(task)
    if ds_row.get("sha256_of_split") and ds_row["sha256_of_split"] not in (task_sha, dataset.split_sha256()):
        jobdb.add_event(
            url,
            run.job_id,
            "warning",
            "The dataset's splits changed since it was registered (split hash differs)",
            "warning",
            registered=ds_row["sha256_of_split"],
            now=task_sha,
        )

    # extra evaluation datasets (cross-dataset / shift)
    t = time.monotonic()
    eval_ids = [str(i) for i in (job.get("eval_dataset_ids") or [])]
    if eval_ids:
        extra: list[tuple[str, Any]] = []
        if run.head:  # explicit datasets come on top of the default shifted splits of a built-in dataset
            from mergetune.core.evaluation.crossdata import builtin_shift_datasets

            extra += builtin_shift_datasets(dataset)
        eval_rows = jobdb.load_datasets(url, job["project_id"], eval_ids)
        taken = {"val", "test", *(name for name, _ in extra)}
        run.eval_opened = _open_eval_datasets(run.settings, eval_ids, eval_rows, taken)
        extra += [(name, d) for name, d, _ in run.eval_opened]
        run.extra_datasets = extra
        run.timings["load_eval_datasets"] = time.monotonic() - t

    tensors = run.tensors
    if mma.is_mma(run.method):  # the adapters under MMA's keys
        run.ctx_ft = mma.starting_tensors(tensors, run.ck)
    elif run.head:
        run.ctx_ft = {k: v for k, v in tensors.items() if k in ("weight", "bias")}
        run.prompt_spec = None
    else:
        if "ctx" not in tensors:
            raise CheckpointError(
                "checkpoint tensors have no 'ctx'", code="missing_ctx", param="checkpoint_id"
            )
        run.ctx_ft = tensors["ctx"].float()
        run.prompt_spec = PromptLearnerSpec(
            n_ctx=int(run.ctx_ft.shape[-2]),
            csc=run.ctx_ft.dim() == 3,
            class_token_position=ClassTokenPosition(run.position),
            ctx_init=None,
        )
