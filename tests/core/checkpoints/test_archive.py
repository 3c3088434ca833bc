"""mergetune.core.checkpoints.archive, run as the service runs it (in the sandbox child): real CoOp trees
in every packing tar and zip tools write come out byte for byte, and every hostile archive of
tests/hostile_archives.py is refused with its code within small bounds of time and memory."""

from __future__ import annotations

import bz2
import hashlib
import io
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from hostile_archives import HOSTILE, good_files, gz, names_with, pax_record, plain_tar, tar_header
from tree_writer import coop_tree, tar_bytes, zip_bytes

from mergetune.core.checkpoints.archive import ArchiveLimits, unpack_tree
from mergetune.core.checkpoints.sandbox import SandboxRun, unpack_sandboxed
from mergetune.core.errors import CheckpointError

LONG_ROOT = "output/" + "/".join(["a-rather-long-folder-name-from-a-real-cluster"] * 4) + "/ünïcode"


def _unpack(tmp_path: Path, data: bytes, limits: ArchiveLimits | None = None, run: SandboxRun | None = None):
    src = tmp_path / "upload.bin"
    src.write_bytes(data)
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    return unpack_sandboxed(src, out, archive=limits or ArchiveLimits(), run=run), out


def _runs() -> list[tuple[str, int, bytes]]:
    return [("eurosat", 1, os.urandom(3000)), ("eurosat", 2, os.urandom(70_000)), ("dtd", 1, b"")]


def _tar(files: dict[str, bytes], mode: str, fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode, format=fmt) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


PACKINGS = {
    "zip": lambda f: zip_bytes(f),
    "tar": lambda f: tar_bytes(f, mode="w"),
    "tar.gz": lambda f: tar_bytes(f, mode="w:gz"),
    "tar.bz2": lambda f: tar_bytes(f, mode="w:bz2"),
    "tar.xz": lambda f: tar_bytes(f, mode="w:xz"),
    "gnu long names": lambda f: _tar(f, "w:gz", tarfile.GNU_FORMAT),
    "pax long names": lambda f: _tar(f, "w:bz2", tarfile.PAX_FORMAT),
    "ustar prefix": lambda f: _tar(f, "w", tarfile.USTAR_FORMAT),
    "multi-stream gz": lambda f: (lambda t: gz(t[:5000]) + gz(t[5000:]))(tar_bytes(f, mode="w")),
    "multi-stream bz2": lambda f: (lambda t: bz2.compress(t[:7000]) + bz2.compress(t[7000:]))(
        tar_bytes(f, mode="w")
    ),
}


@pytest.mark.parametrize("packing", sorted(PACKINGS))
def test_every_packing_gives_each_runs_last_checkpoint_byte_for_byte(tmp_path: Path, packing: str) -> None:
    root = "output/b2n" if packing in ("ustar prefix", "zip", "tar", "tar.gz") else LONG_ROOT
    if packing == "ustar prefix":
        root = "output/" + "p" * 90  # over 100 bytes in all: split between prefix and name
    runs = _runs()
    files = coop_tree(runs, root=root)
    older = f"{root}/eurosat/shots_16/CoOp/vit_b16_ep50/seed1/prompt_learner/model.pth.tar-10"
    files[older] = b"an earlier epoch"
    cks, out = _unpack(tmp_path, PACKINGS[packing](files))
    assert [(c.dataset, c.seed, c.epoch) for c in cks] == [
        ("dtd", 1, 50),
        ("eurosat", 1, 50),
        ("eurosat", 2, 50),
    ]
    want = {(d, s): data for d, s, data in runs}
    for ck in cks:
        assert ck.member.startswith(root + "/")
        data = (out / ck.file).read_bytes()
        assert data == want[(ck.dataset, ck.seed)]
        assert ck.size == len(data) and ck.sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("ck-")) == sorted(c.file for c in cks)


def test_names_match_what_tarfile_lists_for_valid_archives(tmp_path: Path) -> None:
    files = coop_tree(_runs(), root=LONG_ROOT)
    for fmt in (tarfile.GNU_FORMAT, tarfile.PAX_FORMAT):
        data = _tar(files, "w", fmt)
        listed = tarfile.open(fileobj=io.BytesIO(data)).getnames()  # a trusted file, written just above
        (tmp_path / "t.tar").write_bytes(data)
        out = tmp_path / f"out{fmt}"
        out.mkdir()
        cks = unpack_tree(tmp_path / "t.tar", out, ArchiveLimits())
        assert {c.member for c in cks} <= set(listed) and len(cks) == 3


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_archive_is_refused_quickly_and_in_little_memory(tmp_path: Path, name: str) -> None:
    build, code = HOSTILE[name]
    run = SandboxRun()
    t = time.monotonic()
    with pytest.raises(CheckpointError) as ei:
        _unpack(tmp_path, build(), run=run)
    took = time.monotonic() - t
    assert ei.value.code == code, ei.value.message
    assert ei.value.param == "file"
    assert took < 5.0, took
    assert run.returncode == 0 and 0 < run.peak_rss_bytes < 150 << 20, run  # answered, not killed
    assert [p.name for p in (tmp_path / "out").iterdir() if p.name.startswith("ck-")] == []


@pytest.mark.parametrize("char", ["\n", "\r", "\t", "\x1b", "\x85"])
def test_control_characters_in_member_names_are_refused(tmp_path: Path, char: str) -> None:
    for kind in ("tar", "zip"):
        with pytest.raises(CheckpointError) as ei:
            _unpack(tmp_path, names_with(char, kind))
        assert ei.value.code == "unsafe_archive" and "control character" in ei.value.message


def test_limits_are_checked_at_the_header_before_the_data(tmp_path: Path) -> None:
    big = plain_tar({"output/readme.txt": b"x" * 5000})
    with pytest.raises(CheckpointError) as ei:
        _unpack(tmp_path, big, ArchiveLimits(max_unpacked_bytes=4096))
    assert ei.value.code == "archive_too_large"
    # a declared 1 TiB member in a 1 KiB file: refused from its header alone, nothing read after it
    lying = gz(tar_header(b"output/huge.bin", 1 << 40))
    with pytest.raises(CheckpointError) as ei:
        _unpack(tmp_path, lying)
    assert ei.value.code == "archive_too_large"
    long_name = _tar({"output/" + "n" * 300: b"x"}, "w", tarfile.GNU_FORMAT)
    with pytest.raises(CheckpointError) as ei:
        _unpack(tmp_path, long_name, ArchiveLimits(max_name_bytes=256))
    assert ei.value.code == "header_too_large"  # the GNU long-name header of a 307-byte name


def test_wall_time_limit_stops_a_long_archive(tmp_path: Path) -> None:
    # 64 MiB of noise in a plain tar, no ratio to trip and within the byte limits: the time limit stops it
    from mergetune.core.checkpoints.sandbox import SandboxLimits

    big = tmp_path / "big.tar"
    noise = os.urandom(1 << 20)
    with big.open("wb") as f:
        f.write(tar_header(b"output/noise.bin", 64 << 20))
        for _ in range(64):
            f.write(noise)
        f.write(bytes(1024))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CheckpointError) as ei:
        unpack_sandboxed(
            big, out, archive=ArchiveLimits(), limits=SandboxLimits(cpu_seconds=1, wall_seconds=0.05)
        )
    assert ei.value.code == "too_slow"


def test_kept_checkpoints_are_bounded_before_they_are_written(tmp_path: Path) -> None:
    runs = [("eurosat", 1, b"a" * 3000), ("eurosat", 2, b"b" * 3000)]
    files = coop_tree(runs)
    files[
        "output/base2new/train_base/eurosat/shots_16/CoOp/vit_b16_ep50/seed1/prompt_learner/model.pth.tar-9"
    ] = b"c" * 3000  # an earlier epoch: replaced, so it does not count
    for pack in (zip_bytes, lambda f: tar_bytes(f, mode="w:gz")):
        cks, _ = _unpack(tmp_path, pack(files), ArchiveLimits(max_kept_bytes=6000))
        assert len(cks) == 2
        with pytest.raises(CheckpointError) as ei:
            _unpack(tmp_path, pack(files), ArchiveLimits(max_kept_bytes=5999))
        assert ei.value.code == "too_large" and "6000 bytes" in ei.value.message


def test_directories_and_a_tar_without_end_blocks(tmp_path: Path) -> None:
    files = {"output/": b"", **coop_tree([("dtd", 3, b"z" * 10)])}
    data = b"".join(tar_header(n.encode(), len(d), b"0") + d + bytes(-len(d) % 512) for n, d in files.items())
    cks, out = _unpack(tmp_path, data)  # "output/" as an old-style regular entry is a folder; no end blocks
    assert [(c.dataset, c.seed) for c in cks] == [("dtd", 3)] and (
        out / cks[0].file
    ).read_bytes() == b"z" * 10


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar command")
@pytest.mark.parametrize("fmt", ["gnu", "oldgnu", "pax", "ustar", "v7"])
def test_trees_written_by_the_tar_command_read_alike(tmp_path: Path, fmt: str) -> None:
    # GNU tar in each of its formats, plain and compressed, long (or, for ustar/v7, short) paths
    root = "output/b2n" if fmt in ("ustar", "v7") else LONG_ROOT
    runs = _runs()
    src = tmp_path / "src"
    for name, data in coop_tree(runs, root=root).items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    want = {(d, s): data for d, s, data in runs}
    for flag in ("", "-z", "-j", "-J"):
        archive = tmp_path / f"t{flag}.tar"
        cmd = ["tar", f"--format={fmt}", "-c", "-f", str(archive), "-C", str(src), "output"]
        subprocess.run(cmd[:1] + ([flag] if flag else []) + cmd[1:], check=True)
        out = tmp_path / f"out{flag}"
        out.mkdir()
        cks = unpack_tree(archive, out, ArchiveLimits())
        assert {(c.dataset, c.seed): (out / c.file).read_bytes() for c in cks} == want, (fmt, flag)
        listed = subprocess.run(["tar", "-t", "-f", str(archive)], check=True, capture_output=True, text=True)
        assert {c.member for c in cks} <= set(listed.stdout.splitlines())


@pytest.mark.skipif(shutil.which("tar") is None, reason="needs the tar command")
def test_a_sparse_file_from_the_tar_command_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "src" / "output"
    src.mkdir(parents=True)
    for name, data in coop_tree([("dtd", 1, b"x" * 100)], root="run").items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    with (src / "holes.bin").open("wb") as f:
        f.seek(8 << 20)
        f.write(b"end")
    for fmt in ("gnu", "pax"):
        archive = tmp_path / f"{fmt}.tar.gz"
        subprocess.run(
            ["tar", f"--format={fmt}", "-S", "-czf", str(archive), "-C", str(src.parent), "output"],
            check=True,
        )
        with pytest.raises(CheckpointError) as ei:
            _unpack(tmp_path, archive.read_bytes())
        assert ei.value.code == "unsafe_archive" and "sparse" in ei.value.message


def test_pax_headers_together_are_bounded(tmp_path: Path) -> None:
    # each pax header within the limit, but many of them before a member: their total is bounded
    body = pax_record("comment", "c" * 60_000)
    one = tar_header(b"././@PaxHeader", len(body), b"x") + body + bytes(-len(body) % 512)
    data = gz(one * 200 + plain_tar(good_files()))
    with pytest.raises(CheckpointError) as ei:
        _unpack(tmp_path, data, ArchiveLimits(max_members=100))
    assert ei.value.code == "header_too_large" and "headers hold more than" in ei.value.message
