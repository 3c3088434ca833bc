"""The MMA branch of the job pipeline (the stages in :mod:`.inputs`, :mod:`.training` and :mod:`.artifacts`
call these for ``method == "mma"``).

The checkpoint's stored tensors are MMA's adapters under MMA's keys; their layout (widths, blocks,
bottleneck) was read at upload (``checkpoints.info["mma_layout"]``). Training, evaluation and export
go through ``mergetune.core.method.mma`` and ``mergetune.core.checkpoints.export.export_mma``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def is_mma(method: Any) -> bool:
    return str(getattr(method, "value", method)) == "mma"


def hyperparameters(raw: dict[str, Any] | None) -> Any:
    from mergetune.core.config import MMAHyperparameters

    return MMAHyperparameters(**(raw or {}))


def layout_of(ck: dict[str, Any]) -> Any:
    from mergetune.core.checkpoints.mma_layout import AdapterLayout
    from mergetune.core.errors import CheckpointError

    raw = (ck.get("info") or {}).get("mma_layout")
    try:
        if isinstance(raw, dict):
            return AdapterLayout.from_json(raw)
        raise ValueError("no layout recorded")
    except (KeyError, ValueError) as exc:
        raise CheckpointError(
            f"the MMA checkpoint has no usable adapter layout ({exc}); upload it again",
            code="missing_ctx",
            param="checkpoint_id",
        ) from None


def starting_tensors(tensors: dict[str, Any], ck: dict[str, Any]) -> dict[str, Any]:
    """The fine-tuned adapters (fp32) after checking them against the recorded layout."""
    from mergetune.core.errors import CheckpointError

    layout = layout_of(ck)
    want = layout.shapes()
    got = {k: tuple(v.shape) for k, v in tensors.items() if k in want}
    if got != want:
        raise CheckpointError(
            "the stored MMA tensors do not match their recorded layout",
            code="bad_rank",
            param="checkpoint_id",
        )
    return {k: tensors[k].float() for k in want}


def train(run: Any, resume_state: dict[str, Any] | None) -> Any:
    from mergetune.core.method.mma import recover_mma

    cb = run.cb
    return recover_mma(
        run.backbone,
        run.task,
        run.ctx_ft,
        layout_of(run.ck),
        run.hp,
        on_progress=cb.on_progress,
        should_stop=cb.should_stop,
        resume_state=resume_state,
        on_epoch_end=cb.on_epoch_end,
    )


def export(run: Any, out_dir: Path, metadata: dict[str, Any]) -> dict[str, Path]:
    from mergetune.core.checkpoints.export import export_mma
    from mergetune.core.model.adapters import mma_buffers

    layout = layout_of(run.ck)
    meta = {**metadata, "layout": layout.to_json(), "adapter_scale": run.hp.adapter_scale}
    buffers = mma_buffers(run.backbone, list(run.task.base_classnames))
    return export_mma(out_dir, run.output.adapters, metadata=meta, epoch=run.hp.epochs, buffers=buffers)
