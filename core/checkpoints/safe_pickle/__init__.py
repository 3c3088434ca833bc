"""Read ``torch.save`` files without torch and without running any of their code, within limits.

A ``torch.save`` file (zip format, torch >= 1.6) is a zip archive ``<prefix>/data.pkl`` (the pickle),
``<prefix>/data/<key>`` (raw storage bytes, one entry per storage) and ``<prefix>/byteorder``. The
pickle names tensor rebuild functions and storage types as globals and refers to storages through
persistent ids. Dassl checkpoints also pickle a scheduler *object* of a class the service does not
have, so ``torch.load(weights_only=True)`` refuses them while ``weights_only=False`` would run
whatever the file says.

:class:`SafeUnpickler` resolves globals through three tiers:

1. an allowlist of real callables: our own numpy tensor-rebuild functions standing in for
   ``torch._utils._rebuild_tensor_v2`` and friends, storage/dtype markers, ``OrderedDict`` and
   argument-checked versions of plain builtins;
2. a denylist of names able to run code (``os``, ``subprocess``, ``builtins.eval``, ``importlib``...):
   the whole file is rejected as ``unsafe_pickle`` even though nothing would be called;
3. every other name that torch's ``weights_only`` reader does not allow either becomes an inert
   placeholder class that records its name (instantiating, calling, ``BUILD``/``__setstate__`` on it
   are absorbed without effect; handing it a tensor or a storage refuses the file). Every name torch's
   reader allows is mirrored (``Counter``, ``Parameter``...) or refuses the file
   (``unsupported_torch_object``, ``bad_dtype``): a placeholder never stands where torch reads a value.

Limits before work (:class:`ParseLimits`): the pickle is pre-scanned opcode by opcode (memo indices,
opcode count, MARK depth) before anything is built; containers, dict keys and what the allowed
builtins may allocate are bounded while it is built; every tensor view's byte size is checked against
a per-tensor cap, its storage and a per-file total before a byte is read. Keys whose hashes an
attacker can choose (big ints, floats, tuples) are counted and capped, so a dict of colliding keys
cannot cost quadratic time. Every failure is a :class:`CheckpointError` with a stable code
(``too_large`` for a limit, ``truncated``, ``not_a_checkpoint``, ``unsafe_pickle``...); no
``OverflowError`` or ``MemoryError`` escapes.

Same meaning as torch's ``weights_only`` reader where that reader accepts a file: storages are cached
by key only (the first reference's dtype and size win, an empty storage is not cached),
``_rebuild_tensor_v3`` always applies its dtype to the storage bytes, ``OrderedDict`` pairs may be
lists, zip members are found without regard to ASCII case (as torch's zip reader finds them), Python 2
global names are mapped as torch maps them; the legacy (pre-1.6, non-zip) format is read as torch's
``_legacy_load`` reads it. Refused although torch would read them (documented in docs/ALGORITHM.md):
compressed members, member names that are equal but for case, CRC mismatches, nested-tuple keys,
tensors with a Python state to apply (``{"data": B}`` replaces the values in torch), files over the
limits.

Tensors are returned as :class:`LazyTensor` (zip entry + view geometry); their bytes are read only when
:meth:`LazyTensor.numpy` is called, so the 150 MB ``token_suffix`` of an ImageNet CoOp file is never
materialised.

No torch import here: the API's parse sandbox runs this package.

The package, by concern:

- :mod:`.limits`: :class:`ParseLimits`, the size constants and how a refusal is reported;
- :mod:`.rebuild`: torch's rebuild semantics (dtypes, storages, :class:`LazyTensor`, view checks);
- :mod:`.policy`: the global policy (allowlist, denylist, inert placeholders);
- :mod:`.machine`: the opcode machine (pre-scan, :class:`SafeUnpickler`);
- :mod:`.zip_archive`: the zip-format archive (:class:`TorchZipFile`);
- :mod:`.containers`: the legacy format, :func:`sniff` and the loaders (:func:`load_torch_file`).
"""

from mergetune.core.checkpoints.safe_pickle.containers import (
    LegacyTorchFile,
    LoadedPickle,
    load_legacy_file,
    load_torch_file,
    sniff,
    unpickle,
    unpickle_ex,
)
from mergetune.core.checkpoints.safe_pickle.limits import (
    DEFAULT_MAX_TENSOR_BYTES,
    MAX_PICKLE_BYTES,
    MAX_ZIP_MEMBERS,
    ParseLimits,
)
from mergetune.core.checkpoints.safe_pickle.machine import SafeUnpickler, prescan, prescan_end
from mergetune.core.checkpoints.safe_pickle.policy import Placeholder, UnsafePickle, is_unsafe_global
from mergetune.core.checkpoints.safe_pickle.rebuild import (
    SAFETENSORS_DTYPES,
    DType,
    LazyTensor,
    StorageRef,
    StorageType,
    decode_bytes,
    dtype_by_name,
)
from mergetune.core.checkpoints.safe_pickle.zip_archive import TorchZipFile

__all__ = [
    "DEFAULT_MAX_TENSOR_BYTES",
    "MAX_PICKLE_BYTES",
    "MAX_ZIP_MEMBERS",
    "SAFETENSORS_DTYPES",
    "DType",
    "LazyTensor",
    "LegacyTorchFile",
    "LoadedPickle",
    "ParseLimits",
    "Placeholder",
    "SafeUnpickler",
    "StorageRef",
    "StorageType",
    "TorchZipFile",
    "UnsafePickle",
    "decode_bytes",
    "dtype_by_name",
    "is_unsafe_global",
    "load_legacy_file",
    "load_torch_file",
    "prescan",
    "prescan_end",
    "sniff",
    "unpickle",
    "unpickle_ex",
]
