"""The optional object store of docker-compose.yml (profile ``s3``) and its override docker/compose.s3.yml:
the service is built from a local stand-in Dockerfile, nothing in the default stack needs it, and the
override points the API, the reconciler and the worker at it. The stand-in's entrypoint is run here as
the container would run it (moto's server on a free port) and the service's own store speaks to it
with the settings the override gives."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def override():
    return yaml.safe_load((REPO / "docker/compose.s3.yml").read_text())


def test_the_object_store_is_optional_and_built_from_a_stand_in(compose):
    services = compose["services"]
    store = services["objectstore"]
    assert store["profiles"] == ["s3"]
    assert store["build"]["context"] == "docker/standins"
    assert store["build"]["args"] == {"PYTHON_IMAGE": "${PYTHON_IMAGE:-python:3.11-slim-bookworm}"}
    dockerfile = (REPO / store["build"]["context"] / store["build"]["dockerfile"]).read_text()
    assert "ARG PYTHON_IMAGE=python:3.11-slim-bookworm" in dockerfile and "moto[server]" in dockerfile
    assert "COPY --chmod=0755 objectstore-entrypoint.sh " in dockerfile
    assert 'ENTRYPOINT ["objectstore-entrypoint.sh"]' in dockerfile
    assert store["ports"] == ["${MERGETUNE_S3_PORT:-9000}:9000"]
    assert store["environment"]["OBJECTSTORE_PORT"] == "9000"
    assert "9000/mergetune" in " ".join(store["healthcheck"]["test"])
    # the default stack (no profile) never waits for it
    for name, svc in services.items():
        assert "objectstore" not in (svc.get("depends_on") or {}), name
    script = REPO / "docker/standins/objectstore-entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0 and os.access(script, os.X_OK)


def test_the_override_points_every_service_at_it(compose, override):
    store = compose["services"]["objectstore"]["environment"]
    envs = {name: svc["environment"] for name, svc in override["services"].items()}
    assert set(envs) == {"api", "reconciler", "worker-gpu0"} <= set(compose["services"])
    assert all(env == envs["api"] for env in envs.values())  # one bucket, one endpoint for all
    env = envs["api"]
    artifacts = urlparse(env["MERGETUNE_ARTIFACT_URL"])
    assert artifacts.scheme == "s3" and artifacts.netloc in store["OBJECTSTORE_BUCKETS"].split()
    endpoint = urlparse(env["MERGETUNE_S3_ENDPOINT_URL"])
    assert (endpoint.hostname, str(endpoint.port)) == ("objectstore", store["OBJECTSTORE_PORT"])
    for key in ("MERGETUNE_S3_REGION", "MERGETUNE_S3_ACCESS_KEY_ID", "MERGETUNE_S3_SECRET_ACCESS_KEY"):
        assert env[key]
    for name in ("api", "worker-gpu0"):
        assert override["services"][name]["depends_on"]["objectstore"]["condition"] == "service_healthy"


def test_the_stand_in_serves_the_overrides_bucket(compose, override, tmp_path):
    import s3_support

    from mergetune.common.settings import Settings
    from mergetune.common.storage import store_from_url

    port = s3_support.free_port()
    env = override["services"]["api"]["environment"]
    store_env = compose["services"]["objectstore"]["environment"]
    proc = subprocess.Popen(
        ["sh", str(REPO / "docker/standins/objectstore-entrypoint.sh")],
        env={
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
            "OBJECTSTORE_HOST": "127.0.0.1",
            "OBJECTSTORE_PORT": str(port),
            "OBJECTSTORE_BUCKETS": store_env["OBJECTSTORE_BUCKETS"],
        },
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        ready = f"objectstore: bucket {store_env['OBJECTSTORE_BUCKETS']} ready on port {port}"
        deadline, seen = time.monotonic() + 180, ""
        assert proc.stdout is not None
        while ready not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                pytest.fail(f"the stand-in's bucket was not ready: {seen[-2000:]}")
            if select.select([proc.stdout], [], [], min(left, 1.0))[0]:
                seen += proc.stdout.readline()
        s = Settings(
            HOME=tmp_path,
            ARTIFACT_URL=env["MERGETUNE_ARTIFACT_URL"],
            S3_ENDPOINT_URL=env["MERGETUNE_S3_ENDPOINT_URL"].replace("objectstore:9000", f"127.0.0.1:{port}"),
            S3_REGION=env["MERGETUNE_S3_REGION"],
            S3_ACCESS_KEY_ID=env["MERGETUNE_S3_ACCESS_KEY_ID"],
            S3_SECRET_ACCESS_KEY=env["MERGETUNE_S3_SECRET_ACCESS_KEY"],
        )
        store = store_from_url(
            s.ARTIFACT_URL,
            endpoint_url=s.S3_ENDPOINT_URL,
            region_name=s.S3_REGION,
            access_key_id=s.S3_ACCESS_KEY_ID,
            secret_access_key=s.S3_SECRET_ACCESS_KEY,
        )
        store.put_bytes("weights/p/abc.pt", b"weights bytes")  # no bucket to create: it is there
        assert store.get_bytes("weights/p/abc.pt") == b"weights bytes"
        assert store.list("weights/") == ["weights/p/abc.pt"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
