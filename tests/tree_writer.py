"""Writes CoOp output trees the way CoOp/Dassl leave them on disk, packed as zip or tar (from scratch:
``<root>/<dataset>/shots_16/<Trainer>/<cfg>/seed<N>/prompt_learner/model.pth.tar-<E>`` next to Dassl's
``checkpoint`` pointer and the run's ``log.txt``)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import Iterable


def coop_tree(
    runs: Iterable[tuple[str, int, bytes]],
    *,
    root: str = "output/base2new/train_base",
    trainer: str = "CoOp",
    cfg: str = "vit_b16_ep50",
    epoch: int = 50,
    shots: int = 16,
) -> dict[str, bytes]:
    """{member path: bytes} of a tree with one run per (dataset, seed, checkpoint bytes)."""
    files: dict[str, bytes] = {}
    for dataset, seed, data in runs:
        run = f"{root}/{dataset}/shots_{shots}/{trainer}/{cfg}/seed{seed}"
        files[f"{run}/prompt_learner/model.pth.tar-{epoch}"] = data
        files[f"{run}/prompt_learner/checkpoint"] = f"model.pth.tar-{epoch}\n".encode()
        files[f"{run}/log.txt"] = f"Loading trainer: {trainer}\nFinish training\n".encode()
    return files


def zip_bytes(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(files: dict[str, bytes], *, mode: str = "w:gz", extra: Iterable[tarfile.TarInfo] = ()) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return buf.getvalue()
