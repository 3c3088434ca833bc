"""Limits before work: every file of the DoS corpus is refused with a clear code, quickly, in-process;
legitimate structures just under each limit still load."""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
from dos_corpus import CORPUS, CTX, P61, build, ctx_entry, g, i, pkl, s, state, tensor, torch_zip, tup

from mergetune.core.checkpoints.ingest import ingest_checkpoint
from mergetune.core.checkpoints.safe_pickle import ParseLimits, load_torch_file
from mergetune.core.errors import CheckpointError

CTX_ARRAY = np.frombuffer(CTX, dtype=np.float32).reshape(4, 8)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_dos_corpus_refused_quickly_with_a_code(tmp_path: Path, name: str) -> None:
    f = build(name, tmp_path)
    _, codes = CORPUS[name]
    t = time.monotonic()
    if codes == {"ready"}:
        ck = ingest_checkpoint(f)
        assert time.monotonic() - t < 5.0
        np.testing.assert_array_equal(ck.ctx, CTX_ARRAY)
        assert ck.metadata == {}
        return
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert time.monotonic() - t < 5.0
    assert ei.value.code in codes, ei.value.message
    assert ei.value.param == "file"


def _load(
    tmp_path: Path, body: bytes, limits: ParseLimits | None = None, storages: dict | None = None
) -> object:
    loaded = load_torch_file(str(torch_zip(tmp_path / "f.pth", body, storages)), limits=limits)
    assert loaded.archive is not None
    loaded.archive.close()
    return loaded.obj


def test_view_cap_is_exact_and_counts_materialised_bytes(tmp_path: Path) -> None:
    # a zero-stride view of 4 x 8 float32 = 128 bytes, on a 4-byte storage (torch's expand)
    body = state(ctx=s("ctx") + tensor("0", 1, (4, 8), (0, 0)))
    f = torch_zip(tmp_path / "b.pth", body, {"0": np.float32(1.5).tobytes()})
    ck = ingest_checkpoint(f, limits=ParseLimits(max_tensor_bytes=128))
    np.testing.assert_array_equal(ck.ctx, np.full((4, 8), 1.5, np.float32))
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f, limits=ParseLimits(max_tensor_bytes=127))
    assert ei.value.code == "too_large"
    # the per-file total counts what is materialised (ctx here)
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f, limits=ParseLimits(max_total_bytes=127))
    assert ei.value.code == "too_large"


def test_memo_cap(tmp_path: Path) -> None:
    body = state(extra=s("x") + b"N" + b"r" + (1000).to_bytes(4, "little"))
    assert isinstance(_load(tmp_path, body, ParseLimits(max_memo=1000)), dict)
    with pytest.raises(CheckpointError) as ei:
        _load(tmp_path, body, ParseLimits(max_memo=999))
    assert ei.value.code == "too_large"


def test_container_and_key_limits(tmp_path: Path) -> None:
    items = b"(" + b"".join(i(n) for n in range(100)) + b"l"
    body = state(extra=s("l") + items)
    assert len(_load(tmp_path, body, ParseLimits(max_container_items=100))["l"]) == 100  # type: ignore[index]
    with pytest.raises(CheckpointError) as ei:
        _load(tmp_path, body, ParseLimits(max_container_items=99))
    assert ei.value.code == "too_large"
    # small ints, strings, tensors as keys are free; chosen-hash keys are counted
    big = b"}(" + b"".join(i(k * P61) + b"N" for k in range(1, 11)) + b"u"
    obj = _load(tmp_path, state(extra=s("big") + big), ParseLimits(max_collidable_keys=10))
    assert sorted(obj["big"]) == [k * P61 for k in range(1, 11)]  # type: ignore[index]
    with pytest.raises(CheckpointError) as ei:
        _load(tmp_path, state(extra=s("big") + big), ParseLimits(max_collidable_keys=9))
    assert ei.value.code == "too_large"
    ints = b"}(" + b"".join(i(k) + b"N" for k in range(-5, 5000)) + b"u"
    assert len(_load(tmp_path, state(extra=s("i") + ints), ParseLimits(max_collidable_keys=0))["i"]) == 5005  # type: ignore[index]
    # a list as a dict key is unhashable anyway; a nested tuple is refused before hashing
    nested = b"}(" + tup(tup(i(1))) + b"Nu"
    with pytest.raises(CheckpointError) as ei:
        _load(tmp_path, state(extra=s("t") + nested))
    assert ei.value.code == "not_a_checkpoint"


def test_builtins_take_only_plain_arguments(tmp_path: Path) -> None:
    ok = (
        s("a") + g("builtins", "str") + tup(s("x")) + b"R"
        + s("b") + g("builtins", "int") + tup(s("12")) + b"R"
        + s("c") + g("builtins", "bytes") + tup(b"(" + i(1) + i(2) + b"l") + b"R"
        + s("d") + g("builtins", "set") + tup(b"(" + i(3) + i(3) + b"l") + b"R"
        + s("e") + g("builtins", "str") + tup(b"C\x02ab") + b"R"
        + s("f") + g("builtins", "str") + tup(b"C\x02ab", s("ascii")) + b"R"
    )  # fmt: skip
    obj = _load(tmp_path, state(extra=ok))
    assert (obj["a"], obj["b"], obj["c"], obj["d"]) == ("x", 12, b"\x01\x02", {3})  # type: ignore[index]
    assert (obj["e"], obj["f"]) == ("b'ab'", "ab")  # type: ignore[index]  # as Python reads them
    for bad in (
        g("builtins", "str") + tup(b"C\x02ab", s("idna")) + b"R",  # a codec name imports a module
        g("builtins", "str") + tup(b"]") + b"R",
        g("builtins", "int") + tup(b"]") + b"R",
        g("builtins", "float") + tup(b"}") + b"R",
    ):
        with pytest.raises(CheckpointError) as ei:
            _load(tmp_path, state(extra=s("x") + bad))
        assert ei.value.code == "not_a_checkpoint"


def test_ordered_dict_pairs_as_lists_are_kept(tmp_path: Path) -> None:
    pairs = b"(" + b"(" + s("a") + i(1) + b"l" + tup(s("b"), i(2)) + b"l"
    obj = _load(tmp_path, state(extra=s("od") + g("collections", "OrderedDict") + tup(pairs) + b"R"))
    assert obj["od"] == OrderedDict([("a", 1), ("b", 2)])  # type: ignore[index]
    assert list(obj["od"]) == ["a", "b"]  # type: ignore[index]


def test_newobj_and_build_only_on_inert_objects(tmp_path: Path) -> None:
    newobj_str = g("builtins", "str") + tup(s("x")) + b"\x81"
    with pytest.raises(CheckpointError) as ei:
        _load(tmp_path, state(extra=s("x") + newobj_str))
    assert ei.value.code == "not_a_checkpoint"
    build_on_dict = b"}" + b"}(" + s("a") + i(1) + b"ub"
    with pytest.raises(CheckpointError):
        _load(tmp_path, state(extra=s("x") + build_on_dict))
    unknown = g("some.mod", "Sched") + b")\x81" + b"}(" + s("a") + i(1) + b"ub"
    obj = _load(tmp_path, state(extra=s("sched") + unknown))
    assert repr(obj["sched"]) == "<inert some.mod.Sched>"  # type: ignore[index]


def test_no_raw_overflow_or_memory_errors(tmp_path: Path) -> None:
    for shape, stride in (((2, 4), (10**30, 1)), ((2**62, 1), (1, 1)), ((-1, 8), (8, 1))):
        body = pkl(b"}(" + s("ctx") + tensor("0", 32, shape, stride) + b"u")
        with pytest.raises(CheckpointError) as ei:
            ingest_checkpoint(torch_zip(tmp_path / "o.pth", body))
        assert ei.value.code in ("not_a_checkpoint", "too_large")
    ok = pkl(b"}(" + ctx_entry() + b"u")
    np.testing.assert_array_equal(ingest_checkpoint(torch_zip(tmp_path / "ok.pth", ok)).ctx, CTX_ARRAY)
