"""The README's walk-through, executed as written: every ```bash block whose first line is a
``# readme-test`` comment runs, in order, in one bash (``set -eo pipefail``) from a folder that looks like
the repository root (``.venv`` and ``scripts`` linked), with only the port changed from 8000 to a free one.
A command that fails, a job that does not succeed or an artifact that is not downloaded fails the test."""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest
import worker_support as ws

pytestmark = pytest.mark.slow

README = ws.REPO / "README.md"
BLOCK = re.compile(r"^```bash\n(# readme-test[^\n]*\n.*?)^```$", re.S | re.M)


def readme_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_the_readme_marks_its_walk_through():
    blocks = readme_blocks()
    assert len(blocks) >= 2
    joined = "\n".join(blocks)
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
        finally:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the server, if the script stopped before `kill $SERVER`
            except ProcessLookupError:
                pass
    text = log.read_text(errors="replace")
    assert rc == 0, text[-6000:]
    assert (root / "prompts.safetensors").stat().st_size > 0
    got = {p.name for p in (root / "recovered").iterdir()}
    assert {"prompts.safetensors", "prompts.pth.tar", "report.json", "report.html", "curves.png"} <= got, got
    assert "true" in text  # jq -e '.status == "succeeded"'
