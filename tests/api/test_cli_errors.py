"""The real ``mergetune`` command (a subprocess) on the mistakes people make: each is one line on stderr
and a non-zero exit, never a traceback; ``--debug`` shows the traceback; ``token create`` never makes a
new database silently; a failed download leaves nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from api_support import free_port, new_token

REPO = Path(__file__).resolve().parents[2]


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGETUNE_")}
    env.update(PYTHONPATH=str(REPO), XDG_STATE_HOME=str(tmp_path / "state"), OMP_NUM_THREADS="1", **extra)
    return env


def mt(env: dict[str, str], *args: str, cwd: Path | None = None, timeout: float = 60) -> Any:
    return subprocess.run(
        [sys.executable, "-m", "mergetune.cli", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def one_line_error(out: Any) -> str:
    assert out.returncode != 0, out
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("error: "), out.stderr
    return lines[0]


def test_local_mistakes_are_one_line_and_debug_shows_the_traceback(tmp_path):
    env = _env(tmp_path, MERGETUNE_TOKEN="mt_x", MERGETUNE_URL=f"http://127.0.0.1:{free_port()}")

    line = one_line_error(mt(env, "upload", str(tmp_path / "missing.pth.tar")))
    assert "missing.pth.tar" in line and "no such file" in line

    line = one_line_error(mt(env, "upload", str(tmp_path)))
    assert "is a directory" in line

    line = one_line_error(
        mt(env, "dataset", "create", "--name", "d", "--kind", "builtin", "--options", "{bad")
    )
    assert "--options" in line and "not valid JSON" in line
    line = one_line_error(
        mt(env, "job", "create", "--checkpoint", "c", "--dataset", "d", "--hyperparameters", "[1]")
    )
    assert "--hyperparameters" in line and "JSON object" in line

    # nothing listens on that port: one line naming the URL, not 70 lines of httpx internals
    line = one_line_error(mt(env, "job", "get", "job_x"))
    assert "cannot connect to http://127.0.0.1:" in line and "connection refused" in line

    debug = mt(env, "job", "get", "job_x", "--debug")
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "ConnectError" in debug.stderr

    env_no_token = {k: v for k, v in env.items() if k != "MERGETUNE_TOKEN"}
    assert "no token" in one_line_error(mt(env_no_token, "job", "list"))


def test_version_and_help_on_every_option():
    env = _env(Path("/nonexistent"))
    out = mt(env, "--version")
    assert out.returncode == 0 and out.stdout.strip().startswith("mergetune ")

    out = mt(env, "job", "--help")
    listed = {line.strip("│ ").split()[0] for line in out.stdout.splitlines() if line.strip("│ ")}
    assert {"create", "wait", "get", "cancel", "events", "list"} <= listed, out.stdout

    # every option and argument of every command has a help text
    from typer.main import get_command

    from mergetune.cli import build_app

    missing = []

    def walk(cmd: Any, path: str) -> None:
        for name, child in getattr(cmd, "commands", {}).items():
            walk(child, f"{path} {name}")
        missing.extend(f"{path} {p.name}" for p in cmd.params if not getattr(p, "help", None))

    walk(get_command(build_app()), "mergetune")
    assert missing == []
    out = mt(env, "job", "wait", "--help")
    assert "poll interval" in out.stdout and "seconds" in out.stdout


def test_http_errors_name_the_field_and_a_failed_download_leaves_nothing(
    tmp_path, settings, live_url, client
):
    token = new_token(settings.DATABASE_URL)
    env = _env(tmp_path, MERGETUNE_TOKEN=token, MERGETUNE_URL=live_url)

    out = mt(
        env, "dataset", "create", "--name", "d", "--kind", "builtin", "--options", '{"num_classes": "six"}'
    )
    line = one_line_error(out)
    assert "field: options" in line and "HTTP 422" in line

    line = one_line_error(mt(env, "job", "get", "job_doesnotexist"))
    assert "HTTP 404" in line

    out_dir = tmp_path / "downloads" / "job"
    line = one_line_error(mt(env, "download", "job_doesnotexist", "--out", str(out_dir)))
    assert not (tmp_path / "downloads").exists()
    line = one_line_error(
        mt(env, "download", "job_doesnotexist", "--name", "report.json", "--out", str(out_dir))
    )
    assert "HTTP 404" in line
    assert not (tmp_path / "downloads").exists(), list((tmp_path / "downloads").rglob("*"))


@pytest.mark.slow
def test_token_create_finds_the_running_server_or_needs_init(tmp_path):
    """Run in another folder, ``token create`` used to make a fresh database there and print a token the
    server refused. Now it uses the running server's home, or refuses (and creates nothing)."""
    server_home = tmp_path / "server-home"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = _env(tmp_path)
    port = free_port()
    server_env = {**env, "MERGETUNE_HOME": str(server_home), "MERGETUNE_LOG_LEVEL": "WARNING"}

    # no server: a clear refusal, and no database appears
    line = one_line_error(mt(env, "token", "create", "--project", "p", cwd=elsewhere))
    assert "no database" in line and "--init" in line
    assert list(elsewhere.iterdir()) == []

    assert mt(server_env, "migrate").returncode == 0
    log = (tmp_path / "serve.log").open("wb")
    server = subprocess.Popen(
        [sys.executable, "-m", "mergetune.cli", "serve", "--port", str(port)],
        cwd=REPO,
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.2)

        out = mt(env, "token", "create", "--project", "p", cwd=elsewhere)
        assert out.returncode == 0, out.stderr
        assert str(server_home.resolve()) in out.stderr
        token = out.stdout.strip().splitlines()[-1]
        r = httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 200, r.text
        assert list(elsewhere.iterdir()) == []
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

    # the record goes with the server; --init is the explicit way to start a new database here
    assert list((tmp_path / "state" / "mergetune" / "servers").glob("*.json")) == []
    out = mt(env, "token", "create", "--project", "p", "--init", cwd=elsewhere)
    assert out.returncode == 0, out.stderr
    assert (elsewhere / ".mergetune" / "mergetune.db").is_file()
    listed = mt(env, "token", "list", "--json", cwd=elsewhere)
    assert [t["project"] for t in json.loads(listed.stdout)["data"]] == ["p"]
