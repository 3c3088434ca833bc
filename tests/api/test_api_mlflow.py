"""Where a job logs its MLflow run: the project's tracking server and experiment (set by the operator
with ``mergetune project set``), or the job's own ``mlflow``; checked at submission (422 naming the
field) and shown in the job's JSON."""

from __future__ import annotations

import json

from mergetune.common.db import session_scope
from mergetune.common.models import Checkpoint, Job


def _project_of(settings, checkpoint_id):
    with session_scope(settings.DATABASE_URL) as s:
        return s.get(Checkpoint, checkpoint_id).project_id


def test_project_tracking_job_override_and_checks(env_settings, client, auth, job_body, capsys):
    from mergetune.cli import main

    project = _project_of(env_settings, job_body["checkpoint_id"])
    plain = client.post("/v1/jobs", headers=auth, json=job_body).json()
    assert plain["mlflow"] is None  # no tracking server: nowhere

    args = ["project", "set", project, "--mlflow-tracking-uri", "http://mlflow.internal:5000/"]
    assert main([*args, "--mlflow-experiment", "clip-recovery"]) == 0
    row = json.loads(capsys.readouterr().out)
    assert (row["mlflow_tracking_uri"], row["mlflow_experiment"]) == (
        "http://mlflow.internal:5000",
        "clip-recovery",
    )
    job = client.post("/v1/jobs", headers=auth, json=job_body).json()
    assert job["mlflow"] == {"tracking_uri": "http://mlflow.internal:5000", "experiment": "clip-recovery"}
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["mlflow"] == job["mlflow"]
    with session_scope(env_settings.DATABASE_URL) as s:
        assert s.get(Job, job["id"]).mlflow == job["mlflow"]

    # the job's own server and experiment win
    own = {"tracking_uri": "https://93.184.215.14:5000", "experiment": "ablation"}
    job = client.post("/v1/jobs", headers=auth, json={**job_body, "mlflow": own}).json()
    assert job["mlflow"] == own
    job = client.post(
        "/v1/jobs", headers=auth, json={**job_body, "mlflow": {"tracking_uri": "https://93.184.215.14/"}}
    ).json()
    assert job["mlflow"] == {"tracking_uri": "https://93.184.215.14", "experiment": "mergetune"}

    # refused at submission, naming the field; nothing created
    with session_scope(env_settings.DATABASE_URL) as s:
        before = s.query(Job).filter_by(project_id=project).count()
    for bad, param in [
        ({"tracking_uri": "file:///tmp/mlruns"}, "mlflow.tracking_uri"),
        ({"tracking_uri": ""}, "mlflow.tracking_uri"),
        ({"tracking_uri": "https://93.184.215.14", "experiment": ""}, "mlflow.experiment"),
        ({"tracking_uri": "https://93.184.215.14", "token": "x"}, "mlflow.token"),
        ({"tracking_uri": "http://127.0.0.1:5000"}, "mlflow.tracking_uri"),
        ({"tracking_uri": "http://10.0.0.7"}, "mlflow.tracking_uri"),
        ({"tracking_uri": "http://169.254.169.254"}, "mlflow.tracking_uri"),
    ]:
        r = client.post("/v1/jobs", headers=auth, json={**job_body, "mlflow": bad})
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["param"] == param, (bad, r.json())
        if bad["tracking_uri"].startswith("http://1"):
            assert r.json()["error"]["code"] == "private_address"
            assert "tracking_uri's host" in r.json()["error"]["message"]
    with session_scope(env_settings.DATABASE_URL) as s:
        assert s.query(Job).filter_by(project_id=project).count() == before

    # the project's own server may be private (an operator set it), so may a job's naming it
    assert main(["project", "set", project, "--mlflow-tracking-uri", "http://10.0.0.7:5000"]) == 0
    capsys.readouterr()
    job = client.post(
        "/v1/jobs",
        headers=auth,
        json={**job_body, "mlflow": {"tracking_uri": "http://10.0.0.7:5000", "experiment": "b"}},
    ).json()
    assert job["mlflow"] == {"tracking_uri": "http://10.0.0.7:5000", "experiment": "b"}

    # the operator's checks; none turns tracking off
    assert main(["project", "set", project, "--mlflow-tracking-uri", "mlflow.internal:5000"]) != 0
    assert "--mlflow-tracking-uri must be an http:// or https:// URL or none" in capsys.readouterr().err
    assert main(["project", "set", project, "--mlflow-tracking-uri", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["mlflow_tracking_uri"] is None
    assert client.post("/v1/jobs", headers=auth, json=job_body).json()["mlflow"] is None


def test_job_page_and_json_link_to_the_run(client, auth, job_body, settings):
    own = {"tracking_uri": "https://93.184.215.14:5000", "experiment": "ablation"}
    job = client.post("/v1/jobs", headers=auth, json={**job_body, "mlflow": own}).json()
    token = auth["Authorization"].removeprefix("Bearer ")
    assert (
        client.post("/login", data={"token": token, "next": "/"}, follow_redirects=False).status_code == 303
    )
    page = client.get(f"/jobs/{job['id']}").text
    assert '<td id="mlflow-run"><span class="muted">not started</span>' in page
    # what the worker writes once the run exists (mergetune.worker.mlflow_tracking)
    url = "https://93.184.215.14:5000/#/experiments/7/runs/0a1b2c"
    with session_scope(settings.DATABASE_URL) as s:
        s.get(Job, job["id"]).mlflow = {**own, "experiment_id": "7", "run_id": "0a1b2c", "run_url": url}
    assert client.get(f"/v1/jobs/{job['id']}", headers=auth).json()["mlflow"]["run_url"] == url
    page = client.get(f"/jobs/{job['id']}").text
    assert f'<a href="{url}" rel="noopener noreferrer" target="_blank">0a1b2c</a>' in page
