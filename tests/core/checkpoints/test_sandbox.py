"""mergetune.core.checkpoints.sandbox: the parser in a child process with hard limits. With the parser's own caps lifted, the
process limits alone refuse what would exhaust memory or CPU, with ``too_large`` / ``too_slow``."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from dos_corpus import CTX, hash_collision_int_keys, s, state, torch_zip, zero_stride_view

from mergetune.core.checkpoints.safe_pickle import ParseLimits
from mergetune.core.checkpoints.sandbox import SandboxLimits, SandboxRun, ingest_sandboxed
from mergetune.core.config import Method
from mergetune.core.errors import CheckpointError

NO_CAPS = ParseLimits(
    max_tensor_bytes=1 << 40, max_total_bytes=1 << 40, max_collidable_keys=1 << 30, max_amplification=1e12
)


def test_valid_file_round_trips_through_the_child(tmp_path: Path) -> None:
    run = SandboxRun()
    ck = ingest_sandboxed(torch_zip(tmp_path / "ok.pth", state()), filename="ok.pth", run=run)
    np.testing.assert_array_equal(ck.ctx, np.frombuffer(CTX, dtype=np.float32).reshape(4, 8))
    assert (ck.method, ck.n_ctx, ck.ctx_dim, ck.format) == (Method.coop, 4, 8, "state_dict")
    assert run.returncode == 0 and 0 < run.peak_rss_bytes < 400 << 20
    assert not list(tmp_path.glob("parse-*"))  # the work folder is removed


def test_parser_errors_keep_their_code(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError) as ei:
        ingest_sandboxed(torch_zip(tmp_path / "v.pth", state(extra=s("odd"))))
    assert ei.value.code == "not_a_checkpoint"  # odd SETITEMS, reported from inside the child


def test_memory_limit_refuses_what_the_caps_would_have(tmp_path: Path) -> None:
    f = zero_stride_view(tmp_path / "z.pth")  # 1 GiB once materialised
    t = time.monotonic()
    with pytest.raises(CheckpointError) as ei:
        ingest_sandboxed(f, limits=SandboxLimits(memory_bytes=512 << 20, parse=NO_CAPS))
    assert ei.value.code == "too_large"
    assert "MiB of memory" in ei.value.message or "more memory" in ei.value.message  # the limit, not a cap
    assert time.monotonic() - t < 10


def test_cpu_limit_stops_quadratic_work(tmp_path: Path) -> None:
    f = hash_collision_int_keys(tmp_path / "h.pth", n=60_000)  # minutes of probing without the key cap
    t = time.monotonic()
    with pytest.raises(CheckpointError) as ei:
        ingest_sandboxed(f, limits=SandboxLimits(cpu_seconds=1, wall_seconds=30, parse=NO_CAPS))
    assert ei.value.code == "too_slow"
    assert time.monotonic() - t < 10


def test_wall_limit_kills_the_child(tmp_path: Path) -> None:
    f = hash_collision_int_keys(tmp_path / "h.pth", n=60_000)
    run = SandboxRun()
    with pytest.raises(CheckpointError) as ei:
        ingest_sandboxed(f, limits=SandboxLimits(cpu_seconds=60, wall_seconds=0.5, parse=NO_CAPS), run=run)
    assert ei.value.code == "too_slow"
    assert run.returncode is not None and run.returncode < 0  # killed, not finished
    assert run.wall_seconds < 5


@pytest.mark.parametrize("use_server", [True, False])
def test_server_and_fresh_interpreter_give_the_same_answers(tmp_path: Path, use_server: bool) -> None:
    ok = ingest_sandboxed(torch_zip(tmp_path / "ok.pth", state()), use_server=use_server)
    assert ok.ctx is not None and ok.ctx.shape == (4, 8)
    with pytest.raises(CheckpointError) as ei:
        ingest_sandboxed(
            zero_stride_view(tmp_path / "z.pth"),
            limits=SandboxLimits(memory_bytes=512 << 20, parse=NO_CAPS),
            use_server=use_server,
        )
    assert ei.value.code == "too_large"


def test_a_killed_parse_server_is_replaced(tmp_path: Path) -> None:
    import os
    import signal

    from mergetune.core.checkpoints import sandbox

    f = torch_zip(tmp_path / "ok.pth", state())
    assert ingest_sandboxed(f).ctx is not None  # the server is up
    proc = sandbox._SERVER._proc
    assert proc is not None and proc.poll() is None
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(3):  # the next parses start a new server (or fall back to a fresh interpreter)
        ck = ingest_sandboxed(f)
        np.testing.assert_array_equal(ck.ctx, np.frombuffer(CTX, dtype=np.float32).reshape(4, 8))
    assert sandbox._SERVER._proc is not None and sandbox._SERVER._proc.pid != proc.pid
