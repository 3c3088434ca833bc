"""The flow through the ``mergetune`` CLI client against ``mergetune serve --embedded`` (SQLite, kombu
filesystem queue and a worker process, all state under $MERGETUNE_HOME) on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest
import worker_support as ws

pytestmark = pytest.mark.slow


def _cli(env, *args, timeout=180):
    out = subprocess.run(
        [sys.executable, "-m", "mergetune.cli", *args],
        cwd=ws.REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    return out


def test_cli_flow_against_embedded_server(tmp_path, checkpoint_file):
    home = tmp_path / "mthome"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MERGETUNE_")}
    env.update(
        MERGETUNE_HOME=str(home),
        MERGETUNE_LOG_LEVEL="INFO",
        OMP_NUM_THREADS="1",
        MKL_NUM_THREADS="1",
        PYTHONPATH=str(ws.REPO),
    )
    port = ws.free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    server = subprocess.Popen(
        [sys.executable, "-m", "mergetune.cli", "serve", "--embedded", "--port", str(port)],
        cwd=ws.REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:

        def up():
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(f"{url}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        ws.wait_for(up, 90, 0.3, "mergetune serve --embedded")
        token = ws.create_token(env, "cli")
        common = ["--url", url, "--token", token]

        out = _cli(env, "upload", str(checkpoint_file), "--name", "tiny", *common)
        assert out.returncode == 0, out.stderr
        ck = json.loads(out.stdout)
        assert ck["status"] == "ready" and ck["method"] == "coop"

        out = _cli(env, "dataset", "create", "--name", "b", "--kind", "builtin",
                   "--options", json.dumps(ws.TINY_DATASET_OPTIONS), *common)  # fmt: skip
        assert out.returncode == 0, out.stderr
        ds = json.loads(out.stdout)

        out = _cli(env, "job", "create", "--checkpoint", ck["id"], "--dataset", ds["id"], "--model", "tiny-test",
                   "--pretrained", "random", "--hp", "epochs=2", "--hp", "batch_size=4", "--hp", "shots=4", *common)  # fmt: skip
        assert out.returncode == 0, out.stderr
        job = json.loads(out.stdout)
        assert job["status"] == "queued" and job["hyperparameters"]["epochs"] == 2

        out = _cli(env, "job", "wait", job["id"], "--interval", "0.3", "--wait-timeout", "150", *common)
        assert out.returncode == 0, (out.stdout, out.stderr, (tmp_path / "serve.log").read_text()[-4000:])
        done = json.loads(out.stdout)
        assert done["status"] == "succeeded" and "100.0%" in out.stderr  # the progress bar reached the end
        # the last line a person sees is the verdict, the same as the API's and the report's
        assert out.stderr.strip().splitlines()[-1] == done["verdict"]["text"]
        assert done["verdict"]["text"].startswith("Recovered HM ")

        out = _cli(env, "download", job["id"], "--out", str(tmp_path / "dl"), *common)
        assert out.returncode == 0, out.stderr
        names = {p.name for p in (tmp_path / "dl").rglob("*") if p.is_file()}
        assert {"prompts.safetensors", "prompts.pth.tar", "report.json", "manifest.json"} <= names
        report = json.loads(next((tmp_path / "dl").rglob("report.json")).read_text())
        assert report["metrics"] == done["metrics"] and report["verdict"] == done["verdict"]
        # embedded: everything lives under $MERGETUNE_HOME
        assert (home / "mergetune.db").exists() and (home / "queue").is_dir()
        assert any((home / "artifacts" / "jobs" / job["id"]).iterdir())
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
