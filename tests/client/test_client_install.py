"""The client installs alone: a fresh virtualenv (no system site-packages) with ``pip install ./client``
and its three dependencies imports ``mergetune.Client``, runs the ``mergetune`` command's client groups,
and has neither the server's packages, its operator commands nor torch."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env = {k: v for k, v in env.items() if not k.startswith("MERGETUNE_")}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_client_installs_and_runs_without_the_server(tmp_path):
    source = tmp_path / "client"  # a copy: building in place would leave build/ and egg-info in the tree
    shutil.copytree(
        REPO / "client", source, ignore=shutil.ignore_patterns("__pycache__", "build", "*.egg-info")
    )
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py, mergetune = str(venv / "bin" / "python"), str(venv / "bin" / "mergetune")
    out = _run([py, "-m", "pip", "install", "-q", "--no-deps", str(source)], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    out = _run([py, "-m", "pip", "install", "-q", "httpx", "typer", "rich"], tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr

    out = _run(
        [py, "-c", "import mergetune; print(mergetune.Client.__name__, mergetune.AsyncClient.__name__)"],
        tmp_path,
    )
    assert out.returncode == 0 and out.stdout.split() == ["Client", "AsyncClient"], out.stderr
    assert str(REPO) not in _run([py, "-c", "import mergetune; print(mergetune.__file__)"], tmp_path).stdout

    out = _run([mergetune, "--help"], tmp_path)
    assert out.returncode == 0, out.stderr
    words = {w.strip("│") for w in out.stdout.split()}
    assert {"upload", "dataset", "job", "download", "sweep"} <= words, out.stdout
    assert not words & {"serve", "worker", "migrate", "reconcile", "token"}, out.stdout

    out = _run([mergetune, "job", "list"], tmp_path)  # the client's commands run, errors are one line
    assert out.returncode == 1 and out.stderr.startswith("error: no token"), out.stderr

    for server_part in ("mergetune.core", "mergetune.api", "mergetune.common", "mergetune.ops", "torch"):
        out = _run([py, "-c", f"import {server_part}"], tmp_path)
        assert out.returncode != 0 and "ModuleNotFoundError" in out.stderr, (server_part, out.stderr)
