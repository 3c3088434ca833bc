"""Checkpoint parsing in a child process with hard limits (address space, CPU time, wall time).

:func:`ingest_sandboxed` runs :func:`mergetune.core.checkpoints.ingest.ingest_checkpoint` (numpy only, no torch) in a fresh
``python -m mergetune.core.checkpoints.sandbox`` process. Before it reads a byte of the file the child limits itself with
``RLIMIT_AS`` (memory), ``RLIMIT_CPU`` (CPU seconds; SIGXCPU, then SIGKILL one second later),
``RLIMIT_FSIZE`` (what it may write), ``RLIMIT_CORE`` 0 and ``RLIMIT_NPROC``-free simple exec; the
parent kills it past the wall-time limit. Results come back as JSON plus ``.npy`` arrays read with
``allow_pickle=False``: nothing the child writes is unpickled by the parent.

Outcomes: the parsed :class:`IngestedCheckpoint`, or a :class:`CheckpointError` with the parser's
own code, ``too_large`` (memory limit hit) or ``too_slow`` (CPU or wall-time limit hit).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np

from mergetune.core import config as core_config
from mergetune.core.checkpoints.archive import ArchiveLimits, TreeCheckpoint
from mergetune.core.checkpoints.safe_pickle import ParseLimits
from mergetune.core.config import Method
from mergetune.core.errors import CheckpointError

_ARRAYS = ("ctx", "head_weight", "head_bias")
_EXIT_MEMORY = 3


@dataclass(frozen=True)
class SandboxLimits:
    memory_bytes: int = 1 << 30  # RLIMIT_AS of the child (virtual address space)
    cpu_seconds: int = 10  # RLIMIT_CPU of the child
    wall_seconds: float = 15.0  # the parent kills the child after this long
    parse: ParseLimits = field(default_factory=ParseLimits)


@dataclass
class SandboxRun:
    """What one sandboxed parse cost (for logs and tests)."""

    wall_seconds: float = 0.0
    returncode: int | None = None
    peak_rss_bytes: int = 0


def _err(message: str, code: str) -> CheckpointError:
    return CheckpointError(message, code=code, param="file")


def ingest_sandboxed(
    path: str | os.PathLike,
    *,
    filename: str | None = None,
    method: Method | None = None,
    expected_dim: int | None = None,
    n_cls: int | None = None,
    limits: SandboxLimits | None = None,
    tmp_dir: str | os.PathLike | None = None,
    run: SandboxRun | None = None,
    use_server: bool = True,
) -> Any:
    """Parse ``path`` in a limited child process; returns an :class:`mergetune.core.checkpoints.ingest.IngestedCheckpoint`."""
    from mergetune.core.checkpoints.ingest import IngestedCheckpoint

    limits = limits or SandboxLimits()
    run = run if run is not None else SandboxRun()
    work = Path(tempfile.mkdtemp(prefix="parse-", dir=os.fspath(tmp_dir) if tmp_dir else None))
    try:
        request = {
            "path": os.path.abspath(os.fspath(path)),
            "filename": filename,
            "method": method.value if method is not None else None,
            "expected_dim": expected_dim,
            "n_cls": n_cls,
            "out": str(work),
            "memory_bytes": limits.memory_bytes,
            "cpu_seconds": limits.cpu_seconds,
            "parse": asdict(limits.parse),
        }
        result = _run_request(work, request, limits, use_server, run, "parsing the file")
        arrays: dict[str, Any] = {}
        for name in _ARRAYS:
            p = work / f"{name}.npy"
            arrays[name] = np.load(p, allow_pickle=False) if p.exists() else None
        for name, arr in arrays.items():
            if arr is not None and arr.dtype != np.float32:
                raise _err(f"the parser returned {name} as {arr.dtype}", "not_a_checkpoint")
        names = {f.name for f in fields(IngestedCheckpoint)}
        kwargs: dict[str, Any] = {k: _from_json(v) for k, v in result["ok"].items() if k in names}
        kwargs.update({k: v for k, v in arrays.items() if k in names})
        adapters_path = work / "adapters.npz"
        if adapters_path.exists():  # MMA: the adapter tensors under their keys
            with np.load(adapters_path, allow_pickle=False) as npz:
                kwargs["adapters"] = {k: npz[k] for k in npz.files}
            if any(a.dtype != np.float32 for a in kwargs["adapters"].values()):
                raise _err("the parser returned adapters that are not float32", "not_a_checkpoint")
        return IngestedCheckpoint(**kwargs)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unpack_sandboxed(
    path: str | os.PathLike,
    out: str | os.PathLike,
    *,
    archive: ArchiveLimits,
    limits: SandboxLimits | None = None,
    run: SandboxRun | None = None,
    use_server: bool = True,
) -> list[TreeCheckpoint]:
    """Check the CoOp output tree archived at ``path`` in a limited child process
    (:func:`mergetune.core.checkpoints.archive.unpack_tree`) and leave each run's last checkpoint in
    the folder ``out`` (the caller's, which it removes); the child's memory, CPU and wall time are
    ``limits``' and it may write no file larger than one checkpoint member."""
    limits = limits or SandboxLimits()
    run = run if run is not None else SandboxRun()
    work = Path(out)
    request = {
        "task": "archive",
        "path": os.path.abspath(os.fspath(path)),
        "out": str(work),
        "memory_bytes": limits.memory_bytes,
        "cpu_seconds": limits.cpu_seconds,
        "archive": asdict(archive),
    }
    result = _run_request(work, request, limits, use_server, run, "reading the archive")
    checkpoints = []
    for item in result["ok"]["checkpoints"]:
        ck = TreeCheckpoint(**item)
        if not re.fullmatch(r"ck-\d+", ck.file) or (work / ck.file).stat().st_size != ck.size:
            raise _err("the archive reader returned an unknown file", "not_an_archive")
        checkpoints.append(ck)
    return checkpoints


# ----------------------------------------------------------------------------------------------------
# running the child: forked from a warm parse server (numpy and the parser already imported), or a
# fresh interpreter when the server cannot be used


def _child_env() -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),  # the venv finds mergetune itself
        "PYTHONHASHSEED": "random",  # str keys must keep unpredictable hashes
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "LC_ALL": "C.UTF-8",
    }


def _run_request(
    work: Path, request: dict[str, Any], limits: Any, use_server: bool, run: Any, doing: str
) -> dict[str, Any]:
    """Run one child on ``request`` in ``work`` and return its result.json, recording wall time, exit
    code and peak RSS on ``run``; a limit hit or the child's own error is raised as a CheckpointError
    whose message starts with ``doing`` ("parsing the file", "reading the archive")."""
    (work / "request.json").write_text(json.dumps(request))
    t0 = time.monotonic()
    returncode, timed_out = _run_child(work / "request.json", limits.wall_seconds, use_server)
    run.wall_seconds, run.returncode = time.monotonic() - t0, returncode
    if timed_out:
        raise _err(f"{doing} took longer than the limit of {limits.wall_seconds:g} s", "too_slow")
    result_path = work / "result.json"
    if returncode != 0 or not result_path.exists():
        if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
            raise _err(f"{doing} used more than {limits.cpu_seconds} s of CPU", "too_slow")
        raise _err(f"{doing} needed more than {limits.memory_bytes >> 20} MiB of memory", "too_large")
    result: dict[str, Any] = json.loads(result_path.read_text())
    run.peak_rss_bytes = int(result.get("peak_rss_bytes", 0))
    if "error" in result:
        raise _err(str(result["error"]["message"]), str(result["error"]["code"]))
    return result


def _run_child(request: Path, wall_seconds: float, use_server: bool) -> tuple[int, bool]:
    """Run one child on ``request``; (exit code, negative for a signal; killed for wall time)."""
    if use_server:
        try:
            return _SERVER.run(request, wall_seconds)
        except _ServerGone:
            pass  # fall back to a fresh interpreter for this parse
    proc = subprocess.Popen(
        [sys.executable, "-m", "mergetune.core.checkpoints.sandbox", str(request)],
        cwd=str(request.parent),
        env=_child_env(),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        close_fds=True,
        start_new_session=True,
    )
    try:
        return proc.wait(timeout=wall_seconds), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(), True


class _ServerGone(Exception):
    pass


class _ParseServer:
    """Client of ``python -m mergetune.core.checkpoints.sandbox --serve``: one JSON line per request on its stdin; it forks a
    child per request and answers ``{"id", "pid"}`` then ``{"id", "status"}`` (the wait status)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._waiters: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._ids = itertools.count(1)

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "mergetune.core.checkpoints.sandbox", "--serve"],
                env=_child_env(),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,
            )
            threading.Thread(target=self._read, args=(self._proc,), daemon=True, name="parse-server").start()
        return self._proc

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
                waiter = self._waiters.get(int(msg["id"]))
            except (ValueError, KeyError, TypeError):
                continue
            if waiter is not None:
                waiter.put(msg)
        with self._lock:  # the server is gone: wake everyone waiting on it
            for waiter in self._waiters.values():
                waiter.put({"gone": True})

    def run(self, request: Path, wall_seconds: float) -> tuple[int, bool]:
        rid = next(self._ids)
        answers: queue.Queue[dict[str, Any]] = queue.Queue()
        with self._lock:
            try:
                proc = self._ensure()
                self._waiters[rid] = answers
                assert proc.stdin is not None
                proc.stdin.write(json.dumps({"id": rid, "request": str(request)}).encode() + b"\n")
                proc.stdin.flush()
            except (OSError, ValueError) as e:
                self._waiters.pop(rid, None)
                raise _ServerGone() from e
        try:
            started = answers.get(timeout=30)
            if "pid" not in started:
                raise _ServerGone()
            timed_out = False
            try:
                done = answers.get(timeout=wall_seconds)
            except queue.Empty:
                timed_out = True
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(started["pid"]), signal.SIGKILL)
                done = answers.get(timeout=30)
            if "status" not in done:
                raise _ServerGone()
            return os.waitstatus_to_exitcode(int(done["status"])), timed_out
        except queue.Empty:
            raise _ServerGone() from None
        finally:
            with self._lock:
                self._waiters.pop(rid, None)


_SERVER = _ParseServer()


def _serve() -> int:
    """The parse server: preload the parser, then fork one limited child per request line."""
    import select

    import mergetune.core.checkpoints.ingest  # noqa: F401 - imported once here, inherited by every child

    stdin, stdout = sys.stdin.fileno(), sys.stdout.buffer
    children: dict[int, int] = {}
    pending = b""
    while True:
        while children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            rid = children.pop(pid, None)
            if rid is not None:
                stdout.write(json.dumps({"id": rid, "status": status}).encode() + b"\n")
                stdout.flush()
        readable, _, _ = select.select([stdin], [], [], 0.01 if children else 1.0)
        if not readable:
            continue
        chunk = os.read(stdin, 1 << 16)
        if not chunk:  # the API process is gone: so are its parses
            for pid in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return 0
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            msg = json.loads(line)
            pid = os.fork()
            if pid == 0:  # the child: no access to the server's pipes, its own session
                code = 1
                try:
                    devnull = os.open(os.devnull, os.O_RDWR)
                    for fd in (0, 1, 2):
                        os.dup2(devnull, fd)
                    os.setsid()
                    code = _child(str(msg["request"]))
                except MemoryError:
                    code = _EXIT_MEMORY
                finally:
                    os._exit(code)
            children[pid] = int(msg["id"])
            stdout.write(json.dumps({"id": msg["id"], "pid": pid}).encode() + b"\n")
            stdout.flush()


# ----------------------------------------------------------------------------------------------------
# the child


def _limit_self(memory_bytes: int, cpu_seconds: int, fsize_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_bytes, fsize_bytes))


def _child(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    out = Path(request["out"])
    if request.get("task") == "archive":
        archive = ArchiveLimits(**request["archive"])
        fsize = archive.max_member_bytes + (16 << 20)
    else:
        parse = ParseLimits(**request["parse"])
        fsize = parse.max_total_bytes + (16 << 20)
    _limit_self(request["memory_bytes"], request["cpu_seconds"], fsize)
    # the reply is opened before the work so that a MemoryError can still be reported
    reply = open(out / "result.part", "w")  # noqa: SIM115
    try:
        if request.get("task") == "archive":
            payload = _unpack(request, archive, out)
        elif request.get("task") == "weights":  # an uploaded backbone weights file: its summary
            from mergetune.core.checkpoints.weights_file import scan_weights

            payload = {"ok": scan_weights(request["path"], parse)}
        else:
            payload = _parse(request, parse, out)
    except MemoryError:
        payload = {
            "error": {"code": "too_large", "message": "parsing the file needs more memory than allowed"}
        }
    except CheckpointError as e:
        payload = {"error": {"code": e.code, "message": e.message}}
    except Exception as e:  # noqa: BLE001 - any other failure on a hostile file is a refusal
        what, code = {
            "archive": ("archive", "malformed_archive"),
            "weights": ("weights file", "not_weights"),
        }.get(request.get("task"), ("checkpoint", "not_a_checkpoint"))
        payload = {"error": {"code": code, "message": f"could not read the {what}: {type(e).__name__}"}}
    payload["peak_rss_bytes"] = _peak_rss()
    try:
        reply.write(json.dumps(payload))
        reply.close()
    except MemoryError:
        return _EXIT_MEMORY
    os.replace(out / "result.part", out / "result.json")
    return 0


def _peak_rss() -> int:
    """This process's peak resident set (VmHWM; ru_maxrss would include the parent's before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _parse(request: dict[str, Any], parse: ParseLimits, out: Path) -> dict[str, Any]:
    from mergetune.core.checkpoints.ingest import ingest_checkpoint

    method = Method(request["method"]) if request["method"] else None
    ck = ingest_checkpoint(
        request["path"],
        filename=request["filename"],
        method=method,
        expected_dim=request["expected_dim"],
        n_cls=request["n_cls"],
        limits=parse,
    )
    for name in _ARRAYS:
        arr = getattr(ck, name)
        if arr is not None:
            np.save(out / f"{name}.npy", np.ascontiguousarray(arr, dtype=np.float32), allow_pickle=False)
    if ck.adapters:
        arrays: dict[str, Any] = {
            k: np.ascontiguousarray(v, dtype=np.float32) for k, v in ck.adapters.items()
        }
        np.savez(out / "adapters.npz", **arrays)
    ck.keys = ck.keys[:1000]
    skip = (*_ARRAYS, "adapters")
    info = {f.name: _to_json(getattr(ck, f.name)) for f in fields(ck) if f.name not in skip}
    return {"ok": json.loads(json.dumps(info, default=str))}


def _unpack(request: dict[str, Any], archive: ArchiveLimits, out: Path) -> dict[str, Any]:
    from mergetune.core.checkpoints.archive import unpack_tree

    checkpoints = unpack_tree(Path(request["path"]), out, archive)
    return {"ok": {"checkpoints": [ck.to_json() for ck in checkpoints]}}


def _to_json(value: Any) -> Any:
    """Plain JSON; enums of mergetune.core.config travel as {"__enum__": name, "value": value}."""
    if isinstance(value, Enum):
        return {"__enum__": type(value).__name__, "value": value.value}
    return value


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"__enum__", "value"}:
        enum = getattr(core_config, str(value["__enum__"]), None)
        if not (isinstance(enum, type) and issubclass(enum, Enum)):
            raise _err("the parser returned an unknown value", "not_a_checkpoint")
        return enum(value["value"])
    return value


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        sys.exit(_serve())
    try:
        sys.exit(_child(sys.argv[1]))
    except MemoryError:
        sys.exit(_EXIT_MEMORY)
