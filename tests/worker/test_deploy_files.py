"""docker-compose.yml and docker/: what can be checked without a container engine. The stack itself is
built and run by `make compose-test` (scripts/compose-test.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_services_and_gpu_reservation(compose):
    assert "name" not in compose  # Debian's docker-compose 1.29 rejects a top-level name
    services = compose["services"]
    assert {"postgres", "redis", "api", "worker-gpu0", "flower"} <= set(services)
    assert services["flower"]["profiles"] == ["monitoring"]
    worker = services["worker-gpu0"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert worker["environment"]["MERGETUNE_WORKER_CONCURRENCY"] == "1"
    assert worker["depends_on"]["api"]["condition"] == "service_healthy"
    api = services["api"]
    assert api["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert api["depends_on"]["postgres"]["condition"] == "service_healthy"
    # both processes agree on the database, broker and artifact location
    for key in ("MERGETUNE_DATABASE_URL", "MERGETUNE_BROKER_URL", "MERGETUNE_ARTIFACT_URL"):
        assert api["environment"][key] == worker["environment"][key]
    assert int(api["environment"]["MERGETUNE_VISIBILITY_TIMEOUT"]) >= 86400
    # the standard images stay the defaults; compose-test swaps in local stand-ins through these variables
    assert services["postgres"]["image"] == "${POSTGRES_IMAGE:-postgres:15-bookworm}"
    assert services["redis"]["image"] == "${REDIS_IMAGE:-redis:7-bookworm}"
    assert api["build"]["args"] == {"PYTHON_IMAGE": "${PYTHON_IMAGE:-python:3.11-slim-bookworm}"}
    assert worker["build"]["args"] == {
        "PYTHON_IMAGE": "${PYTHON_IMAGE:-python:3.11-slim-bookworm}",
        "TORCH_INDEX": "${TORCH_INDEX:-https://download.pytorch.org/whl/cu130}",
        "TORCH_WHEELS": "${TORCH_WHEELS:-}",
    }
    assert worker["environment"]["MERGETUNE_DEVICE"] == "cuda"
    # services running the api image (e.g. the reconciler) need no GPU
    for name, svc in services.items():
        if svc.get("image") == "mergetune-api:latest":
            assert "deploy" not in svc, name
    # the reconciler: the API image (no torch), the same database and broker, after migrations
    rec = services["reconciler"]
    assert (
        rec["image"] == api["image"]
        and rec["entrypoint"] == ["mergetune"]
        and rec["command"] == ["reconcile"]
    )
    assert rec["depends_on"]["api"]["condition"] == "service_healthy"
    for key in ("MERGETUNE_DATABASE_URL", "MERGETUNE_BROKER_URL"):
        assert rec["environment"][key] == api["environment"][key]


class _ComposeLoader(yaml.SafeLoader):
    pass


_ComposeLoader.add_constructor("!reset", lambda loader, node: "!reset")


def test_cpu_override_drops_the_gpu_reservation():
    cpu = yaml.load((REPO / "docker/compose.cpu.yml").read_text(), Loader=_ComposeLoader)
    worker = cpu["services"]["worker-gpu0"]
    assert worker["deploy"] == "!reset"
    assert worker["environment"]["MERGETUNE_DEVICE"] == "cpu"


def test_containers_conf_carries_the_host_workarounds():
    conf = tomllib.loads((REPO / "docker/containers.conf").read_text())
    assert conf["engine"]["runtime"] == "runc"
    assert conf["containers"]["default_ulimits"] == ["nofile=20000:20000", "nproc=32768:32768"]
    makefile = (REPO / "Makefile").read_text()
    assert "docker/containers.conf" in makefile and "scripts/compose-test.sh" in makefile


def test_compose_test_skips_clearly_without_an_engine(tmp_path):
    script = REPO / "scripts/compose-test.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    # a PATH with neither docker nor podman on it
    for tool in ("dirname", "date"):
        (tmp_path / tool).symlink_to(shutil.which(tool) or f"/usr/bin/{tool}")
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}
    out = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(script)], env=env, capture_output=True, text=True
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert "no container engine" in out.stdout
    out = subprocess.run(
        [shutil.which("bash") or "/bin/bash", str(script)],
        env={**env, "CT_SKIP_WITHOUT_ENGINE": "1"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0 and "compose-test: SKIPPED" in out.stdout
    assert os.access(script, os.X_OK)


def test_dockerfiles():
    api = (REPO / "docker/api.Dockerfile").read_text()
    worker = (REPO / "docker/worker.Dockerfile").read_text()
    assert "ml.txt" not in api and "[ml" not in api and "download.pytorch.org" not in api  # no torch
    assert 'ENTRYPOINT ["/usr/local/bin/prestart.sh"]' in api
    assert "requirements/ml.txt" in worker and "python -m worker" in worker
    # base image and torch source are build arguments; GPU (cu130) stays the default
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in api
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in worker
    assert "ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130" in worker
    assert "--mount=type=bind,source=docker/wheels,target=/wheels" in worker
    assert "pip install --no-index --find-links /wheels -r requirements/ml.txt" in worker
    assert (REPO / "docker/wheels").is_dir()  # the bind mount's source exists in every checkout
    for standin in ("postgres-entrypoint.sh", "redis-entrypoint.sh"):
        assert subprocess.run(["sh", "-n", str(REPO / "docker/standins" / standin)]).returncode == 0
    prestart = (REPO / "docker/prestart.sh").read_text()
    assert "alembic -c /app/alembic.ini upgrade head" in prestart and 'exec "$@"' in prestart
    assert subprocess.run(["sh", "-n", str(REPO / "docker/prestart.sh")]).returncode == 0


@pytest.mark.skipif(
    shutil.which("docker-compose") is None, reason="docker-compose (Debian 1.29) not installed"
)
def test_docker_compose_validates_the_file():
    out = subprocess.run(
        ["docker-compose", "-f", "docker-compose.yml", "config", "-q"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr
