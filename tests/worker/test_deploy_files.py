"""docker-compose.yml and docker/: what can be checked without a container engine."""

from __future__ import annotations

import shutil
import subprocess
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


def test_dockerfiles():
    api = (REPO / "docker/api.Dockerfile").read_text()
    worker = (REPO / "docker/worker.Dockerfile").read_text()
    assert "ml.txt" not in api and "[ml" not in api and "download.pytorch.org" not in api  # no torch
    assert 'ENTRYPOINT ["/usr/local/bin/prestart.sh"]' in api
    assert "requirements/ml.txt" in worker and "python -m worker" in worker
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
