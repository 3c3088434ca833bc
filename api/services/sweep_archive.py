"""Sweep archives (a CoOp output tree, zip or tar) as the API sees them: never opened here.

The archive is read in a parse child (:func:`mergetune.core.checkpoints.sandbox.unpack_sandboxed`,
which runs :func:`mergetune.core.checkpoints.archive.unpack_tree` under the sandbox's memory, CPU,
wall-time and file-size limits) holding one slot of the parse pool, like a checkpoint parse. The child
checks the whole archive (what it is by its first bytes, its headers, names, types, counts, declared
and unpacked bytes, compression ratio) and writes each run's last checkpoint into a scratch folder;
the API process only reads the child's JSON answer and hands those files to the upload service. Every
refusal is a 422 naming ``file``.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from mergetune.api.errors import Unprocessable
from mergetune.api.parse_pool import parse_pool
from mergetune.common.settings import Settings
from mergetune.core.checkpoints.archive import TreeCheckpoint
from mergetune.core.errors import CheckpointError


@dataclass(frozen=True)
class UnpackedTree:
    """The runs' last checkpoints (``checkpoints``), each in ``folder / ck.file``."""

    folder: Path
    checkpoints: list[TreeCheckpoint]

    def path(self, ck: TreeCheckpoint) -> Path:
        return self.folder / ck.file


@contextmanager
def unpacked_tree(settings: Settings, archive: Path, *, project_id: str | None) -> Iterator[UnpackedTree]:
    """Check ``archive`` in the sandbox and yield its checkpoints; the scratch folder goes afterwards."""
    settings.tmp_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="sweep-", dir=settings.tmp_dir))
    try:
        try:
            checkpoints = parse_pool(settings).unpack(settings, archive, folder, project_id=project_id)
        except CheckpointError as exc:
            raise Unprocessable(exc.message, code=exc.code, param="file") from None
        yield UnpackedTree(folder, checkpoints)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
