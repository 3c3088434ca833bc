from __future__ import annotations

import json
from datetime import timedelta

from api_support import new_token

from mergetune.common.db import session_scope
from mergetune.common.models import Artifact, Job, utcnow
from mergetune.common.tasks import JOBS_QUEUE, RUN_JOB
from mergetune.core.config import Hyperparameters


def _queued_job_ids(redis_client) -> list[str]:
    ids = []
    for raw in redis_client.lrange(JOBS_QUEUE, 0, -1):
        msg = json.loads(raw)
        assert msg["headers"]["task"] == RUN_JOB
        ids.extend(json.loads(msg["headers"]["argsrepr"].replace("'", '"')))
    return ids


def test_job_create_echoes_defaults_and_enqueues_after_commit(client, auth, job_body, redis_client):
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "metadata": {"team": "vision"}})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["id"].startswith("job_")
    assert job["status"] == "queued"
    assert job["job_type"] == "prompt"
    assert job["hyperparameters"] == Hyperparameters().model_dump(mode="json")
    assert job["hyperparameters"]["lr"] == 0.002 and job["hyperparameters"]["w_zs"] == 10.0
    assert job["backbone"] == {"model": "ViT-B-16", "pretrained": "openai"}
    assert job["metadata"] == {"team": "vision"}
    assert job["queue_position"] >= 1
    assert job["estimated_finish"] is not None
    assert job["progress"] is None and job["metrics"] is None and job["error"] is None
    assert job["id"] in _queued_job_ids(redis_client)

    events = client.get(f"/v1/jobs/{job['id']}/events", headers=auth).json()
    assert [(e["type"], e["data"]) for e in events["data"]] == [("status", {"status": "queued"})]


def test_partial_hyperparameters_are_resolved(client, auth, job_body):
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "hyperparameters": {"epochs": 3, "lr": 0.01}})
    assert r.status_code == 202
    hp = r.json()["hyperparameters"]
    assert hp == Hyperparameters(epochs=3, lr=0.01).model_dump(mode="json")


def test_invalid_hyperparameter_names_the_field(client, auth, job_body):
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "hyperparameters": {"lr": -1}})
    assert r.status_code == 422
    err = r.json()["error"]
    assert err["param"] == "hyperparameters.lr"
    assert err["code"] == "invalid_request"
    assert "greater than 0" in err["message"]
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "hyperparameters": {"bogus": 1}})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "hyperparameters.bogus"
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "hyperparameters": {"loss_type": "l3"}})
    assert r.json()["error"]["param"] == "hyperparameters.loss_type"


def test_request_validation_errors_name_the_field(client, auth, job_body):
    r = client.post("/v1/jobs", headers=auth, json={"dataset_id": "ds_x"})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "checkpoint_id"
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "backbone": {"model": ""}})
    assert r.json()["error"]["param"] == "backbone.model"
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "metadata": {"k": 1}})
    assert r.json()["error"]["param"] == "metadata.k"
    r = client.post("/v1/jobs", headers={**auth, "Content-Type": "application/json"}, content=b"{nope")
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "invalid_json"
    r = client.get("/v1/jobs?limit=0", headers=auth)
    assert r.status_code == 422 and r.json()["error"]["param"] == "limit"


def test_job_refers_to_missing_or_mismatched_objects(client, auth, job_body):
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "checkpoint_id": "ckpt_missing"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "checkpoint_id"
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "dataset_id": "ds_missing"})
    assert r.status_code == 404 and r.json()["error"]["param"] == "dataset_id"
    r = client.post(
        "/v1/jobs", headers=auth, json={**job_body, "backbone": {"model": "ViT-L-14", "pretrained": "openai"}}
    )
    assert r.status_code == 422
    assert r.json()["error"]["code"] == "width_mismatch"
    assert r.json()["error"]["param"] == "backbone.model"


def test_idempotency_key(client, auth, job_body):
    h = {**auth, "Idempotency-Key": "job-key-1"}
    first = client.post("/v1/jobs", headers=h, json=job_body)
    again = client.post("/v1/jobs", headers=h, json=job_body)
    assert first.status_code == 202 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", headers=h, json={**job_body, "hyperparameters": {"epochs": 2}})
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert other.json()["error"]["param"] == "Idempotency-Key"
    assert len(client.get("/v1/jobs", headers=auth).json()["data"]) == 1


def test_cursor_pagination(client, auth, job_body):
    created = [client.post("/v1/jobs", headers=auth, json=job_body).json()["id"] for _ in range(5)]
    seen, after, pages = [], None, []
    while True:
        params = {"limit": 2, **({"after": after} if after else {})}
        page = client.get("/v1/jobs", headers=auth, params=params).json()
        pages.append((len(page["data"]), page["has_more"]))
        seen.extend(j["id"] for j in page["data"])
        if not page["has_more"]:
            assert page["next_cursor"] is None
            break
        after = page["next_cursor"]
        assert after == page["data"][-1]["id"]
    assert pages == [(2, True), (2, True), (1, False)]
    assert seen == list(reversed(created))  # newest first, no duplicates
    # filters
    assert len(client.get("/v1/jobs", headers=auth, params={"status": "queued"}).json()["data"]) == 5
    assert client.get("/v1/jobs", headers=auth, params={"status": "running"}).json()["data"] == []
    assert client.get("/v1/jobs", headers=auth, params={"dataset_id": "ds_other"}).json()["data"] == []
    assert (
        client.get("/v1/jobs", headers=auth, params={"status": "bogus"}).json()["error"]["param"] == "status"
    )


def test_cancel(client, auth, job_body, settings):
    job = client.post("/v1/jobs", headers=auth, json=job_body).json()
    r = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert r.status_code == 200
    assert r.json()["status"] == "cancelled"
    assert r.json()["queue_position"] is None and r.json()["finished_at"] is not None
    again = client.post(f"/v1/jobs/{job['id']}/cancel", headers=auth)
    assert again.status_code == 409 and again.json()["error"]["code"] == "job_finished"

    running = client.post("/v1/jobs", headers=auth, json=job_body).json()
    with session_scope(settings.DATABASE_URL) as s:
        row = s.get(Job, running["id"])
        row.status, row.started_at = "running", utcnow()
        row.progress = {"epoch": 2, "epochs": 4, "step": 5, "steps": 10, "loss": 0.5}
    r = client.post(f"/v1/jobs/{running['id']}/cancel", headers=auth)
    assert r.status_code == 200
    assert r.json()["status"] == "cancelling"
    assert r.json()["cancel_requested"] is True
    assert r.json()["progress"] == {"epoch": 2, "epochs": 4, "step": 5, "steps": 10, "loss": 0.5}


def test_auth_and_project_isolation(client, auth, other_auth, job_body, checkpoint, dataset):
    job = client.post("/v1/jobs", headers=auth, json=job_body).json()
    r = client.get("/v1/jobs")
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "missing_token"
    assert r.headers["www-authenticate"] == "Bearer"
    r = client.get("/v1/jobs", headers={"Authorization": "Bearer mt_wrong"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"
    r = client.get("/v1/jobs", headers={"Authorization": "Basic abc"})
    assert r.status_code == 401
    for path in (
        f"/v1/jobs/{job['id']}",
        f"/v1/jobs/{job['id']}/events",
        f"/v1/jobs/{job['id']}/artifacts",
        f"/v1/checkpoints/{checkpoint['id']}",
        f"/v1/datasets/{dataset['id']}",
    ):
        r = client.get(path, headers=other_auth)
        assert r.status_code == 404, path
        assert r.json()["error"]["code"] == "not_found"
    assert client.post(f"/v1/jobs/{job['id']}/cancel", headers=other_auth).status_code == 404
    assert client.delete(f"/v1/checkpoints/{checkpoint['id']}", headers=other_auth).status_code == 404
    r = client.post("/v1/jobs", headers=other_auth, json=job_body)
    assert r.status_code == 404 and r.json()["error"]["param"] == "checkpoint_id"
    assert client.get("/v1/jobs", headers=other_auth).json()["data"] == []


def test_same_project_name_shares_objects(client, settings, checkpoint, auth):
    # a second token of the same project sees the same objects
    with session_scope(settings.DATABASE_URL) as s:
        from mergetune.common.models import ApiToken
        from mergetune.common.repositories import hash_token

        tok = s.query(ApiToken).filter_by(token_hash=hash_token(auth["Authorization"].split()[1])).one()
        name = tok.project.name
    h2 = {"Authorization": f"Bearer {new_token(settings.DATABASE_URL, name)}"}
    assert client.get(f"/v1/checkpoints/{checkpoint['id']}", headers=h2).status_code == 200


def test_artifacts_list_and_download(client, auth, job_body, settings):
    from mergetune.common.storage import get_store

    job = client.post("/v1/jobs", headers=auth, json=job_body).json()
    data = b'{"metrics": {}}'
    key = f"jobs/{job['id']}/report.json"
    get_store(settings).put_bytes(key, data)
    import hashlib

    sha = hashlib.sha256(data).hexdigest()
    with session_scope(settings.DATABASE_URL) as s:
        s.add(
            Artifact(
                job_id=job["id"],
                name="report.json",
                bytes=len(data),
                sha256=sha,
                media_type="application/json",
                key=key,
            )
        )
        row = s.get(Job, job["id"])
        row.status, row.started_at, row.finished_at = "succeeded", utcnow() - timedelta(seconds=42), utcnow()
    listing = client.get(f"/v1/jobs/{job['id']}/artifacts", headers=auth).json()["data"]
    assert [(a["name"], a["bytes"], a["sha256"], a["media_type"]) for a in listing] == [
        ("report.json", len(data), sha, "application/json")
    ]
    r = client.get(f"/v1/jobs/{job['id']}/artifacts/report.json", headers=auth)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["x-content-sha256"] == sha
    r = client.get(f"/v1/jobs/{job['id']}/artifacts/nope.bin", headers=auth)
    assert r.status_code == 404 and r.json()["error"]["param"] == "name"
    # finished job: no queue position, no estimate
    got = client.get(f"/v1/jobs/{job['id']}", headers=auth).json()
    assert got["status"] == "succeeded" and got["estimated_finish"] is None and got["queue_position"] is None


def test_eval_dataset_ids_are_checked_stored_echoed_and_hashed(client, auth, other_auth, job_body):
    from api_support import TINY_DATASET

    shift = client.post(
        "/v1/datasets",
        headers=auth,
        json={
            **TINY_DATASET,
            "name": "tiny-shift",
            "options": {**TINY_DATASET["options"], "domain": "shift"},
        },
    ).json()
    foreign = client.post("/v1/datasets", headers=other_auth, json=TINY_DATASET).json()

    r = client.post("/v1/jobs", headers=auth, json=job_body)
    assert r.status_code == 202 and r.json()["eval_dataset_ids"] == []
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "eval_dataset_ids": [shift["id"]]})
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["eval_dataset_ids"] == [shift["id"]]
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["eval_dataset_ids"] == [shift["id"]]
    with session_scope(client.app.state.settings.DATABASE_URL) as s:
        assert s.get(Job, job["id"]).eval_dataset_ids == [shift["id"]]

    # Missing, another project's (invisible), repeated, malformed: the error names the entry.
    for ids, status, param in (
        ([shift["id"], "ds_missing"], 404, "eval_dataset_ids[1]"),
        ([foreign["id"]], 404, "eval_dataset_ids[0]"),
        ([shift["id"], shift["id"]], 422, "eval_dataset_ids[1]"),
        ([""], 422, "eval_dataset_ids[0]"),
    ):
        r = client.post("/v1/jobs", headers=auth, json={**job_body, "eval_dataset_ids": ids})
        assert r.status_code == status, (ids, r.text)
        assert r.json()["error"]["param"] == param
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "eval_dataset_ids": [shift["id"]] * 17})
    assert r.status_code == 422 and r.json()["error"]["param"] == "eval_dataset_ids"
    r = client.post("/v1/jobs", headers=auth, json={**job_body, "eval_dataset_ids": "ds_x"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "eval_dataset_ids"

    # Part of the idempotency hash; an empty list asks for the same as none.
    h = {**auth, "Idempotency-Key": "eval-key"}
    first = client.post("/v1/jobs", headers=h, json=job_body)
    assert client.post("/v1/jobs", headers=h, json={**job_body, "eval_dataset_ids": []}).status_code == 200
    other = client.post("/v1/jobs", headers=h, json={**job_body, "eval_dataset_ids": [shift["id"]]})
    assert first.status_code == 202 and other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_migrations_run_on_sqlite_up_and_down(tmp_path):
    """0002 adds jobs.eval_dataset_ids in batch mode (SQLite cannot ALTER much) and removes it again."""
    from alembic import command
    from sqlalchemy import create_engine, inspect

    from mergetune.common.db import alembic_config, current_revision, head_revision, upgrade_head

    url = f"sqlite:///{tmp_path / 'm.db'}"
    upgrade_head(url)
    engine = create_engine(url)
    try:
        assert current_revision(engine) == head_revision()
        assert "eval_dataset_ids" in {c["name"] for c in inspect(engine).get_columns("jobs")}
        command.downgrade(alembic_config(url), "0001_initial")
        assert "eval_dataset_ids" not in {c["name"] for c in inspect(engine).get_columns("jobs")}
        indexes = {i["name"] for i in inspect(engine).get_indexes("jobs")}
        assert {"ix_jobs_project_id_id", "ix_jobs_status_queued_at"} <= indexes
        upgrade_head(url)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
