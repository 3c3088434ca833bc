"""What one file may cost, and how a file over the limits or malformed is refused.

:class:`ParseLimits` bounds the work one ``torch.save`` file may cause (pickle size and opcodes, memo,
nesting, container sizes, keys of chosen hash, allocations, tensor bytes); the module constants are
its defaults and the archive's fixed bounds. Every refusal is a :class:`CheckpointError`:
``too_large`` for a limit (:func:`_too_large`), ``not_a_checkpoint`` for a malformed file (:func:`_bad`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from mergetune.core.errors import CheckpointError

DEFAULT_MAX_TENSOR_BYTES = 512 << 20  # per storage and per view (as materialised)
MAX_PICKLE_BYTES = 16 << 20  # data.pkl of a state dict is small (no tensor data inside); bounds memory
MAX_ZIP_MEMBERS = 100_000
_HASH_MODULUS = sys.hash_info.modulus  # ints in (-M, M) have pairwise distinct hashes (but -1/-2)


@dataclass(frozen=True)
class ParseLimits:
    """Bounds on the work one file may cause. Defaults suit every checkpoint layout we read."""

    max_tensor_bytes: int = DEFAULT_MAX_TENSOR_BYTES  # one storage, and one view as materialised
    max_total_bytes: int = 2 * DEFAULT_MAX_TENSOR_BYTES  # all views materialised from one file
    #: materialised bytes per byte of the file (+1 MiB): overlapping (zero-stride) views cannot turn a
    #: small file into large arrays; 2 covers fp16/bf16 widened to float32
    max_amplification: float = 2.0
    max_pickle_bytes: int = MAX_PICKLE_BYTES
    max_opcodes: int = 1_000_000  # pickle opcodes (each creates at most one object); ~30k tensors
    max_memo: int = 1 << 20  # memo index (PUT/GET) and memo entries
    max_mark_depth: int = 10_000  # nested MARKs
    max_container_items: int = 1 << 20  # items of one list/tuple/dict/set
    max_collidable_keys: int = 4096  # dict keys / set items with attacker-chosen hashes, per file
    max_alloc_bytes: int = 64 << 20  # what allowed builtins (bytes, str, list...) may allocate in all
    max_unknown_globals: int = 64  # names recorded (the rest are still inert, just not listed)


def _too_large(message: str) -> CheckpointError:
    return CheckpointError(message, code="too_large", param="file")


def _bad(message: str) -> CheckpointError:
    return CheckpointError(message, code="not_a_checkpoint", param="file")


def _is_int(v: Any) -> bool:
    return type(v) is int
