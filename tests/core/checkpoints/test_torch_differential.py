"""Differential test against torch's own reader: for a generated corpus of files written by
``torch.save`` (zip and legacy layouts, fp16/bf16/fp32 and integer dtypes, views, offsets, shared
storages, nested containers) and seeded mutations of them, our reader either refuses the file with a
:class:`CheckpointError` or reads exactly what ``torch.load(weights_only=True)`` reads: same
containers, keys and order, same scalars, tensors of the same dtype and shape with bit-identical
values (strides may differ)."""

from __future__ import annotations

import random
import warnings
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import differential_corpus as dc
import numpy as np
import pytest
import torch
from dos_corpus import g, i, pkl, s, tensor, torch_zip, tup

from mergetune.core.errors import CheckpointError

torch.set_num_threads(1)
SEED = 18


# ---------------------------------------------------------------------------------------------------
# the valid files


def _objects() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(SEED)
    base = torch.randn(6, 8, generator=gen)
    shared = torch.randn(40, generator=gen)
    return {
        "fp32": {"ctx": torch.randn(4, 8, generator=gen), "epoch": 3},
        "fp16": {"ctx": torch.randn(4, 8, generator=gen).half(), "scale": 0.5},
        "bf16": OrderedDict(ctx=torch.randn(2, 3, 8, generator=gen).bfloat16(), name="csc"),
        "ints": {
            "idx": torch.arange(10),
            "mask": torch.tensor([True, False, True]),
            "i8": torch.arange(-3, 3, dtype=torch.int8),
        },
        "views": {
            "t": base.t(),
            "slice": base[1:, ::2],
            "row": base[3],
            "expand": torch.ones(1, 8).expand(5, 8),
            "base": base,
        },
        "shared_offsets": {"a": shared[5:13].view(2, 4), "b": shared[20:], "c": shared, "empty": shared[:0]},
        "nested": {
            "state_dict": OrderedDict(
                [
                    ("prompt_learner.ctx", torch.randn(4, 8, generator=gen)),
                    ("prompt_learner.token_prefix", torch.randn(3, 1, 8, generator=gen)),
                ]
            ),
            "optimizer": {
                "state": {0: {"step": torch.tensor(7.0), "exp_avg": torch.randn(4, 8, generator=gen)}},
                "param_groups": [{"lr": 0.002, "params": [0]}],
            },
            "list": [torch.zeros(2, dtype=torch.float64), (1, "two", None, 3.5), [[]]],
            "epoch": 10,
        },
        "parameter": {
            "w": torch.nn.Parameter(torch.randn(3, 2, generator=gen)),
            "b": torch.randn(3, generator=gen),
        },
    }


def _valid_files(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for name, obj in _objects().items():
        for layout, new_zip in (("zip", True), ("legacy", False)):
            path = folder / f"{name}-{layout}.pt"
            torch.save(obj, path, _use_new_zipfile_serialization=new_zip)
            out[path.stem] = path
    return out


# ---------------------------------------------------------------------------------------------------
# hand-built files where the meaning could differ (torch's semantics, each written from opcodes)


def _v2(storage: str, key: str, numel: int, shape: tuple, stride: tuple, offset: int = 0) -> bytes:
    return tensor(key, numel, shape, stride, storage, offset=offset)


def _v3(storage: str, key: str, numel: int, shape: tuple, stride: tuple, dtype: str) -> bytes:
    return tensor(key, numel, shape, stride, storage, dtype=dtype)


def _crafted(folder: Path) -> dict[str, Path]:
    raw = np.arange(16, dtype=np.float32).tobytes()  # 64 bytes
    cases = {
        # the same key first as HalfStorage (32 halves), then as FloatStorage: torch keeps the first
        "cache_by_key_half_first": pkl(b"}(" + s("a") + _v2("HalfStorage", "0", 32, (32,), (1,)) + s("b") + _v2("FloatStorage", "0", 16, (4, 4), (4, 1)) + b"u"),
        "cache_by_key_float_first": pkl(b"}(" + s("a") + _v2("FloatStorage", "0", 16, (16,), (1,)) + s("b") + _v2("HalfStorage", "0", 32, (8,), (1,)) + b"u"),
        # a smaller first reference bounds the later, larger one
        "cache_by_key_short_first": pkl(b"}(" + s("a") + _v2("FloatStorage", "0", 4, (4,), (1,)) + s("b") + _v2("FloatStorage", "0", 16, (16,), (1,)) + b"u"),
        # _rebuild_tensor_v3 applies its dtype to the storage bytes, whatever the storage type
        "v3_half_on_float_storage": pkl(b"}(" + s("a") + _v3("FloatStorage", "0", 16, (8,), (1,), "float16") + b"u"),
        "v3_float_on_untyped": pkl(b"}(" + s("a") + _v3("ByteStorage", "0", 64, (2, 8), (8, 1), "float32") + b"u"),
        "v3_bf16_offsets": pkl(b"}(" + s("a") + _v3("ByteStorage", "0", 64, (4, 4), (1, 8), "bfloat16") + b"u"),
        # OrderedDict pairs given as lists and as tuples
        "ordered_dict_list_pairs": pkl(b"}(" + s("od") + g("collections", "OrderedDict") + tup(b"](" + b"](" + s("x") + i(1) + b"e" + tup(s("y"), _v2("FloatStorage", "0", 16, (2,), (1,))) + b"e") + b"R" + b"u"),
        # a view reaching exactly to the end, and one a byte past it
        "view_to_the_end": pkl(b"}(" + s("a") + _v2("FloatStorage", "0", 16, (3, 2), (5, 1), offset=4) + b"u"),
        "view_past_the_end": pkl(b"}(" + s("a") + _v2("FloatStorage", "0", 16, (3, 2), (5, 1), offset=5) + b"u"),
        "empty_view_far_offset": pkl(b"}(" + s("a") + _v2("FloatStorage", "0", 16, (0, 4), (4, 1), offset=16) + b"u"),
    }  # fmt: skip
    return {name: torch_zip(folder / f"{name}.pt", body, {"0": raw}) for name, body in cases.items()}


# ---------------------------------------------------------------------------------------------------
# mutations


def _rezip(src: Path, dst: Path, edit: Callable[[str, bytes], bytes]) -> Path:
    """Rewrite a zip archive member by member through ``edit`` (valid CRCs: the edit is what is tested)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, edit(info.filename, zin.read(info.filename)))
    return dst


def _flip(data: bytes, rng: random.Random, lo: int = 0) -> bytes:
    b = bytearray(data)
    if len(b) <= lo:
        return data
    pos = rng.randrange(lo, len(b))
    b[pos] = rng.choice([b[pos] ^ (1 << rng.randrange(8)), rng.randrange(256)])
    return bytes(b)


def _mutants(valid: dict[str, Path], folder: Path) -> dict[str, Path]:
    rng = random.Random(SEED)
    out: dict[str, Path] = {}
    for stem, path in valid.items():
        data = path.read_bytes()
        for n in range(8):  # raw byte flips anywhere in the file
            p = folder / f"{stem}-flip{n}.pt"
            p.write_bytes(_flip(data, rng))
            out[p.stem] = p
        for n in range(4):  # truncations
            p = folder / f"{stem}-trunc{n}.pt"
            p.write_bytes(data[: rng.randrange(1, len(data))])
            out[p.stem] = p
        if not zipfile.is_zipfile(path):
            continue
        for n in range(12):  # data.pkl byte flips, archive re-written with valid CRCs
            p = _rezip(
                path,
                folder / f"{stem}-pkl{n}.pt",
                lambda name, b: _flip(b, rng, 2) if name.endswith("data.pkl") else b,
            )
            out[p.stem] = p
        for n in range(2):  # storage bytes changed: both readers must see the same new values
            p = _rezip(
                path, folder / f"{stem}-data{n}.pt", lambda name, b: _flip(b, rng) if "/data/" in name else b
            )
            out[p.stem] = p
        # storage types swapped in the pickle text (protocol 2 names globals as text lines)
        swaps = [(b"torch\nFloatStorage\n", b"torch\nHalfStorage\n"), (b"torch\nHalfStorage\n", b"torch\nFloatStorage\n"), (b"torch\nBFloat16Storage\n", b"torch\nHalfStorage\n"), (b"torch\nLongStorage\n", b"torch\nFloatStorage\n")]  # fmt: skip
        for n, (a, b_) in enumerate(swaps):
            p = _rezip(
                path,
                folder / f"{stem}-swap{n}.pt",
                lambda name, b, a=a, b_=b_: b.replace(a, b_, 1) if name.endswith("data.pkl") else b,
            )
            out[p.stem] = p
    return out


# ---------------------------------------------------------------------------------------------------
# comparison (tests/differential_corpus.py)


def _ours(path: Path) -> tuple[bool, Any]:
    ok, obj, storages = dc.ours(path)
    _STORAGE_BYTES.update(storages)
    return ok, obj


def _same(ours: Any, theirs: Any, where: str = "") -> None:
    dc.same(ours, theirs, where, _STORAGE_BYTES)


_STORAGE_BYTES: dict[int, bytes] = {}  # bare storages' bytes, read before the archive closes
_torch = dc.theirs
Extension = dc.Extension


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("differential")
    valid = _valid_files(folder)
    return {**valid, **_crafted(folder), **_mutants(valid, folder)}


def test_we_refuse_or_read_exactly_what_torch_reads(corpus: dict[str, Path]) -> None:
    outcome: Counter[str] = Counter()
    refused_torch_read: list[str] = []
    for name, path in sorted(corpus.items()):
        ok, ours = _ours(path)
        tok, theirs = _torch(path)
        if ok and isinstance(ours, Extension):
            # documented extensions: unknown classes (Dassl's scheduler) read as inert placeholders,
            # a few builtins and opcodes torch's weights_only reader does not allow
            assert not tok, name
            outcome["extension (torch refuses, we read inertly)"] += 1
        elif ok:
            assert tok, f"{name}: we read a file torch refuses ({theirs})"
            _same(ours, theirs, name)
            outcome["same"] += 1
        else:
            outcome["both refuse" if not tok else "we refuse, torch reads"] += 1
            if tok:
                refused_torch_read.append(f"{name}:{ours}")
    print(f"\ndifferential: {len(corpus)} cases, {dict(outcome)}")
    assert len(corpus) >= 300
    # every valid file (zip and legacy) and every crafted case torch reads, we read too
    for name in corpus:
        if "-" not in name or name.endswith(("-zip", "-legacy")):
            assert not any(r.startswith(name + ":") for r in refused_torch_read), name
    assert outcome["same"] >= 16 + 8  # the 16 valid files and 8 crafted ones at least
    # refusals where torch reads are damaged files only (CRC, local headers...), with our codes
    kinds = Counter(r.split(":", 1)[1] for r in refused_torch_read)
    assert set(kinds) <= {"not_a_checkpoint", "truncated", "too_large", "bad_dtype"}, kinds
    damaged = ("-flip", "-trunc", "-data", "-pkl")
    assert all(any(m in r for m in damaged) for r in refused_torch_read), refused_torch_read


def test_crafted_semantics_match_torch(corpus: dict[str, Path]) -> None:
    """The four ways the old reader differed, each read as torch reads it."""
    for name in ("cache_by_key_half_first", "cache_by_key_float_first", "v3_half_on_float_storage", "v3_float_on_untyped", "v3_bf16_offsets", "ordered_dict_list_pairs", "view_to_the_end", "empty_view_far_offset"):  # fmt: skip
        ok, ours = _ours(corpus[name])
        tok, theirs = _torch(corpus[name])
        assert ok and tok, (name, ours, theirs)
        _same(ours, theirs, name)
    ok, ours = _ours(corpus["cache_by_key_half_first"])
    assert ours["b"].dtype.name == "float16"  # first reference wins, as in torch
    for name in ("view_past_the_end", "cache_by_key_short_first"):
        ok, ours = _ours(corpus[name])
        tok, _ = _torch(corpus[name])
        assert not ok and not tok, name


# ---------------------------------------------------------------------------------------------------
# the three ways an accepted file could read differently from torch (issue: member names, tensor
# state, globals torch allows); each mirrored or refused with a code


def _rezip_members(
    src: Path, dst: Path, edit: Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]
) -> Path:
    with zipfile.ZipFile(src) as z:
        members = [(info.filename, z.read(info)) for info in z.infolist()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point
        with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as z:
            for name, data in edit(members):
                z.writestr(name, data)
    return dst


def _outcome(path: Path) -> tuple[str, str]:
    return dc.compare(path)


def test_our_allowlist_is_torchs_and_each_global_is_mirrored_or_refused(tmp_path: Path) -> None:
    from torch._utils import IMPORT_MAPPING, NAME_MAPPING
    from torch._weights_only_unpickler import _get_allowed_globals

    from mergetune.core.checkpoints.safe_pickle import policy

    # the parser cannot import torch: its copy of torch's allowlist and name mapping must stay equal
    assert policy.TORCH_WEIGHTS_ONLY_GLOBALS == frozenset(_get_allowed_globals())
    assert policy.TORCH_IMPORT_MAPPING == IMPORT_MAPPING and policy.TORCH_NAME_MAPPING == NAME_MAPPING
    outcomes: Counter[str] = Counter()
    for n, qual in enumerate(sorted(policy.TORCH_WEIGHTS_ONLY_GLOBALS)):
        path = torch_zip(tmp_path / f"g{n}.pt", pkl(b"}(" + s("g") + g(*qual.rsplit(".", 1)) + b"u"), {})
        ok, ours = _ours(path)
        tok, theirs = _torch(path)
        assert tok, qual  # torch reads every one of them
        if ok:  # mirrored: the same object, and nothing read as a placeholder
            assert not isinstance(ours, Extension), (qual, ours)
            _same(ours, theirs, qual)
            outcomes["same"] += 1
        else:
            assert ours in ("unsupported_torch_object", "bad_dtype"), (qual, ours)
            outcomes[ours] += 1
    assert outcomes["same"] >= 30 and outcomes["unsupported_torch_object"] >= 40, outcomes


def test_member_names_are_found_as_torch_finds_them(tmp_path: Path) -> None:
    a = torch.arange(8, dtype=torch.float32).reshape(2, 4) + 0.5
    src = tmp_path / "src.pt"
    torch.save({"ctx": a}, src)

    def edited(name: str, edit: Callable[[list[tuple[str, bytes]]], list[tuple[str, bytes]]]) -> Path:
        return _rezip_members(src, tmp_path / f"{name}.pt", edit)

    # the review's file: an extra archive/BYTEORDER holding "big"; which twin torch finds depends on
    # its sorted lookup, not on the archive's order: ambiguous, refused
    for name, twin in {
        "extra_BYTEORDER": lambda m: [*m, ("src/BYTEORDER", b"big")],
        "BYTEORDER_first": lambda m: [("src/BYTEORDER", b"big"), *m],
    }.items():
        assert _outcome(edited(name, twin)) == (dc.ONLY_WE_REFUSE, "not_a_checkpoint"), name
    # the record only under another case: torch finds it and byte-swaps; so do we
    only_upper = edited(
        "only_BYTEORDER",
        lambda m: [(n.replace("byteorder", "BYTEORDER"), b"big" if "byteorder" in n else d) for n, d in m],
    )
    tok, theirs = _torch(only_upper)
    assert tok and not torch.equal(theirs["ctx"], a)  # what torch reads really differs from A
    assert _outcome(only_upper) == (dc.SAME, "")
    # every record under another case (the folder's case kept): read as torch reads it
    upper = edited(
        "upper", lambda m: [(n.split("/", 1)[0] + "/" + n.split("/", 1)[1].upper(), d) for n, d in m]
    )
    assert _outcome(upper) == (dc.SAME, "")
    np.testing.assert_array_equal(_ours(upper)[1]["ctx"].numpy(), a.numpy())
    # twins in another case: which one torch's reader finds is not the archive order; refused
    decoy = pkl(b"}(" + s("ctx") + tensor("0", 1, (1,), (1,)) + b"u")
    for name, twin in {
        "data_pkl_twin": lambda m: [*m, ("src/DATA.PKL", decoy)],
        "data_pkl_twin_first": lambda m: [("src/Data.pkl", decoy), *m],
        "storage_twin": lambda m: [*m, ("src/DATA/0", bytes(32))],
        "version_twin": lambda m: [*m, ("src/VERSION", b"3\n")],
    }.items():
        ok, code = _ours(edited(name, twin))
        assert (ok, code) == (False, "not_a_checkpoint"), name
    # a folder in another case is outside the archive's folder for torch and for us
    assert (
        _outcome(edited("folder", lambda m: [*m[:1], *[("SRC/" + n.split("/", 1)[1], d) for n, d in m[1:]]]))[
            0
        ]
        == dc.BOTH_REFUSE
    )
    # a TorchScript marker: torch refuses it under weights_only, and so do we
    assert _outcome(edited("script", lambda m: [*m, ("src/constants.pkl", pkl(b"N"))]))[0] == dc.BOTH_REFUSE


_A, _B = np.arange(16, dtype=np.float32), -np.arange(16, dtype=np.float32) - 100


def _crafted_file(path: Path, body: bytes) -> Path:
    return torch_zip(path, pkl(b"}(" + body + b"u"), {"0": _A.tobytes(), "1": _B.tobytes()})


def _v2_args(key: str) -> bytes:
    return tup(
        tup(s("storage"), g("torch", "FloatStorage"), s(key), s("cpu"), i(16)) + b"Q",
        i(0),
        tup(i(4), i(4)),
        tup(i(4), i(1)),
        b"\x89",
        g("collections", "OrderedDict") + b")R",
    )


def _from_type(state: bytes, new_type: bytes = g("torch", "Tensor")) -> bytes:
    return (
        g("torch._tensor", "_rebuild_from_type_v2")
        + tup(g("torch._utils", "_rebuild_tensor_v2"), new_type, _v2_args("0"), state)
        + b"R"
    )


def _with_state(state: bytes) -> bytes:
    inner = g("torch._utils", "_rebuild_tensor_v2") + _v2_args("0") + b"R"
    return (
        g("torch._utils", "_rebuild_parameter_with_state")
        + tup(inner, b"\x88", g("collections", "OrderedDict") + b")R", state)
        + b"R"
    )


def test_tensor_state_is_applied_as_torch_applies_it_or_refused(tmp_path: Path) -> None:
    b_data = b"}(" + s("data") + g("torch._utils", "_rebuild_tensor_v2") + _v2_args("1") + b"R" + b"u"
    for n, rebuild in enumerate((_from_type, _with_state)):
        # {"data": B}: torch's setattr replaces the values by B; we never return A for it
        path = _crafted_file(tmp_path / f"data{n}.pt", s("ctx") + rebuild(b_data))
        tok, theirs = _torch(path)
        assert tok and np.array_equal(theirs["ctx"].detach().numpy().reshape(-1), _B)
        assert _outcome(path) == (dc.ONLY_WE_REFUSE, "unsupported_torch_object")
        for m, state in enumerate((b"N", b"}", tup(b"}", b"N"), tup(b"N", b"}"))):  # nothing to apply
            path = _crafted_file(tmp_path / f"empty{n}-{m}.pt", s("ctx") + rebuild(state))
            assert _outcome(path) == (dc.SAME, ""), (n, m)
            np.testing.assert_array_equal(_ours(path)[1]["ctx"].numpy().reshape(-1), _A)
        path = _crafted_file(
            tmp_path / f"attr{n}.pt", s("ctx") + rebuild(b"}(" + s("note") + s("csc") + b"u")
        )
        assert _outcome(path) == (dc.ONLY_WE_REFUSE, "unsupported_torch_object")
    # as a Parameter: the same values
    path = _crafted_file(
        tmp_path / "as_param.pt", s("ctx") + _from_type(b"N", g("torch.nn.parameter", "Parameter"))
    )
    assert _outcome(path) == (dc.SAME, "")
    # a real torch.save of a parameter carrying a Python attribute
    p = torch.nn.Parameter(torch.ones(2, 3))
    p.note = "csc"
    torch.save({"ctx": p}, tmp_path / "param_attr.pt")
    assert _outcome(tmp_path / "param_attr.pt") == (dc.ONLY_WE_REFUSE, "unsupported_torch_object")


def test_globals_torch_allows_never_hide_a_tensor(tmp_path: Path) -> None:
    from mergetune.core.checkpoints.ingest import ingest_checkpoint

    a, b = torch.full((4, 8), 1.5), torch.full((4, 8), -2.0)
    # the review's decoy: the state dict is a Counter; torch's users see A, so must we
    torch.save({"state_dict": Counter({"ctx": a}), "ctx": b}, tmp_path / "counter_decoy.pt")
    assert _outcome(tmp_path / "counter_decoy.pt") == (dc.SAME, "")
    ck = ingest_checkpoint(tmp_path / "counter_decoy.pt")
    assert ck.ctx is not None and np.array_equal(ck.ctx, a.numpy())
    # an unknown class as the state dict: torch refuses it; we must not read the ctx beside it
    unknown = (
        s("state_dict")
        + g("dassl.thing", "Box")
        + tup(b"}(" + s("ctx") + tensor("0", 16, (4, 4), (4, 1)) + b"u")
        + b"R"
        + s("ctx")
        + tensor("1", 16, (4, 4), (4, 1))
    )
    path = _crafted_file(tmp_path / "unknown_decoy.pt", unknown)
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(path)
    assert ei.value.code == "not_a_checkpoint" and "dassl.thing.Box" in ei.value.message
    v2 = g("torch._utils", "_rebuild_tensor_v2") + _v2_args("0") + b"R"
    pid1 = tup(s("storage"), g("torch", "FloatStorage"), s("1"), s("cpu"), i(16)) + b"Q"
    cases = {
        # mirrored: read as torch reads them
        "counter_newobj": (s("sd") + g("collections", "Counter") + b")\x81" + b"(" + s("ctx") + v2 + b"u", dc.SAME),
        "userdict_counter": (s("sd") + g("UserDict", "Counter") + tup(b"}(" + s("ctx") + v2 + b"u") + b"R", dc.SAME),
        "userdict_ordereddict": (s("sd") + g("UserDict", "OrderedDict") + b")R(" + s("ctx") + v2 + b"u", dc.SAME),
        "parameter_newobj": (s("ctx") + g("torch.nn.parameter", "Parameter") + tup(v2) + b"\x81", dc.SAME),
        "parameter_reduce": (s("ctx") + g("torch.nn.parameter", "Parameter") + tup(v2, b"\x89") + b"R", dc.SAME),
        # refused although torch reads them: never a placeholder in their place
        "tensor_newobj_set": (s("ctx") + g("torch", "Tensor") + b")\x81" + tup(pid1, i(0), tup(i(16)), tup(i(1))) + b"b", dc.ONLY_WE_REFUSE),
        "float_tensor_list": (s("ctx") + g("torch", "FloatTensor") + tup(b"](" + b"G?\xf0\x00\x00\x00\x00\x00\x00" + b"e") + b"R", dc.ONLY_WE_REFUSE),
        "device_tensor": (s("ctx") + g("torch._utils", "_rebuild_device_tensor_from_cpu_tensor") + tup(v2, g("torch", "float32"), s("cpu"), b"\x89") + b"R", dc.ONLY_WE_REFUSE),
        "meta_tensor": (s("ctx") + g("torch._utils", "_rebuild_meta_tensor_no_storage") + tup(g("torch", "float32"), tup(i(4)), tup(i(1)), b"\x89") + b"R", dc.ONLY_WE_REFUSE),
        "counter_of_list": (s("c") + g("collections", "Counter") + tup(b"](" + s("x") + s("x") + b"e") + b"R", dc.ONLY_WE_REFUSE),
        "parameter_without_data": (s("ctx") + g("torch.nn.parameter", "Parameter") + b")\x81", dc.ONLY_WE_REFUSE),
        # an unknown function handed a storage: an inert placeholder would drop the tensor
        "unknown_rebuild_of_storage": (s("ctx") + g("dassl.utils", "rebuild") + tup(pid1, i(0)) + b"R", dc.BOTH_REFUSE),
        "size": (s("shape") + g("torch", "Size") + tup(tup(i(4), i(4))) + b"R", dc.ONLY_WE_REFUSE),
        "build_on_tensor": (s("ctx") + v2 + b"}(" + s("data") + g("torch._utils", "_rebuild_tensor_v2") + _v2_args("1") + b"R" + b"u" + b"b", dc.BOTH_REFUSE),
    }  # fmt: skip
    for name, (body, want) in cases.items():
        path = _crafted_file(tmp_path / f"{name}.pt", body)
        outcome, detail = _outcome(path)
        assert outcome == want, (name, outcome, detail)
        if outcome == dc.ONLY_WE_REFUSE:
            assert detail in ("unsupported_torch_object", "not_a_checkpoint"), (name, detail)


def test_a_generated_sweep_never_reads_differently(tmp_path: Path) -> None:
    """1,200 seeded files of every family (bench/differential.py runs the same with 10,000+)."""
    rng = random.Random(SEED)
    counts: Counter[tuple[str, str]] = Counter()
    codes: Counter[str] = Counter()
    for n in range(1200):
        family, path = dc.generate(rng, tmp_path, n)
        outcome, detail = dc.compare(path)
        assert outcome != dc.DIFFERENT, (path.name, detail)
        counts[(family.split("+")[0], outcome)] += 1
        if outcome == dc.ONLY_WE_REFUSE and "+damaged" not in family:
            codes[detail] += 1
        path.unlink()
    print(f"\ngenerated sweep: {sorted(counts.items())}")
    for family in dc.FAMILIES:
        assert counts[(family, dc.SAME)] >= 20, (family, counts)
    assert set(codes) <= {"unsupported_torch_object", "bad_dtype", "not_a_checkpoint"}, codes
