"""The dashboard's favicon, landmarks and empty states over HTTP (real Postgres, no browser): the SVG
icon and /favicon.ico answer, both navigation landmarks are named, a skip link leads to the main
content, and a project with nothing yet is told what to do first on every list page."""

from __future__ import annotations

from typing import Any

from browser_support import login, make_rows, new_project
from fastapi.testclient import TestClient


def test_favicon_svg_and_ico(app_client: TestClient) -> None:
    r = app_client.get("/static/favicon.svg")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("image/svg+xml")
    assert r.text.startswith("<svg") and "</svg>" in r.text
    r = app_client.get("/favicon.ico", follow_redirects=False)
    assert r.status_code in (301, 302, 307, 308) and r.headers["location"] == "/static/favicon.svg"
    assert app_client.get("/favicon.ico").status_code == 200  # followed: the icon itself
    login_page = app_client.get("/login").text
    assert '<link rel="icon" href="/static/favicon.svg" type="image/svg+xml">' in login_page


def test_empty_project_pages_say_what_to_do_first(app_client: TestClient, settings: Any) -> None:
    _, secret = new_project(settings.DATABASE_URL)
    login(app_client, secret)
    jobs = app_client.get("/").text
    assert '<a class="skip-link" href="#main">Skip to main content</a>' in jobs
    assert '<main id="main"' in jobs
    assert '<nav aria-label="Main">' in jobs and '<nav class="pager" aria-label="Pages">' in jobs
    assert "<th></th>" not in jobs
    assert 'id="jobs-empty"' in jobs and 'href="/jobs/new">Start a job</a>' in jobs
    assert "mergetune job create --checkpoint" in jobs

    page = app_client.get("/checkpoints").text
    assert 'id="checkpoints-empty"' in page and '<table id="checkpoints"' not in page
    assert "No checkpoints yet." in page and "mergetune upload " in page

    page = app_client.get("/datasets").text
    assert 'id="datasets-empty"' in page and '<table id="datasets"' not in page
    assert "No datasets yet." in page and "mergetune dataset create --name" in page

    page = app_client.get("/sweeps").text
    assert 'id="sweeps-empty"' in page and '<table id="sweeps"' not in page
    assert "mergetune sweep create --tree output.zip" in page and 'href="/jobs/new">start a job</a>' in page

    page = app_client.get("/webhooks").text
    assert 'id="webhooks-empty"' in page and '<table id="webhooks"' not in page
    assert 'href="#wh-url"' in page

    page = app_client.get("/jobs/new").text
    assert 'id="new-job-empty"' in page
    assert (
        'href="/checkpoints">Upload a checkpoint</a>' in page
        and 'href="/datasets">Register a dataset</a>' in page
    )
    assert '<button type="submit" id="new-job-submit" aria-describedby="new-job-why" disabled>' in page
    assert "Start is off: this project has no ready checkpoint yet." in page


def test_pages_with_rows_show_their_tables(app_client: TestClient, settings: Any) -> None:
    url = settings.DATABASE_URL
    project, secret = new_project(url)
    rows = make_rows(url, project, jobs=[{"status": "succeeded"}])
    login(app_client, secret)
    jobs = app_client.get("/").text
    assert 'id="jobs-empty"' not in jobs and rows["job_ids"][0] in jobs
    page = app_client.get("/checkpoints").text
    assert '<table id="checkpoints"' in page and 'id="checkpoints-empty"' not in page
    page = app_client.get("/datasets").text
    assert '<table id="datasets"' in page and '<span class="sr-only">jobs on it</span>' in page
    page = app_client.get("/jobs/new").text
    assert 'id="new-job-empty"' not in page
    assert 'data-job-type="prompt"' in page  # the coop checkpoint's option
    assert '<button type="submit" id="new-job-submit" aria-describedby="new-job-why">' in page
    for group in ("common", "prompt", "prompt-mma", "head", "mma"):
        assert f'<fieldset class="hp-group" id="hp-{group}"' in page, group


def test_every_hyperparameter_sits_in_the_group_of_the_jobs_that_take_it() -> None:
    from mergetune.api.dashboard.new_job import HP_FIELD_GROUPS, HP_FIELDS, job_types_of

    placed = [f["name"] for g in HP_FIELD_GROUPS for f in g["fields"]]
    assert sorted(placed) == sorted(f["name"] for f in HP_FIELDS) and len(placed) == len(set(placed))
    by_id = {g["id"]: [f["name"] for f in g["fields"]] for g in HP_FIELD_GROUPS}
    assert by_id["mma"] == ["adapter_scale", "gradient_scale", "normalise_endpoints"]
    assert by_id["head"] == ["lam"]
    assert by_id["prompt"] == ["w_zs", "loss_type", "bank_views"]
    assert by_id["prompt-mma"] == ["warmup_epochs", "warmup_lr", "feature_mode"]
    for group in HP_FIELD_GROUPS:
        for field in group["fields"]:
            assert job_types_of(field["name"]) == group["job_types"], field["name"]
