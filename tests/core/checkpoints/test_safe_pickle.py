"""mergetune.core.checkpoints.safe_pickle: torch zip files read without torch, lazily, bit-exact, with the global policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from mergetune.core.checkpoints.safe_pickle import TorchZipFile, is_unsafe_global, load_torch_file, sniff
from mergetune.core.errors import CheckpointError


def _load(path: Path) -> dict:
    loaded = load_torch_file(str(path))
    try:
        return {k: v.numpy() for k, v in loaded.obj.items()}
    finally:
        loaded.archive.close()


@pytest.mark.parametrize(
    "dtype",
    [
        torch.float32,
        torch.float64,
        torch.float16,
        torch.int64,
        torch.int32,
        torch.int8,
        torch.uint8,
        torch.bool,
    ],
)
def test_dtypes_round_trip_exactly(tmp_path: Path, dtype: torch.dtype) -> None:
    t = (torch.randn(3, 5) * 50).to(dtype)
    torch.save({"t": t}, tmp_path / "f.pt")
    out = _load(tmp_path / "f.pt")["t"]
    assert out.shape == (3, 5)
    np.testing.assert_array_equal(out, t.numpy())
    assert out.dtype == t.numpy().dtype


def test_bfloat16_widened_to_float32_exactly(tmp_path: Path) -> None:
    t = torch.randn(4, 6).to(torch.bfloat16)
    torch.save({"t": t}, tmp_path / "f.pt")
    out = _load(tmp_path / "f.pt")["t"]
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, t.float().numpy())


def test_views_offsets_strides_and_shared_storage(tmp_path: Path) -> None:
    base = torch.arange(60, dtype=torch.float32).reshape(6, 10)
    views = {
        "full": base,
        "transposed": base.t(),
        "slice": base[2:5, 3:7],
        "step": base[::2, 1::3],
        "row": base[4],
        "scalar": base[1, 1],
        "empty": base[:0],
        "param": torch.nn.Parameter(base[1:3].clone()),
    }
    torch.save(views, tmp_path / "v.pt")
    out = _load(tmp_path / "v.pt")
    for k, v in views.items():
        np.testing.assert_array_equal(out[k], v.detach().numpy(), err_msg=k)
        assert out[k].flags["C_CONTIGUOUS"] and out[k].flags["OWNDATA"], k


def test_reads_only_materialised_storages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.save({"small": torch.ones(2), "big": torch.zeros(1000, 100)}, tmp_path / "f.pt")
    read = []
    orig = TorchZipFile.read_storage

    def spy(self, ref):  # noqa: ANN001
        read.append(ref.numel)
        return orig(self, ref)

    monkeypatch.setattr(TorchZipFile, "read_storage", spy)
    loaded = load_torch_file(str(tmp_path / "f.pt"))
    assert loaded.obj["big"].shape == (1000, 100)
    np.testing.assert_array_equal(loaded.obj["small"].numpy(), [1.0, 1.0])
    loaded.archive.close()
    assert read == [2]


def test_unknown_globals_recorded_not_called(tmp_path: Path) -> None:
    import collections

    obj = {
        "od": collections.OrderedDict(a=1),
        "dd": collections.defaultdict(list, a=[1]),
        "s": {1, 2},
        "sl": slice(1, 3),
    }
    torch.save(obj, tmp_path / "f.pt")
    loaded = load_torch_file(str(tmp_path / "f.pt"))
    loaded.archive.close()
    assert loaded.obj["od"] == {"a": 1}
    assert loaded.obj["dd"] == {"a": [1]} and type(loaded.obj["dd"]) is dict  # factory dropped
    assert loaded.obj["s"] == {1, 2} and loaded.obj["sl"] == slice(1, 3)
    assert loaded.unknown_globals == []


@pytest.mark.parametrize(
    "module,name,unsafe",
    [
        ("os", "system", True),
        ("posix", "system", True),
        ("nt", "system", True),
        ("subprocess", "Popen", True),
        ("builtins", "eval", True),
        ("builtins", "getattr", True),
        ("builtins", "open", True),
        ("builtins", "dict", False),
        ("builtins", "set", False),
        ("importlib", "import_module", True),
        ("runpy", "run_path", True),
        ("socket", "socket", True),
        ("shutil", "rmtree", True),
        ("sys", "modules", True),
        ("pickle", "loads", True),
        ("torch.serialization", "load", True),
        ("torch", "load", True),
        ("numpy", "load", True),
        ("torch.storage", "_load_from_bytes", True),
        ("operator", "attrgetter", True),
        ("some.module", "__import__", True),
        ("dassl.optim.lr_scheduler", "ConstantWarmupScheduler", False),
        ("torch.optim.lr_scheduler", "CosineAnnealingLR", False),
        ("torch._utils", "_rebuild_tensor_v2", False),
        ("types", "SimpleNamespace", False),
        ("types", "FunctionType", True),
        ("_codecs", "encode", False),
        ("codecs", "open", True),
        ("__builtin__", "eval", True),
        ("commands", "getoutput", True),
    ],
)
def test_policy(module: str, name: str, unsafe: bool) -> None:
    assert is_unsafe_global(module, name) is unsafe


def test_sniff(tmp_path: Path) -> None:
    torch.save({"a": torch.ones(1)}, tmp_path / "z.pt")
    torch.save({"a": torch.ones(1)}, tmp_path / "l.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "t.txt").write_text("hello")
    assert sniff(str(tmp_path / "z.pt")) == "zip"
    assert sniff(str(tmp_path / "l.pt")) == "legacy_torch"
    assert sniff(str(tmp_path / "t.txt")) == "unknown"


def test_zip_without_data_pkl(tmp_path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError) as ei:
        load_torch_file(str(tmp_path / "a.zip"))
    assert ei.value.code == "not_a_checkpoint"


def test_no_torch_import() -> None:
    code = (
        "import sys, mergetune.core.checkpoints.safe_pickle, mergetune.core.checkpoints.ingest, mergetune.core.data as d;"
        "d.open_dataset('builtin', None, '', options={'num_classes': 2}).load_image('builtin:1:0:test');"
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).parents[2])
