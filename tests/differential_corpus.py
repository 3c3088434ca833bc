"""Files on which our reader and ``torch.load(weights_only=True)`` could disagree, and the comparison.

Shared by tests/core/checkpoints/test_torch_differential.py (a fixed corpus) and bench/differential.py
(a seeded sweep of any size). :func:`generate` writes one file of a randomly chosen family:

- ``saved``: ``torch.save`` of a random nested object (dicts, OrderedDict, Counter, lists, tuples,
  scalars, tensors of many dtypes, views, shared storages, parameters), zip or legacy layout;
- ``members``: a saved file whose zip members are renamed or doubled in another case (``BYTEORDER``
  holding ``big``, ``DATA.PKL`` holding a decoy pickle, ``data/0`` in another case), reordered,
  moved out of the folder, or joined by ``constants.pkl``;
- ``state``: tensors rebuilt by ``_rebuild_from_type_v2`` / ``_rebuild_parameter_with_state`` with
  a Python state (``{"data": B}`` replaces the values in torch) or none;
- ``globals``: each global torch's weights_only reader allows, used as torch would use it (Counter
  decoys, ``torch.Tensor`` by NEWOBJ + BUILD, ``torch.FloatTensor(list)``, ``Parameter`` by NEWOBJ,
  device and meta tensors, ``torch.Size``, Python 2 names torch maps...);
- any of them damaged afterwards (byte flips, truncation) one time in four.

:func:`compare` reads a file with both readers and says which of five outcomes it is. "read
differently" (both read, with different keys, types, dtypes, shapes or values) must never happen.
"""

from __future__ import annotations

import io
import math
import random
import warnings
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from dos_corpus import g, i, pkl, s, tensor, tup

from mergetune.core.checkpoints.safe_pickle import (
    DType,
    LazyTensor,
    StorageRef,
    StorageType,
    load_torch_file,
)
from mergetune.core.checkpoints.safe_pickle.policy import TORCH_WEIGHTS_ONLY_GLOBALS
from mergetune.core.checkpoints.safe_pickle.rebuild import _SafeCallable
from mergetune.core.errors import CheckpointError

SAME, BOTH_REFUSE, ONLY_WE_REFUSE, ONLY_TORCH_REFUSES, DIFFERENT = (
    "same",
    "refused by both",
    "only we refuse",
    "only torch refuses",
    "read differently",
)
OUTCOMES = (SAME, BOTH_REFUSE, ONLY_WE_REFUSE, ONLY_TORCH_REFUSES, DIFFERENT)

# ---------------------------------------------------------------------------------------------------
# comparison


def _bits(t: torch.Tensor) -> np.ndarray:
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(np.uint16)
    return t.numpy().reshape(-1).view(np.uint8)


def _our_bits(x: LazyTensor) -> np.ndarray:
    a = np.ascontiguousarray(x.numpy())
    if x.dtype.name == "bfloat16":
        return (a.view(np.uint32) >> 16).astype(np.uint16)
    return a.reshape(-1).view(np.uint8)


def same(ours: Any, theirs: Any, where: str = "", storages: dict[int, bytes] | None = None) -> None:
    """Assert that our result is torch's: containers (type, keys, order), scalars, dtypes, shapes and
    bit-identical tensor values."""
    if isinstance(theirs, torch.storage.TypedStorage):  # a bare storage as a value
        assert isinstance(ours, StorageRef), where
        assert ours.dtype.name == str(theirs.dtype).removeprefix("torch."), where
        assert storages is not None and storages[id(ours)] == bytes(theirs._untyped_storage.cpu()), where
        return
    if isinstance(theirs, torch.serialization.StorageType):  # a storage-type global as a value
        assert isinstance(ours, StorageType), where
        assert ours.dtype.name == str(theirs.dtype).removeprefix("torch."), where
        return
    if theirs is torch.storage.UntypedStorage:  # the untyped storage class as a value
        assert isinstance(ours, StorageType) and ours.untyped, where
        return
    if isinstance(theirs, torch.dtype):
        assert isinstance(ours, DType) and ours.name == str(theirs).removeprefix("torch."), where
        return
    if callable(theirs) and not isinstance(theirs, torch.Tensor):  # a bare global as a value
        assert isinstance(ours, _SafeCallable), where
        assert ours._name == f"{theirs.__module__}.{theirs.__qualname__}", where
        return
    if isinstance(theirs, torch.Tensor):
        assert isinstance(ours, LazyTensor), f"{where}: {type(ours)} for a tensor"
        assert theirs.device.type == "cpu" and theirs.layout == torch.strided, where
        assert ours.dtype.name == str(theirs.dtype).removeprefix("torch."), where
        assert ours.shape == tuple(theirs.shape), where
        np.testing.assert_array_equal(_our_bits(ours).reshape(-1), _bits(theirs).reshape(-1), err_msg=where)
        return
    assert type(ours) is type(theirs), f"{where}: {type(ours)} != {type(theirs)}"
    if isinstance(theirs, dict):  # keys in order (they may be globals or tensors), then values
        assert len(ours) == len(theirs), where
        for (k, v), (tk, tv) in zip(ours.items(), theirs.items(), strict=True):
            label = tk if isinstance(tk, str | int) else type(tk).__name__
            same(k, tk, f"{where}.<key {label}>", storages)
            same(v, tv, f"{where}.{label}", storages)
    elif isinstance(theirs, list | tuple):
        assert len(ours) == len(theirs), where
        for n, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            same(a, b, f"{where}[{n}]", storages)
    elif isinstance(theirs, set | frozenset):
        assert ours == theirs, where
    elif isinstance(theirs, float) and math.isnan(theirs):
        assert math.isnan(ours), where
    else:
        assert ours == theirs, where


def _materialise(obj: Any, storages: dict[int, bytes], seen: set[int]) -> None:
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, LazyTensor):
        obj.numpy()
    elif isinstance(obj, StorageRef):
        storages[id(obj)] = obj.source.storage_bytes(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _materialise(v, storages, seen)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _materialise(v, storages, seen)


class Extension(list):
    """What our reader read beyond torch's weights_only reader (the file uses these)."""


def ours(path: Path) -> tuple[bool, Any, dict[int, bytes]]:
    """(read?, the object or the error code, bare storages' bytes), every tensor materialised."""
    storages: dict[int, bytes] = {}
    try:
        loaded = load_torch_file(str(path))
    except CheckpointError as e:
        return False, e.code, storages
    try:
        _materialise(loaded.obj, storages, set())
    except CheckpointError as e:
        return False, e.code, storages
    finally:
        if loaded.archive is not None:
            loaded.archive.close()
    if loaded.torch_extensions:  # e.g. inert placeholders: torch's weights_only refuses such files
        return True, Extension(loaded.torch_extensions), storages
    return True, loaded.obj, storages


def theirs(path: Path) -> tuple[bool, Any]:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            obj = torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any refusal by torch
        return False, type(e).__name__
    return True, obj


def compare(path: Path) -> tuple[str, str]:
    """(outcome, detail): one of :data:`OUTCOMES`; the detail is our error code or what differed."""
    ok, obj, storages = ours(path)
    tok, tobj = theirs(path)
    if not ok:
        return (ONLY_WE_REFUSE if tok else BOTH_REFUSE), str(obj)
    if not tok:
        return ONLY_TORCH_REFUSES, f"torch: {tobj}"
    if isinstance(obj, Extension):  # we thought torch refuses this: it must at least read the same
        ok2, obj, storages = _plain(path)
        if not ok2:
            return DIFFERENT, "extension read by torch"
    try:
        same(obj, tobj, path.stem, storages)
    except AssertionError as e:
        return DIFFERENT, str(e)[:300]
    return SAME, ""


def _plain(path: Path) -> tuple[bool, Any, dict[int, bytes]]:
    storages: dict[int, bytes] = {}
    loaded = load_torch_file(str(path))
    try:
        _materialise(loaded.obj, storages, set())
    finally:
        if loaded.archive is not None:
            loaded.archive.close()
    return True, loaded.obj, storages


# ---------------------------------------------------------------------------------------------------
# random objects for torch.save

_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.int64, torch.int32,
           torch.int16, torch.int8, torch.uint8, torch.bool, torch.complex64]  # fmt: skip
_RARE_DTYPES = [torch.uint16, torch.float8_e4m3fn, torch.complex32]  # torch reads them, we refuse
_KEYS = ["ctx", "state_dict", "prompt_learner.ctx", "token_prefix", "epoch", "optimizer", "w", "b"]


def _random_tensor(rng: random.Random) -> torch.Tensor:
    dtype = rng.choice(_DTYPES) if rng.random() > 0.03 else rng.choice(_RARE_DTYPES)
    shape = tuple(
        rng.randint(0, 5) if rng.random() < 0.1 else rng.randint(1, 5) for _ in range(rng.randint(0, 3))
    )
    gen = torch.Generator().manual_seed(rng.randrange(1 << 30))
    base = torch.randn(shape or (), generator=gen) * 10
    if dtype == torch.bool:
        t = base > 0
    elif dtype in (torch.float8_e4m3fn, torch.complex32):
        t = base.to(dtype)
    else:
        t = base.to(dtype)
    r = rng.random()
    if t.dim() >= 2 and r < 0.15:
        t = t.transpose(0, 1)
    elif t.dim() >= 1 and t.shape[0] > 1 and r < 0.3:
        t = t[rng.randint(0, t.shape[0] - 1) :]
    elif t.dim() >= 1 and r < 0.35:
        t = t[..., ::2]
    elif r < 0.4 and t.dim() >= 1 and t.shape[-1] == 1:
        t = t.expand(*t.shape[:-1], 3)
    return t


def _random_value(rng: random.Random, depth: int, tensors: list[torch.Tensor]) -> Any:
    r = rng.random()
    if depth >= 3 or r < 0.35:
        if tensors and rng.random() < 0.2:
            base = rng.choice(tensors)
            return base.view(-1)[: max(base.numel() // 2, 0)] if base.is_contiguous() and base.dim() else base
        t = _random_tensor(rng)
        if rng.random() < 0.1 and t.is_floating_point() and t.dtype in (torch.float32, torch.float64):
            p = torch.nn.Parameter(t, requires_grad=rng.random() < 0.5)
            if rng.random() < 0.2:
                p.note = rng.choice(["csc", 3])  # a parameter with Python state
            tensors.append(p)
            return p
        tensors.append(t)
        return t
    if r < 0.5:
        return rng.choice([rng.randint(-1000, 1000), rng.random(), "text", None, True, b"raw", 2**70])
    if r < 0.6:
        return [_random_value(rng, depth + 1, tensors) for _ in range(rng.randint(0, 3))]
    if r < 0.65:
        return tuple(_random_value(rng, depth + 1, tensors) for _ in range(rng.randint(0, 3)))
    if r < 0.75:
        return Counter(
            {k: _random_value(rng, depth + 1, tensors) for k in rng.sample(_KEYS, rng.randint(0, 3))}
        )
    if r < 0.85:
        return OrderedDict(
            (k, _random_value(rng, depth + 1, tensors)) for k in rng.sample(_KEYS, rng.randint(0, 3))
        )
    if r < 0.87:
        return rng.choice([torch.Size([2, 3]), torch.device("cpu"), torch.float16, {1, 2}])
    return {k: _random_value(rng, depth + 1, tensors) for k in rng.sample(_KEYS, rng.randint(0, 4))}


def _random_object(rng: random.Random) -> dict:
    tensors: list[torch.Tensor] = []
    obj = {k: _random_value(rng, 1, tensors) for k in rng.sample(_KEYS, rng.randint(1, 4))}
    if rng.random() < 0.3:  # the decoy of the review: a state dict torch reads beside a top-level ctx
        kind = rng.choice([Counter, OrderedDict, dict])
        obj = {"state_dict": kind({"ctx": _random_tensor(rng)}), "ctx": _random_tensor(rng), **obj}
    return obj


def _saved(rng: random.Random, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(_random_object(rng), path, _use_new_zipfile_serialization=rng.random() < 0.85)
    return path


# ---------------------------------------------------------------------------------------------------
# zip members by name


def _recase(name: str, rng: random.Random) -> str:
    """The same name in another ASCII case (torch's reader finds it under either)."""
    if not any(c.isalpha() for c in name):
        return name
    while True:
        out = "".join(c.upper() if c.isalpha() and rng.random() < 0.5 else c.lower() for c in name)
        if out != name:
            return out


def _rewrite(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
            for name, data in members:
                z.writestr(name, data)
    return path


def _members(rng: random.Random, path: Path) -> Path:
    src = path.with_suffix(".src")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(_random_object(rng), src)
    with zipfile.ZipFile(src) as z:
        members = [(info.filename, z.read(info)) for info in z.infolist()]
    src.unlink()
    prefix = members[0][0].split("/", 1)[0] + "/"
    names = [n for n, _ in members]
    decoy = pkl(b"}(" + s("ctx") + tensor("0", 1, (1,), (1,)) + b"u")
    for _ in range(rng.randint(1, 3)):
        edit = rng.randrange(9)
        if edit == 0:  # a member renamed in another case (the folder part kept)
            k = rng.randrange(len(members))
            n, d = members[k]
            members[k] = (
                n if "/" not in n else n.split("/", 1)[0] + "/" + _recase(n.split("/", 1)[1], rng),
                d,
            )
        elif edit == 1:  # a byteorder record in another case, beside or instead of the original
            if rng.random() < 0.5:
                members = [m for m in members if m[0] != prefix + "byteorder"]
            members.append((prefix + _recase("byteorder", rng), rng.choice([b"big", b"little", b"BIG"])))
        elif edit == 2:  # a decoy data.pkl in another case
            members.insert(rng.randrange(len(members) + 1), (prefix + _recase("data.pkl", rng), decoy))
        elif edit == 3:  # a storage twice, in another case
            stor = [n for n in names if "/data/" in n]
            if stor:
                n = rng.choice(stor)
                size = len(dict(members).get(n, b""))
                members.append(
                    (prefix + _recase(n[len(prefix) :], rng), bytes(rng.randrange(256) for _ in range(size)))
                )
        elif edit == 4:  # a member whose folder is in another case
            k = rng.randrange(len(members))
            members[k] = (_recase(prefix, rng) + members[k][0][len(prefix) :], members[k][1])
        elif edit == 5:  # a TorchScript marker, in this or another case
            members.append((prefix + rng.choice(["constants.pkl", "CONSTANTS.pkl"]), pkl(b"N")))
        elif edit == 6:  # reordered members (the folder is the first member's)
            rng.shuffle(members)
        elif edit == 7:  # the version record in another case, or both version records
            members.append(
                (
                    prefix + rng.choice([".data/VERSION", "VERSION", ".data/version"]),
                    rng.choice([b"3\n", b"11\n", b"1"]),
                )
            )
        else:  # storage keys in another case in the pickle (the records keep theirs)
            k = next((j for j, m in enumerate(members) if m[0].endswith("data.pkl")), None)
            if k is not None:
                members[k] = (
                    members[k][0],
                    members[k][1].replace(b"X\x01\x00\x00\x000", b"X\x01\x00\x00\x00A"),
                )
    return _rewrite(path, members)


# ---------------------------------------------------------------------------------------------------
# crafted pickles: tensor state and the globals torch allows

_A = np.arange(16, dtype=np.float32)
_B = -np.arange(16, dtype=np.float32) - 100


def _t(key: str = "0", shape: tuple = (4, 4), dtype: str | None = None) -> bytes:
    n = math.prod(shape)
    return tensor(
        key,
        16,
        shape,
        tuple(math.prod(shape[j + 1 :]) for j in range(len(shape))),
        offset=16 - n,
        dtype=dtype,
    )


def _od() -> bytes:
    return g("collections", "OrderedDict") + b")R"


_STATES = [b"N", b"}", b"}(" + s("data") + _t("1") + b"u", b"}(" + s("requires_grad") + b"\x88u",
           b"}(" + s("note") + s("csc") + b"u", tup(b"N", b"N"), tup(b"}", b"N"), tup(b"N", b"}(" + s("data") + _t("1") + b"u"),
           tup(b"}(" + s("data") + _t("1") + b"u", b"N"), tup(b"N"), b"K\x00", b"]", b"\x89"]  # fmt: skip


def _state_tensor(rng: random.Random) -> bytes:
    state = rng.choice(_STATES)
    inner = _t("0", rng.choice([(4, 4), (16,), (2, 2)]))
    if rng.random() < 0.5:
        new_type = rng.choice(
            [
                g("torch", "Tensor"),
                g("torch.nn.parameter", "Parameter"),
                g("torch._tensor", "Tensor"),
                g("collections", "OrderedDict"),
            ]
        )
        func = rng.choice(
            [
                (g("torch._utils", "_rebuild_tensor_v2"), None),
                (g("torch.nn.parameter", "Parameter"), tup(inner, rng.choice([b"\x88", b"\x89"]))),
            ]
        )
        args = func[1] if func[1] is not None else inner[len(g("torch._utils", "_rebuild_tensor_v2")) : -1]
        return g("torch._tensor", "_rebuild_from_type_v2") + tup(func[0], new_type, args, state) + b"R"
    grad = rng.choice([b"\x88", b"\x89"])
    return g("torch._utils", "_rebuild_parameter_with_state") + tup(inner, grad, _od(), state) + b"R"


def _global_case(rng: random.Random) -> bytes:
    a, b = _t("0"), _t("1")
    cases: list[Callable[[], bytes]] = [
        # the review's decoy: Counter({"ctx": A}) as the state dict, B beside it
        lambda: (
            s("state_dict")
            + g("collections", "Counter")
            + tup(b"}(" + s("ctx") + a + b"u")
            + b"R"
            + s("ctx")
            + b
        ),
        lambda: (
            s("state_dict") + g("collections", "Counter") + b")\x81(" + s("ctx") + a + b"u" + s("ctx") + b
        ),
        lambda: (
            s("state_dict")
            + g("UserDict", "Counter")
            + tup(b"}(" + s("ctx") + a + b"u")
            + b"R"
            + s("ctx")
            + b
        ),
        lambda: s("state_dict") + g("UserDict", "OrderedDict") + b")R(" + s("ctx") + a + b"u" + s("ctx") + b,
        lambda: s("c") + g("collections", "Counter") + tup(b"](" + s("x") + s("x") + b"e") + b"R",
        lambda: s("c") + g("collections", "Counter") + b")R" + b"}(" + s("w") + b"K\x01u" + b"b",
        lambda: s("c") + g("collections", "Counter") + b")R" + tup(b"N", b"N") + b"b",
        lambda: s("o") + _od() + b"}(" + s("w") + b"K\x01u" + b"b",
        lambda: s("o") + _od() + b"](" + tup(s("w"), b"K\x01") + b"e" + b"b",
        # torch.Tensor by NEWOBJ, re-pointed by BUILD (legacy set_)
        lambda: (
            s("ctx")
            + g("torch", "Tensor")
            + b")\x81"
            + tup(
                tup(s("storage"), g("torch", "FloatStorage"), s("1"), s("cpu"), i(16)) + b"Q",
                i(0),
                tup(i(16)),
                tup(i(1)),
            )
            + b"b"
        ),
        lambda: (
            s("ctx")
            + g("torch", "FloatTensor")
            + tup(b"](" + b"G?\xf0\x00\x00\x00\x00\x00\x00" + b"e")
            + b"R"
        ),
        lambda: s("ctx") + g("torch", "Tensor") + b")R",
        # Parameter by NEWOBJ and by REDUCE
        lambda: s("ctx") + g("torch.nn.parameter", "Parameter") + tup(a) + b"\x81",
        lambda: s("ctx") + g("torch.nn.parameter", "Parameter") + tup(a, b"\x89") + b"\x81",
        lambda: s("ctx") + g("torch.nn.parameter", "Parameter") + tup(_t("0", (16,), "int32")) + b"\x81",
        lambda: s("ctx") + g("torch.nn.parameter", "Parameter") + b")\x81",
        lambda: s("ctx") + g("torch.nn.parameter", "Parameter") + tup(a, b"\x88") + b"R",
        lambda: (
            s("ctx")
            + g("torch.nn.parameter", "Parameter")
            + tup(a)
            + b"\x81"
            + b"}("
            + s("data")
            + b
            + b"u"
            + b"b"
        ),
        # tensors torch builds another way
        lambda: (
            s("ctx")
            + g("torch._utils", "_rebuild_device_tensor_from_cpu_tensor")
            + tup(a, g("torch", "float32"), s("cpu"), b"\x89")
            + b"R"
        ),
        lambda: (
            s("ctx")
            + g("torch._utils", "_rebuild_meta_tensor_no_storage")
            + tup(g("torch", "float32"), tup(i(4)), tup(i(1)), b"\x89")
            + b"R"
        ),
        lambda: s("ctx") + g("torch", "Size") + tup(tup(i(4), i(4))) + b"R",
        lambda: s("d") + g("torch", "device") + tup(s("cpu")) + b"R",
        lambda: s("ctx") + a + b"}(" + s("data") + b + b"u" + b"b",  # BUILD on a tensor
        lambda: s("s") + g("__builtin__", "set") + tup(b"](" + i(1) + i(2) + b"e") + b"R",
        lambda: s("c") + g("builtins", "complex") + tup(i(1), i(2)) + b"R",
        lambda: s("ctx") + a + s("g") + g(*rng.choice(sorted(TORCH_WEIGHTS_ONLY_GLOBALS)).rsplit(".", 1)),
    ]
    return rng.choice(cases)()


def _crafted(rng: random.Random, path: Path, family: str) -> Path:
    body = b""
    for n in range(rng.randint(1, 3)):
        if family == "state":
            body += s(rng.choice(["ctx", f"t{n}"])) + _state_tensor(rng)
        else:
            body += _global_case(rng)
    storages = {"0": _A.tobytes(), "1": _B.tobytes()}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl(b"}(" + body + b"u"))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for k, v in storages.items():
            z.writestr(f"archive/data/{k}", v)
    return path


# ---------------------------------------------------------------------------------------------------
# damage and the generator


def _at(rng: random.Random, lo: int, hi: int) -> int:
    """A position in [lo, hi) that draws the same random bits whatever the range: legacy-format files
    carry torch's address-derived storage keys, so their sizes vary from run to run, and the sweep
    must stay the same sequence of files anyway."""
    return lo + int(rng.random() * (hi - lo))


def _damage(rng: random.Random, path: Path) -> None:
    data = bytearray(path.read_bytes())
    if rng.random() < 0.3:
        path.write_bytes(bytes(data[: _at(rng, 1, len(data))]))
        return
    if zipfile.is_zipfile(path) and rng.random() < 0.7:  # the pickle edited, the archive kept valid
        with zipfile.ZipFile(path) as z:
            members = [(info.filename, z.read(info)) for info in z.infolist()]
        out = []
        for name, d in members:
            if name.endswith("data.pkl") and len(d) > 2:
                b = bytearray(d)
                for _ in range(rng.randint(1, 3)):
                    pos = _at(rng, 2, len(b))
                    b[pos] = rng.choice([b[pos] ^ (1 << rng.randrange(8)), rng.randrange(256)])
                d = bytes(b)
            out.append((name, d))
        _rewrite(path, out)
        return
    for _ in range(rng.randint(1, 4)):
        pos = _at(rng, 0, len(data))
        data[pos] = rng.randrange(256)
    path.write_bytes(bytes(data))


FAMILIES = ("saved", "members", "state", "globals")


def generate(rng: random.Random, folder: Path, index: int, family: str | None = None) -> tuple[str, Path]:
    """One random file of ``family`` (random when None); one time in four damaged afterwards."""
    family = family or rng.choice(FAMILIES)
    path = folder / f"{index:06d}-{family}.pt"
    if family == "saved":
        _saved(rng, path)
    elif family == "members":
        _members(rng, path)
    else:
        _crafted(rng, path, family)
    if rng.random() < 0.25:
        _damage(rng, path)
        family += "+damaged"
    return family, path
