"""A hostile-file corpus, generated at test time: every file either loads its tensors inertly or is
rejected with a clear code, and the marker file its payload would create never appears."""

from __future__ import annotations

import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from dos_corpus import g, i, pkl, s, tensor, torch_zip, tup

from mergetune.core.checkpoints.ingest import ingest_checkpoint
from mergetune.core.checkpoints.safe_pickle import load_torch_file
from mergetune.core.errors import CheckpointError

# ---------------------------------------------------------------------------------------------------
# opcodes on top of the DoS corpus's pickle assembler and zip writer (tests/dos_corpus.py), so the
# corpus needs no dangerous object to exist


def call(module: str, name: str, *args: bytes) -> bytes:
    return g(module, name) + tup(*args) + b"R"


def dct(**items: bytes) -> bytes:
    return b"}(" + b"".join(s(k) + v for k, v in items.items()) + b"u"


CTX = np.arange(8 * 4, dtype=np.float32).reshape(4, 8) / 7.0


def ctx_entry() -> bytes:
    return tensor("0", 32, (4, 8), (8, 1))


def dassl(state_items: bytes, extra: bytes = b"") -> bytes:
    return pkl(b"}(" + s("state_dict") + b"}(" + state_items + b"u" + s("epoch") + i(5) + extra + b"u")


# ---------------------------------------------------------------------------------------------------


@pytest.fixture
def marker(tmp_path: Path) -> Path:
    return tmp_path / "PWNED"


def payloads(marker: Path) -> dict[str, bytes]:
    cmd = s(f"touch {marker}")
    py = s(f"open({str(marker)!r}, 'w').write('x')")
    return {
        "os_system": call("os", "system", cmd),
        "posix_system": call("posix", "system", cmd),
        "subprocess_popen": call("subprocess", "Popen", tup(s("touch"), s(str(marker)))),
        "builtins_eval": call("builtins", "eval", py),
        "builtins_exec": call("builtins", "exec", py),
        "import_module": call(
            "builtins", "getattr", call("importlib", "import_module", s("os")), s("system")
        ),
        "getattr_chain": g("builtins", "getattr")
        + tup(call("builtins", "__import__", s("os")), s("system"))
        + b"R"
        + tup(cmd)
        + b"R",
        "torch_load": call("torch.serialization", "load", s(str(marker))),
        "numpy_load": call("numpy", "load", s(str(marker))),
        "runpy": call("runpy", "run_path", s(str(marker))),
        "shutil": call("shutil", "rmtree", s(str(marker.parent / "nothing"))),
        "pickle_loads": call("pickle", "loads", b"C\x00"),
        "storage_from_bytes": call("torch.storage", "_load_from_bytes", b"C\x00"),
        "operator_attrgetter": call("operator", "attrgetter", s("system")),
        "codecs_open": call("codecs", "open", s(str(marker)), s("w")),
        "py2_commands": call("commands", "getoutput", cmd),
        "py2_builtin_eval": call("__builtin__", "eval", py),
    }


PAYLOAD_NAMES = list(payloads(Path("/x")))


@pytest.mark.parametrize("name", PAYLOAD_NAMES)
def test_reduce_payload_at_top_level_is_unsafe(tmp_path: Path, marker: Path, name: str) -> None:
    f = torch_zip(tmp_path / "evil.pth", pkl(payloads(marker)[name]), {})
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert ei.value.code == "unsafe_pickle"
    assert ei.value.param == "file"
    assert not marker.exists()


@pytest.mark.parametrize("name", ["os_system", "builtins_eval", "getattr_chain", "subprocess_popen"])
def test_nested_reduce_inside_state_dict_is_unsafe(tmp_path: Path, marker: Path, name: str) -> None:
    body = dassl(s("ctx") + ctx_entry() + s("evil") + payloads(marker)[name])
    f = torch_zip(tmp_path / "model.pth.tar-5", body, {"0": CTX.tobytes()})
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert ei.value.code == "unsafe_pickle"
    assert not marker.exists()


def test_payload_hidden_in_scheduler_state_is_unsafe(tmp_path: Path, marker: Path) -> None:
    sched = (
        g("dassl.optim.lr_scheduler", "ConstantWarmupScheduler")
        + b")\x81"
        + dct(successor=payloads(marker)["os_system"])
        + b"b"
    )
    body = dassl(s("ctx") + ctx_entry(), s("scheduler") + sched)
    f = torch_zip(tmp_path / "model-best.pth.tar", body, {"0": CTX.tobytes()})
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert ei.value.code == "unsafe_pickle"
    assert not marker.exists()


def test_crafted_unknown_scheduler_loads_inertly(tmp_path: Path) -> None:
    # NEWOBJ + BUILD of an unknown class, a REDUCE call of another unknown callable: both absorbed.
    sched = (
        g("dassl.optim.lr_scheduler", "ConstantWarmupScheduler")
        + b")\x81"
        + dct(last_epoch=i(4), successor=call("torch.optim.lr_scheduler", "CosineAnnealingLR", i(1)))
        + b"b"
    )
    body = dassl(s("ctx") + ctx_entry(), s("scheduler") + sched)
    f = torch_zip(tmp_path / "model.pth.tar-5", body, {"0": CTX.tobytes()})
    ck = ingest_checkpoint(f)
    np.testing.assert_array_equal(ck.ctx, CTX)
    assert ck.epoch == 5
    assert ck.unknown_globals == [
        "dassl.optim.lr_scheduler.ConstantWarmupScheduler",
        "torch.optim.lr_scheduler.CosineAnnealingLR",
    ]


def test_corpus_is_live_under_plain_pickle(tmp_path: Path, marker: Path) -> None:
    """Sanity check of the corpus itself: the os.system payload really runs under plain pickle
    (in a child process), so the tests above prove something."""
    data = pkl(payloads(marker)["os_system"])
    code = "import pickle, sys; pickle.loads(sys.stdin.buffer.read())"
    subprocess.run([sys.executable, "-c", code], input=data, check=True, timeout=60)
    assert marker.exists()


def test_path_traversal_member_is_rejected(tmp_path: Path, marker: Path) -> None:
    f = torch_zip(
        tmp_path / "trav.pth",
        dassl(s("ctx") + ctx_entry()),
        {"0": CTX.tobytes()},
        extra=[("../../PWNED", b"x"), ("archive/../../../etc/x", b"y")],
    )
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert ei.value.code == "not_a_checkpoint"
    assert "path traversal" in ei.value.message
    assert not (tmp_path.parent / "PWNED").exists()


def test_valid_zip_with_bad_pickle(tmp_path: Path) -> None:
    for n, data in enumerate([b"\x80\x02}q\x00(X\x03", b"not a pickle at all", b"\x80\x02(((((", b""]):
        f = torch_zip(tmp_path / f"bad{n}.pth", data, {})
        with pytest.raises(CheckpointError) as ei:
            ingest_checkpoint(f)
        assert ei.value.code in ("not_a_checkpoint", "truncated"), data


def test_huge_declared_tensor_size(tmp_path: Path) -> None:
    body = dassl(s("ctx") + tensor("0", 10**15, (10**15,), (1,)))
    f = torch_zip(tmp_path / "huge.pth", body, {"0": CTX.tobytes()})
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert ei.value.code == "too_large"
    # under the cap but more than the bytes present: truncated, nothing allocated
    body = dassl(s("ctx") + tensor("0", 10**6, (1000, 1000), (1000, 1)))
    f = torch_zip(tmp_path / "short.pth", body, {"0": CTX.tobytes()})
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert ei.value.code == "truncated"


def test_view_past_end_of_storage(tmp_path: Path) -> None:
    body = dassl(s("ctx") + tensor("0", 32, (4, 8), (100, 1)))
    f = torch_zip(tmp_path / "view.pth", body, {"0": CTX.tobytes()})
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert ei.value.code == "not_a_checkpoint"


def test_storage_key_with_slashes_and_missing_storage(tmp_path: Path) -> None:
    body = dassl(s("ctx") + tensor("../../etc/passwd", 32, (4, 8), (8, 1)))
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(torch_zip(tmp_path / "k.pth", body, {"0": CTX.tobytes()}))
    assert ei.value.code == "not_a_checkpoint"
    body = dassl(s("ctx") + tensor("7", 32, (4, 8), (8, 1)))
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(torch_zip(tmp_path / "m.pth", body, {"0": CTX.tobytes()}))
    assert ei.value.code == "truncated"


def test_build_on_allowlisted_objects_cannot_tamper(tmp_path: Path) -> None:
    # BUILD with slot state on the rebuild function and on a storage-type marker: refused (as torch
    # refuses it), nothing changed; later files still read correctly.
    tampers = [
        g("torch._utils", "_rebuild_tensor_v2") + b"N" + dct(__defaults__=i(1)) + b"\x86b0",
        g("torch", "FloatStorage") + b"N" + dct(itemsize=i(1)) + b"\x86b0",
    ]
    for n, tamper in enumerate(tampers):
        body = pkl(tamper + b"}(" + s("ctx") + ctx_entry() + b"u")
        with pytest.raises(CheckpointError) as ei:
            ingest_checkpoint(torch_zip(tmp_path / f"tamper{n}.pth", body, {"0": CTX.tobytes()}))
        assert ei.value.code == "not_a_checkpoint"
    body = pkl(b"}(" + s("ctx") + ctx_entry() + b"u")
    ck = ingest_checkpoint(torch_zip(tmp_path / "after.pth", body, {"0": CTX.tobytes()}))
    np.testing.assert_array_equal(ck.ctx, CTX)
    from mergetune.core.checkpoints.safe_pickle import dtype_by_name

    assert dtype_by_name("float32").itemsize == 4


def test_bytes_allocation_bomb_and_codecs(tmp_path: Path) -> None:
    body = pkl(b"}(" + s("ctx") + ctx_entry() + s("b") + call("builtins", "bytes", i(10**12)) + b"u")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(torch_zip(tmp_path / "bomb.pth", body, {"0": CTX.tobytes()}))
    assert ei.value.code == "too_large"
    # protocol-2 bytes (via _codecs.encode) in an optimizer/scheduler entry load fine
    ok = call("_codecs", "encode", s("abc"), s("latin1"))
    body = pkl(b"}(" + s("ctx") + ctx_entry() + s("b") + ok + b"u")
    ck = ingest_checkpoint(torch_zip(tmp_path / "ok.pth", body, {"0": CTX.tobytes()}))
    np.testing.assert_array_equal(ck.ctx, CTX)
    bad = call("_codecs", "encode", s("abc"), s("rot13"))
    body = pkl(b"}(" + s("ctx") + ctx_entry() + s("b") + bad + b"u")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(torch_zip(tmp_path / "bad.pth", body, {"0": CTX.tobytes()}))
    assert ei.value.code == "not_a_checkpoint"


def test_placeholder_absorbs_everything(tmp_path: Path) -> None:
    # call, BUILD, SETITEMS, APPENDS on an unknown object; then use it as a tensor "storage"
    obj = call("evil.mod", "Thing", i(1)) + dct(a=i(1)) + b"b" + b"(" + s("k") + i(2) + b"u"
    body = dassl(s("ctx") + ctx_entry(), s("scheduler") + obj)
    ck = ingest_checkpoint(torch_zip(tmp_path / "p.pth", body, {"0": CTX.tobytes()}))
    assert ck.unknown_globals == ["evil.mod.Thing"]
    assert ck.ctx is not None and ck.ctx.shape == (4, 8)
    # among the entries the tensors are read from, an object we do not build could hide one: refused
    body = pkl(b"}(" + s("ctx") + ctx_entry() + s("x") + obj + b"u")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(torch_zip(tmp_path / "p1.pth", body, {"0": CTX.tobytes()}))
    assert ei.value.code == "not_a_checkpoint" and "evil.mod.Thing" in ei.value.message
    body = pkl(
        b"}("
        + s("ctx")
        + g("torch._utils", "_rebuild_tensor_v2")
        + tup(call("evil.mod", "S"), i(0), tup(i(1)), tup(i(1)))
        + b"R"
        + b"u"
    )
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(torch_zip(tmp_path / "p2.pth", body, {}))
    assert ei.value.code == "not_a_checkpoint"


def test_bare_pickle_and_legacy_and_junk(tmp_path: Path, marker: Path) -> None:
    f = tmp_path / "bare.pkl"
    f.write_bytes(pkl(payloads(marker)["os_system"]))
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert ei.value.code == "unsafe_pickle"
    f.write_bytes(pickle_dumps_plain({"ctx": [1.0, 2.0]}))
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert ei.value.code == "not_a_checkpoint"
    legacy = tmp_path / "legacy.pth"  # the pre-1.6 format is read (as torch reads it), tensors inert
    torch.save({"ctx": torch.ones(4, 8)}, legacy, _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(ingest_checkpoint(legacy).ctx, np.ones((4, 8), np.float32))
    bad = legacy.read_bytes().replace(b"ctx", b"cty", 1)[:-8]  # truncated storage bytes
    legacy.write_bytes(bad)
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(legacy)
    assert ei.value.code == "truncated"
    for n, data in enumerate([b"\x89PNG\r\n\x1a\n" + b"\0" * 64, b"hello world\n", bytes(range(256)) * 4]):
        f = tmp_path / f"junk{n}.pth"
        f.write_bytes(data)
        with pytest.raises(CheckpointError) as ei:
            ingest_checkpoint(f)
        assert ei.value.code == "not_a_checkpoint"
    assert not marker.exists()


def pickle_dumps_plain(obj: object) -> bytes:
    import pickle

    return pickle.dumps(obj, protocol=2)


def test_truncated_real_checkpoint(tmp_path: Path) -> None:
    f = tmp_path / "full.pth"
    torch.save({"ctx": torch.randn(4, 64)}, f)
    data = f.read_bytes()
    for cut in (len(data) // 3, len(data) - 30, 40):
        t = tmp_path / f"cut{cut}.pth"
        t.write_bytes(data[:cut])
        with pytest.raises(CheckpointError) as ei:
            ingest_checkpoint(t)
        assert ei.value.code in ("truncated", "not_a_checkpoint")


def test_dassl_file_with_unknown_scheduler_class_loads(tmp_path: Path) -> None:
    """A real torch.save'd Dassl file whose scheduler is an instance of a class from a module the
    service does not have: loads, the scheduler becomes an inert placeholder."""
    names = ["dassl", "dassl.optim", "dassl.optim.lr_scheduler"]
    mods = {n: types.ModuleType(n) for n in names}

    class ConstantWarmupScheduler:
        def __init__(self) -> None:
            self.last_epoch = 10
            self.successor = {"T_max": 10}

    ConstantWarmupScheduler.__module__ = "dassl.optim.lr_scheduler"
    ConstantWarmupScheduler.__qualname__ = "ConstantWarmupScheduler"
    mods["dassl.optim.lr_scheduler"].ConstantWarmupScheduler = ConstantWarmupScheduler
    sys.modules.update(mods)
    try:
        ctx = torch.randn(4, 512)
        torch.save(
            {
                "state_dict": {"ctx": ctx},
                "epoch": 10,
                "optimizer": {},
                "scheduler": ConstantWarmupScheduler(),
            },
            tmp_path / "model.pth.tar-10",
        )
    finally:
        for n in names:
            sys.modules.pop(n, None)
    with pytest.raises(Exception):  # noqa: B017 - the file really is refused by the safe torch loader
        torch.load(tmp_path / "model.pth.tar-10", weights_only=True)
    ck = ingest_checkpoint(tmp_path / "model.pth.tar-10", expected_dim=512)
    assert (ck.n_ctx, ck.ctx_dim, ck.epoch) == (4, 512, 10)
    np.testing.assert_array_equal(ck.ctx, ctx.numpy())
    loaded = load_torch_file(str(tmp_path / "model.pth.tar-10"))
    loaded.archive.close()
    assert repr(loaded.obj["scheduler"]) == "<inert dassl.optim.lr_scheduler.ConstantWarmupScheduler>"


def test_zip_bomb_like_member_is_capped(tmp_path: Path) -> None:
    # a data.pkl that inflates beyond the pickle cap is refused before it is read whole
    f = tmp_path / "bomb.pth"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + b"N0" * (9 << 20) + b"N.")
    with pytest.raises(CheckpointError) as ei:
        ingest_checkpoint(f)
    assert ei.value.code == "too_large"
