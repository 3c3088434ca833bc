"""The README's example and the walk-through of docs/USAGE.md, executed as written: every ```bash block
whose first line is a ``# readme-test`` comment runs, README.md's first, then docs/USAGE.md's, each file's
in order, in one bash (``set -eo pipefail``) from a folder that looks like the repository root (``.venv``
and ``scripts`` linked), with only the port changed from 8000 to a free one. A command that fails, a job
that does not succeed or an artifact that is not downloaded fails the test."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import worker_support as ws

pytestmark = pytest.mark.slow

README = ws.REPO / "README.md"
USAGE = ws.REPO / "docs" / "USAGE.md"
#: The files whose marked blocks run, in this order (the README's short example, then the walk-through).
SOURCES = (README, USAGE)
BLOCK = re.compile(r"^```bash\n(# readme-test[^\n]*\n.*?)^```$", re.S | re.M)


def blocks_of(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text(encoding="utf-8"))


def readme_blocks() -> list[str]:
    return [block for path in SOURCES for block in blocks_of(path)]


def test_the_readme_marks_its_walk_through():
    # The README's own example: a server, an upload, a job and a download through REST, stopped after.
    short = "\n".join(blocks_of(README))
    for must in ("mergetune serve --embedded", "token create", "/v1/checkpoints", "/v1/datasets", "/v1/jobs",
                 "artifacts/prompts.safetensors", "kill $SERVER"):  # fmt: skip
        assert must in short, must
    # The walk-through: REST (with every page of events) and the CLI.
    walk = blocks_of(USAGE)
    assert len(walk) >= 2
    joined = "\n".join(walk)
    for must in ("mergetune serve --embedded", "token create", "/v1/checkpoints", "/v1/jobs", "events",
                 "next_cursor", "mergetune upload", "mergetune job wait", "mergetune download"):  # fmt: skip
        assert must in joined, must


def test_the_readme_walk_through_runs_as_written(tmp_path):
    port = ws.free_port()
    script = "set -eo pipefail\n" + "\n".join(readme_blocks())
    script = script.replace("127.0.0.1:8000", f"127.0.0.1:{port}").replace("--port 8000", f"--port {port}")
    root = tmp_path / "repo"
    root.mkdir()
    for name in (".venv", "scripts"):
        (root / name).symlink_to(ws.REPO / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGETUNE_")}
    env.update(XDG_STATE_HOME=str(tmp_path / "state"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MERGETUNE_LOG_LEVEL="WARNING")  # fmt: skip
    log = tmp_path / "readme.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=root,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            rc = proc.wait(timeout=400)
        except subprocess.TimeoutExpired:
            rc = None  # reported below with the log's tail
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the server, if the script stopped before `kill $SERVER`
            except ProcessLookupError:
                pass
    text = log.read_text(errors="replace")
    assert rc == 0, f"exit status {rc} (None: still running after 400 s)\n{text[-6000:]}"
    assert (root / "prompts.safetensors").stat().st_size > 0
    got = {p.name for p in (root / "recovered").iterdir()}
    assert {"prompts.safetensors", "prompts.pth.tar", "report.json", "report.html", "curves.png"} <= got, got
    assert "true" in text  # jq -e '.status == "succeeded"'
