"""The ``priority`` field of jobs and sweeps: stored, echoed, refused when unknown (422 naming it), and
outside the idempotency hash of bodies that do not name it."""

from __future__ import annotations

from mergetune.common.db import session_scope
from mergetune.common.models import Job


def _stored_priority(settings, job_id):
    with session_scope(settings.DATABASE_URL) as s:
        return s.get(Job, job_id).priority


def test_job_priority_is_stored_echoed_and_checked(client, auth, job_body, settings):
    plain = client.post("/v1/jobs", headers=auth, json=job_body)
    assert plain.status_code == 202 and plain.json()["priority"] == "normal"
    high = client.post("/v1/jobs", headers=auth, json={**job_body, "priority": "high"})
    assert high.status_code == 202 and high.json()["priority"] == "high"
    assert _stored_priority(settings, high.json()["id"]) == "high"
    assert client.get(f"/v1/jobs/{high.json()['id']}", headers=auth).json()["priority"] == "high"

    bad = client.post("/v1/jobs", headers=auth, json={**job_body, "priority": "urgent"})
    assert bad.status_code == 422
    assert bad.json()["error"]["param"] == "priority" and "low" in bad.json()["error"]["message"]
    assert len(client.get("/v1/jobs", headers=auth).json()["data"]) == 2  # nothing half-written


def test_idempotency_treats_an_unnamed_and_a_normal_priority_alike(client, auth, job_body):
    h = {**auth, "Idempotency-Key": "prio-1"}
    first = client.post("/v1/jobs", headers=h, json=job_body)
    same = client.post("/v1/jobs", headers=h, json={**job_body, "priority": "normal"})
    assert first.status_code == 202 and same.status_code == 200 and same.json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", headers=h, json={**job_body, "priority": "low"})
    assert other.status_code == 409


def test_sweep_priority_goes_to_every_job(client, auth, checkpoint, dataset, settings):
    body = {
        "cells": [
            {"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"], "seed": s} for s in (1, 2)
        ],
        "priority": "low",
    }
    r = client.post("/v1/sweeps", headers=auth, json=body)
    assert r.status_code == 202, r.text
    sw = r.json()
    assert sw["priority"] == "low" and len(sw["jobs"]) == 2
    for j in sw["jobs"]:
        assert client.get(f"/v1/jobs/{j['id']}", headers=auth).json()["priority"] == "low"
        assert _stored_priority(settings, j["id"]) == "low"
    bad = client.post("/v1/sweeps", headers=auth, json={**body, "priority": "HIGH"})
    assert bad.status_code == 422 and bad.json()["error"]["param"] == "priority"


def test_operator_sets_a_projects_weight_and_running_limit(env_settings, client, capsys):
    import json

    from mergetune.cli import main
    from mergetune.common.models import Project

    assert main(["token", "create", "--project", "team-a"]) == 0
    capsys.readouterr()
    assert main(["project", "set", "team-a", "--weight", "2.5", "--max-running", "3"]) == 0
    out = capsys.readouterr()
    row = json.loads(out.out)
    assert (row["name"], row["weight"], row["max_running_jobs"]) == ("team-a", 2.5, 3)
    assert "weight 2.5, running limit 3" in out.err
    with session_scope(env_settings.DATABASE_URL) as s:
        p = s.query(Project).filter_by(name="team-a").one()
        assert (p.weight, p.max_running_jobs) == (2.5, 3)

    assert main(["project", "set", "team-a", "--max-running", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["max_running_jobs"] is None
    assert main(["project", "list", "--json"]) == 0
    listed = {r["name"]: r for r in json.loads(capsys.readouterr().out)["data"]}
    assert listed["team-a"]["weight"] == 2.5 and listed["team-a"]["max_running_jobs"] is None

    assert main(["project", "set", "team-a", "--weight", "0"]) != 0
    assert "--weight must be > 0" in capsys.readouterr().err
    assert main(["project", "set", "team-a", "--max-running", "0"]) != 0
    assert "is not a limit" in capsys.readouterr().err
    assert main(["project", "set", "team-a", "--max-runtime", "3600"]) == 0
    assert json.loads(capsys.readouterr().out)["default_max_runtime_seconds"] == 3600
    assert main(["project", "set", "team-a", "--retention-days", "30"]) == 0
    assert json.loads(capsys.readouterr().out)["retention_days"] == 30
    # the operator's view of every project's usage (a project sees only its own: GET /v1/usage)
    assert main(["token", "create", "--project", "team-b"]) == 0
    capsys.readouterr()
    assert main(["project", "usage", "--json", "--days", "2"]) == 0
    usage = {r["name"]: r for r in json.loads(capsys.readouterr().out)["data"]}
    assert {"team-a", "team-b"} <= set(usage)
    assert usage["team-b"]["jobs"] == 0 and usage["team-b"]["device_seconds"] == 0
    assert usage["team-b"]["stored_bytes"]["total"] == 0 and len(usage["team-b"]["days"]) == 2
    assert main(["project", "usage"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["PROJECT_ID", "NAME", "DEVICE_SECONDS", "JOBS", "STORED_BYTES"]
    assert any(line.split()[1:] == ["team-b", "0.0", "0", "0"] for line in table[1:]), table
    assert main(["project", "set", "nobody", "--weight", "1"]) != 0
    assert "no project named 'nobody'" in capsys.readouterr().err
    with session_scope(env_settings.DATABASE_URL) as s:
        assert s.query(Project).filter_by(name="team-a").one().weight == 2.5
