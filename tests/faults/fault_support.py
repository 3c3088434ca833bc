"""Private servers for fault injection: a Postgres cluster (initdb + pg_ctl from the Postgres 15
binaries, in a temporary directory, on a spare port) and a redis-server without persistence on a spare
port. They are stopped and started by the tests (``pg_ctl stop -m immediate``, SIGKILL), never the
machine's shared servers."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "worker"))

import worker_support as ws  # noqa: E402

PG_BIN = Path(os.environ.get("MERGETUNE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _demote() -> Any:
    """initdb and postgres refuse to run as root: run them as the ``postgres`` user then."""
    if os.geteuid() != 0:
        return None, None
    pw = pwd.getpwnam("postgres")

    def preexec() -> None:
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return preexec, pw


class PrivatePostgres:
    def __init__(self) -> None:
        self.port = ws.free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mergetune-fault-pg-"))
        self.data = self.dir / "data"
        self.log = self.dir / "postgres.log"
        self.preexec, pw = _demote()
        if pw is not None:
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> None:
        out = subprocess.run(
            [str(PG_BIN / args[0]), *args[1:]],
            preexec_fn=self.preexec,  # noqa: PLW1509 - only the user switch, before exec
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.dir,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stderr}{out.stdout}")

    def init(self) -> PrivatePostgres:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8")
        return self

    def start(self) -> None:
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.dir} "
            "-c fsync=off -c full_page_writes=off -c max_connections=200 "
            "-c shared_buffers=32MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", opts, "-w", "-t", "60", "start")

    def stop_immediate(self) -> None:
        """Like a crash: no checkpoint, every connection cut."""
        self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")

    def destroy(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except RuntimeError:
            pass
        shutil.rmtree(self.dir, ignore_errors=True)

    def create_database(self, name: str) -> str:
        import psycopg

        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


class PrivateRedis:
    """redis-server without persistence: a restart loses every queued message."""

    def __init__(self) -> None:
        self.port = ws.free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="mergetune-fault-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server") or "redis-server"
        self.proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no"]
            + ["--dir", str(self.dir)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def destroy(self) -> None:
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.url)


class ReconcilerProcess:
    """``mergetune reconcile`` as the compose service runs it, with its own log file."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env, self.log_path = env, log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ReconcilerProcess:
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mergetune.cli", "reconcile"],
            cwd=ws.REPO,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        ws.terminate(self.proc, self._log, grace=10)
