"""Jobs on datasets with their own credentials, run by real Celery workers against an S3-protocol server
that enforces access keys and bucket policies (moto's server with IAM checks on). The service's own
identity may read neither team's bucket, so a job that succeeds read its images with the dataset's
credentials, which the worker opened with MERGETUNE_SECRET_KEY. Both buckets hold the same keys and
bytes: the cache keeps one entry set per bucket. A worker without the key fails the job naming it."""

from __future__ import annotations

import json

import pytest
import s3_iam_support as iam
import s3_support as s3
import worker_support as ws
from cryptography.fernet import Fernet
from pydantic import SecretStr

from mergetune.common import secrets
from mergetune.common.db import session_scope
from mergetune.common.models import Dataset
from mergetune.common.queue import enqueue_job
from mergetune.common.remote import S3DatasetSource, S3Inputs
from mergetune.core.data import base_to_novel
from mergetune.core.data.remote import open_listed_dataset

pytestmark = pytest.mark.slow

NEW_KEY = Fernet.generate_key().decode()
OLD_KEY = Fernet.generate_key().decode()


def _register(url: str, project: str, endpoint: str, team: iam.Team, sealed_with: object) -> str:
    """What POST /v1/datasets stores for ``s3://<team bucket>/coop/eurosat`` with the team's keys."""
    creds = team.credentials(region="us-east-1")
    source = S3DatasetSource(
        S3Inputs(credentials={**creds, "endpoint_url": endpoint}), f"s3://{team.bucket}/coop/eurosat"
    )
    ds = open_listed_dataset("coop", source, name=source.name, shown=source.url)
    task = base_to_novel(ds, 1, 1)
    with session_scope(url) as s:
        row = Dataset(
            project_id=project,
            name=f"eurosat of {team.user}",
            kind="coop",
            path=source.url,
            coop_name=ds.name,
            num_classes=ds.num_classes,
            classnames=list(ds.classnames),
            base_classes=list(task.base_classnames),
            novel_classes=list(task.novel_classnames),
            split_sizes={k: len(v) for k, v in ds.splits.items()},
            template=ds.template,
            sha256_of_split=ds.split_sha256(),
            credentials_sealed=secrets.seal(sealed_with, creds),
            credentials_hint=secrets.mask(team.access_key_id),
        )
        s.add(row)
        s.flush()
        return row.id


def _env(wsettings, home, endpoint, service: iam.Team, secret_key: str | None):
    env = ws.settings_env(wsettings)
    env.update(
        MERGETUNE_HOME=str(home),
        MERGETUNE_S3_ENDPOINT_URL=endpoint,
        MERGETUNE_S3_ACCESS_KEY_ID=service.access_key_id,  # may read neither team's bucket
        MERGETUNE_S3_SECRET_ACCESS_KEY=service.secret_access_key,
        MERGETUNE_S3_REGION="us-east-1",
    )
    if secret_key is not None:
        env["MERGETUNE_SECRET_KEY"] = secret_key
    return env


def _reports_key(url: str, host: str) -> object:
    from mergetune.common.models import WorkerHeartbeat

    def report() -> object:
        with session_scope(url) as s:
            row = s.get(WorkerHeartbeat, host)
            weights = (row.info or {}).get("weights") if row is not None else None
            return weights.get("secret_key") if isinstance(weights, dict) else None

    ws.wait_for(lambda: report() is not None, 30, 0.2, f"{host}'s report")
    return report()


def _finished(url: str, job_id: str) -> dict:
    ws.wait_for(lambda: ws.job_row(url, job_id)["status"] in ("succeeded", "failed"), 240, 0.2, job_id)
    return ws.job_row(url, job_id)


def test_jobs_read_each_teams_bucket_with_its_own_credentials(tmp_path, wsettings, store):
    url = wsettings.DATABASE_URL
    files = s3.eurosat_files()
    teams = {"service": ["service-only"], "team-a": ["bucket-a"], "team-b": ["bucket-b"]}
    trees = {"bucket-a/coop/eurosat": files, "bucket-b/coop/eurosat": files}  # the same keys and bytes
    with iam.enforcing_server(teams, trees) as (endpoint, users):
        old = wsettings.model_copy(update={"SECRET_KEY": SecretStr(OLD_KEY)})
        project = ws.make_project(url)
        ck = ws.make_checkpoint(url, store, project, ws.tiny_ctx())
        ds_a = _register(url, project, endpoint, users["team-a"], old)  # sealed before a key rotation
        ds_b = _register(url, project, endpoint, users["team-b"], old)
        home = tmp_path / "node"
        # the key was rotated: the new one seals, the old one (second) still opens
        env = _env(wsettings, home, endpoint, users["service"], f"{NEW_KEY},{OLD_KEY}")
        worker = ws.WorkerProcess(env, tmp_path / "w.log", nodename="keyed@test").start()
        try:
            jobs = [ws.make_job(url, project, ck, ds, epochs=1, batch_size=4, shots=2) for ds in (ds_a, ds_b)]
            for job_id in jobs:
                enqueue_job(wsettings, job_id)
            for job_id in jobs:
                job = _finished(url, job_id)
                assert job["status"] == "succeeded", (job["error"], worker.log()[-3000:])
            assert _reports_key(url, "keyed@test") is True  # what the API's creation check reads
        finally:
            worker.stop()
        # the secrets are nowhere a user or operator reads: the worker's log, events, job rows, artifacts
        seen = [worker.log()]
        for job_id in jobs:
            seen += [
                json.dumps(ws.events(url, job_id), default=str),
                json.dumps(ws.job_row(url, job_id), default=str),
            ]
            for art in ws.artifacts(url, job_id):
                seen.append(store.get_bytes(art["key"]).decode("latin-1"))
        assert len(seen) > 5
        for team in users.values():
            assert not any(team.secret_access_key in text for text in seen)

        cached = sorted(p.name for p in (home / "cache" / "objects").glob("scoped-*-etag-*.png"))
        scopes = {name.split("-")[1] for name in cached}
        assert len(scopes) == 2  # one entry set per bucket, never shared
        per_scope = [sorted(n.split("-", 2)[2] for n in cached if n.split("-")[1] == sc) for sc in scopes]
        assert per_scope[0] and len(per_scope[0]) == len(per_scope[1])
        assert not list((home / "cache" / "objects").glob("etag-*"))  # nothing under unscoped names

        # a worker without MERGETUNE_SECRET_KEY fails the job, naming the setting (no retry)
        keyless_env = _env(wsettings, tmp_path / "keyless", endpoint, users["service"], None)
        keyless = ws.WorkerProcess(keyless_env, tmp_path / "k.log", nodename="keyless@test").start()
        try:
            job_id = ws.make_job(url, project, ck, ds_a, epochs=1, batch_size=4, shots=2)
            enqueue_job(wsettings, job_id)
            job = _finished(url, job_id)
            assert _reports_key(url, "keyless@test") is False
        finally:
            keyless.stop()
        assert job["status"] == "failed", keyless.log()[-3000:]
        assert job["error"]["code"] == "secret_key_missing"
        assert "MERGETUNE_SECRET_KEY" in job["error"]["message"]
        assert job["attempts"] == 1
