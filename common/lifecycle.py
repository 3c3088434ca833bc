"""Freeing what the artifact store holds for a job, a checkpoint or a sweep, and saying how much went.

Used by the API's DELETE endpoints (:mod:`mergetune.api.services.lifecycle`); the bytes are counted from
the store itself (each key's size) just before its files are removed."""

from __future__ import annotations

from dataclasses import dataclass

from mergetune.common.storage import ArtifactStore


@dataclass
class Freed:
    bytes: int = 0
    files: int = 0

    def add(self, other: Freed) -> Freed:
        self.bytes += other.bytes
        self.files += other.files
        return self


def free_prefix(store: ArtifactStore, prefix: str) -> Freed:
    """Remove every file under ``prefix`` (a folder: ends with ``/``); their count and bytes."""
    assert prefix.endswith("/"), prefix
    keys = store.list(prefix)
    total = 0
    for key in keys:
        try:
            total += store.size(key)
        except FileNotFoundError:  # removed meanwhile
            continue
    store.delete_prefix(prefix)
    return Freed(total, len(keys))
