"""Datasets in a team's own bucket, read with the team's own credentials: a real S3-protocol server that
enforces access keys and per-user bucket policies (moto's server with IAM checks on), where the
service's own identity may read none of the teams' buckets. A registration that succeeds therefore
proves the given credentials were used; the stored form is ciphertext (the secret's bytes are
searched for in the answers and in the database column)."""

from __future__ import annotations

import logging
import os

import pytest
import s3_iam_support as iam
import s3_support as s3
from cryptography.fernet import Fernet
from pydantic import SecretStr
from sqlalchemy import text

from mergetune.common import secrets
from mergetune.common.db import session_scope

KEY = Fernet.generate_key().decode()
OLD_KEY = Fernet.generate_key().decode()


@pytest.fixture(scope="module")
def store():
    teams = {
        "service": ["service-only"],
        "team-a": ["bucket-a"],
        "team-a2": ["bucket-a"],
        "team-b": ["bucket-b"],
    }
    trees = {"bucket-a/coop/eurosat": s3.eurosat_files(), "bucket-b/pets": s3.imagefolder_files()}
    with iam.enforcing_server(teams, trees) as (endpoint, users):
        yield endpoint, users


@pytest.fixture
def api(make_client, store):
    endpoint, users = store
    service = users["service"]
    return make_client(
        S3_ENDPOINT_URL=endpoint,
        S3_REGION="us-east-1",
        S3_ACCESS_KEY_ID=service.access_key_id,
        S3_SECRET_ACCESS_KEY=service.secret_access_key,
        SECRET_KEY=SecretStr(KEY),
    )


def _post(client, auth, credentials=None, path="s3://bucket-a/coop/eurosat", kind="coop"):
    body = {"name": "team-a eurosat", "kind": kind, "path": path}
    if credentials is not None:
        body["credentials"] = credentials
    return client.post("/v1/datasets", headers=auth, json=body)


def _column(settings, ds_id):
    with session_scope(settings.DATABASE_URL) as s:
        row = s.execute(
            text("SELECT credentials_sealed, credentials_hint FROM datasets WHERE id = :id"), {"id": ds_id}
        ).one()
    return row[0], row[1]


def _mask(key_id: str) -> str:
    return f"{key_id[:4]}…{key_id[-4:]}"


def test_a_dataset_registered_with_its_own_credentials_never_shows_the_secret(
    api, auth, settings, store, caplog
):
    caplog.set_level(logging.DEBUG, logger="mergetune")
    a = store[1]["team-a"]
    refused = _post(api, auth)  # the service's identity may not read team A's bucket
    assert refused.status_code == 422, refused.text
    assert "AccessDenied" in refused.json()["error"]["message"]

    r = _post(api, auth, a.credentials(session_token=None, region="us-east-1"))
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["credentials"] == {"access_key_id": _mask(a.access_key_id), "stored": True}
    assert body["split_sizes"] == {"train": 24, "val": 6, "test": 12}
    answers = [r, api.get(f"/v1/datasets/{body['id']}", headers=auth), api.get("/v1/datasets", headers=auth)]
    for answer in answers:
        assert answer.status_code == 200 or answer is r
        assert a.secret_access_key.encode() not in answer.content
        assert a.access_key_id.encode() not in answer.content  # only the masked form
    assert answers[1].json()["credentials"]["access_key_id"] == _mask(a.access_key_id)

    sealed, hint = _column(settings, body["id"])
    assert hint == _mask(a.access_key_id)
    assert a.secret_access_key not in sealed and a.access_key_id not in sealed  # ciphertext
    opened = secrets.unseal(settings.model_copy(update={"SECRET_KEY": SecretStr(KEY)}), sealed)
    assert opened == {
        "access_key_id": a.access_key_id,
        "secret_access_key": a.secret_access_key,
        "region": "us-east-1",
    }
    with pytest.raises(secrets.SecretKeyError, match="MERGETUNE_SECRET_KEY"):
        secrets.unseal(settings.model_copy(update={"SECRET_KEY": SecretStr(OLD_KEY)}), sealed)
    assert caplog.records and a.secret_access_key not in caplog.text  # nor in the service's log


@pytest.mark.parametrize(
    ("which", "code"),
    [
        ("unknown key", "InvalidAccessKeyId"),
        ("wrong secret", "SignatureDoesNotMatch"),
        ("other team", "AccessDenied"),
    ],
)
def test_credentials_the_store_refuses_are_422_naming_credentials(api, auth, store, which, code):
    a, b = store[1]["team-a"], store[1]["team-b"]
    creds = {
        "unknown key": {"access_key_id": "AKIAUNKNOWNKEY000001", "secret_access_key": "s3cr3t-unknown-value"},
        "wrong secret": {"access_key_id": a.access_key_id, "secret_access_key": "s3cr3t-wrong-value"},
        "other team": b.credentials(),
    }[which]
    r = _post(api, auth, creds)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("credentials_rejected", "credentials")
    assert code in err["message"]
    assert creds["secret_access_key"].encode() not in r.content


def test_credentials_need_an_s3_path_and_a_configured_key(api, make_client, auth, store):
    a = store[1]["team-a"]
    local = _post(api, auth, a.credentials(), path="eurosat")
    assert local.status_code == 422 and local.json()["error"]["param"] == "credentials", local.text

    keyless = make_client(S3_ENDPOINT_URL=store[0], S3_REGION="us-east-1", SECRET_KEY=None)
    r = _post(keyless, auth, a.credentials())
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert (err["code"], err["param"]) == ("secret_key_missing", "credentials")
    assert "MERGETUNE_SECRET_KEY" in err["message"]

    missing = _post(api, auth, {"access_key_id": a.access_key_id})
    assert missing.status_code == 422 and missing.json()["error"]["param"].startswith("credentials")


def test_rotating_and_clearing_credentials(api, auth, settings, store):
    a, a2, b = store[1]["team-a"], store[1]["team-a2"], store[1]["team-b"]
    ds = _post(api, auth, a.credentials()).json()
    before = _column(settings, ds["id"])

    bad = api.put(f"/v1/datasets/{ds['id']}/credentials", headers=auth, json=b.credentials())
    assert bad.status_code == 422, bad.text
    assert (bad.json()["error"]["param"], bad.json()["error"]["code"]) == (
        "credentials",
        "credentials_rejected",
    )
    assert "AccessDenied" in bad.json()["error"]["message"]
    assert _column(settings, ds["id"]) == before  # unchanged

    ok = api.put(f"/v1/datasets/{ds['id']}/credentials", headers=auth, json=a2.credentials())
    assert ok.status_code == 200, ok.text
    assert ok.json()["credentials"] == {"access_key_id": _mask(a2.access_key_id), "stored": True}
    assert a2.secret_access_key.encode() not in ok.content
    sealed, _ = _column(settings, ds["id"])
    assert (
        secrets.unseal(settings.model_copy(update={"SECRET_KEY": SecretStr(KEY)}), sealed)["access_key_id"]
        == a2.access_key_id
    )

    cleared = api.delete(f"/v1/datasets/{ds['id']}/credentials", headers=auth)
    assert cleared.status_code == 200 and cleared.json()["credentials"] is None, cleared.text
    assert _column(settings, ds["id"]) == (None, None)
    assert api.get(f"/v1/datasets/{ds['id']}", headers=auth).json()["credentials"] is None

    local = api.post("/v1/datasets", headers=auth, json={"name": "b", "kind": "builtin"}).json()
    r = api.put(f"/v1/datasets/{local['id']}/credentials", headers=auth, json=a.credentials())
    assert r.status_code == 422 and r.json()["error"]["param"] == "credentials"
    assert api.put("/v1/datasets/ds_nope/credentials", headers=auth, json=a.credentials()).status_code == 404


def test_key_rotation_old_key_second_still_opens(settings):
    creds = {"access_key_id": "AKIAEXAMPLE0000XYZ9", "secret_access_key": "rotation-secret-value"}
    old = settings.model_copy(update={"SECRET_KEY": SecretStr(OLD_KEY)})
    both = settings.model_copy(update={"SECRET_KEY": SecretStr(f"{KEY},{OLD_KEY}")})
    new_only = settings.model_copy(update={"SECRET_KEY": SecretStr(KEY)})
    token = secrets.seal(old, creds)
    assert secrets.unseal(both, token) == creds  # the old key, listed second, still opens
    with pytest.raises(secrets.SecretKeyError):
        secrets.unseal(new_only, token)
    resealed = secrets.rotate(both, token)
    assert secrets.unseal(new_only, resealed) == creds  # sealed again with the first key
    assert secrets.mask(creds["access_key_id"]) == "AKIA…XYZ9"


def test_a_malformed_secret_key_is_refused_at_start_up(tmp_path):
    from mergetune.common.settings import Settings

    with pytest.raises(ValueError, match="MERGETUNE_SECRET_KEY: key 2 is not a Fernet key"):
        Settings(HOME=tmp_path, SECRET_KEY=f"{KEY},not-a-key")


def test_jobs_on_such_a_dataset_need_a_worker_with_the_key(
    api, make_client, auth, settings, store, checkpoint
):
    from mergetune.common.models import WorkerHeartbeat, utcnow
    from mergetune.worker import jobdb

    a = store[1]["team-a"]
    ds = _post(api, auth, a.credentials()).json()
    body = {"checkpoint_id": checkpoint["id"], "dataset_id": ds["id"]}

    # sealed with a key since dropped: the API (and so the workers) can no longer open them
    dropped = make_client(S3_ENDPOINT_URL=store[0], S3_REGION="us-east-1", SECRET_KEY=SecretStr(OLD_KEY))
    lost = _post(dropped, auth, a.credentials()).json()
    r = api.post("/v1/jobs", headers=auth, json={**body, "eval_dataset_ids": [lost["id"]]})
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (
        "secret_key_missing",
        "eval_dataset_ids[0]",
    )
    assert "MERGETUNE_SECRET_KEY" in r.json()["error"]["message"]
    host = f"keyless-{os.getpid()}@test"
    url = settings.DATABASE_URL
    try:
        jobdb.heartbeat(
            url, host, {"pid": 1, "device": "cpu", "weights": {"files": [], "tags": []}}, reset_job=True
        )
        r = api.post("/v1/jobs", headers=auth, json=body)
        assert r.status_code == 422, r.text
        err = r.json()["error"]
        assert (err["code"], err["param"]) == ("secret_key_missing", "dataset_id")
        assert "MERGETUNE_SECRET_KEY" in err["message"]
        report = {"files": [], "tags": ["ViT-B-16/openai"], "secret_key": True}
        jobdb.heartbeat(url, host, {"pid": 1, "device": "cpu", "weights": report}, reset_job=True)
        ok = api.post("/v1/jobs", headers=auth, json=body)
        assert ok.status_code == 202, ok.text
        job = api.get(f"/v1/jobs/{ok.json()['id']}", headers=auth)
        assert (
            a.secret_access_key.encode() not in job.content and a.secret_access_key.encode() not in ok.content
        )
    finally:
        with session_scope(url) as s:  # leave no live worker for the other tests
            row = s.get(WorkerHeartbeat, host)
            if row is not None:
                row.last_seen = utcnow().replace(year=2000)


def test_the_client_registers_rotates_and_clears_credentials(settings, store):
    from api_support import live_server, new_token

    import mergetune

    endpoint, users = store
    a, a2 = users["team-a"], users["team-a2"]
    served = settings.model_copy(
        update={"S3_ENDPOINT_URL": endpoint, "S3_REGION": "us-east-1", "SECRET_KEY": SecretStr(KEY)}
    )
    token = new_token(settings.DATABASE_URL)
    with live_server(served) as port, mergetune.Client(f"http://127.0.0.1:{port}", token) as c:
        ds = c.create_dataset("eurosat", "coop", "s3://bucket-a/coop/eurosat", credentials=a.credentials())
        assert ds["credentials"] == {"access_key_id": _mask(a.access_key_id), "stored": True}
        with pytest.raises(mergetune.ApiError) as exc:
            c.set_dataset_credentials(ds["id"], {**a2.credentials(), "secret_access_key": "not-the-secret"})
        assert exc.value.param == "credentials" and "SignatureDoesNotMatch" in str(exc.value)
        rotated = c.set_dataset_credentials(ds["id"], a2.credentials())
        assert rotated["credentials"]["access_key_id"] == _mask(a2.access_key_id)
        assert c.set_dataset_credentials(ds["id"], None)["credentials"] is None


def test_the_operator_reseals_stored_credentials_with_the_first_key(
    env_settings, make_client, auth, store, monkeypatch, capsys
):
    from mergetune.cli import main
    from mergetune.common.models import Dataset
    from mergetune.common.settings import get_settings

    a = store[1]["team-a"]
    before = make_client(S3_ENDPOINT_URL=store[0], S3_REGION="us-east-1", SECRET_KEY=SecretStr(OLD_KEY))
    ds = _post(before, auth, a.credentials()).json()
    old_token, _ = _column(env_settings, ds["id"])

    assert main(["secret-key", "new"]) == 0
    fresh = capsys.readouterr().out.strip()
    assert Fernet(fresh.encode())  # a usable key

    monkeypatch.setenv("MERGETUNE_SECRET_KEY", f"{KEY},{OLD_KEY}")
    get_settings.cache_clear()
    assert main(["secret-key", "rotate"]) == 0
    assert "sealed with the first key" in capsys.readouterr().err
    token, _ = _column(env_settings, ds["id"])
    assert token != old_token
    new_only = env_settings.model_copy(update={"SECRET_KEY": SecretStr(KEY)})
    assert secrets.unseal(new_only, token)["secret_access_key"] == a.secret_access_key

    # credentials no configured key opens are named, and left as they are
    stranger = env_settings.model_copy(update={"SECRET_KEY": SecretStr(Fernet.generate_key().decode())})
    with session_scope(env_settings.DATABASE_URL) as s:
        s.get(Dataset, ds["id"]).credentials_sealed = secrets.seal(stranger, a.credentials())
    try:
        assert main(["secret-key", "rotate"]) != 0
        assert ds["id"] in capsys.readouterr().err
    finally:
        with session_scope(env_settings.DATABASE_URL) as s:
            s.get(Dataset, ds["id"]).credentials_sealed = token
        get_settings.cache_clear()
