"""The dashboard in a real headless Chromium against a real API + Celery worker.

Covers the job list (status filter, dataset column, pagination, health panel),
a finished demo job with its curves image and metrics table, a job started from the form whose status
changes on screen from queued to succeeded, and cancelling a running job.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from browser_support import Stack, ws

pytestmark = [pytest.mark.browser, pytest.mark.slow]

MODELS = ("zero_shot", "fine_tuned", "recovered")
SPLITS = ("base", "novel", "hm")


def expect(target: Any):
    from playwright.sync_api import expect as pw_expect

    return pw_expect(target)


def start_job_from_form(page, stack: Stack, *, epochs: int, name: str) -> str:
    """Fill the New-job form and submit; returns the new job's id from the job page."""
    page.goto(f"{stack.url}/jobs/new")
    page.select_option("#checkpoint_id", stack.checkpoint_id)
    page.select_option("#dataset_id", stack.dataset_id)
    page.fill("#backbone_model", ws.TINY_BACKBONE["model"])
    page.fill("#backbone_pretrained", ws.TINY_BACKBONE["pretrained"])
    page.fill("#epochs", str(epochs))
    page.fill("#shots", "4")
    page.fill("#batch_size", "4")
    page.fill("#name", name)
    page.click("#new-job-submit")
    page.wait_for_url(re.compile(r"/jobs/job_[0-9a-f]+$"))
    return page.locator("#job").get_attribute("data-job-id")


def test_anonymous_visitors_are_sent_to_login_and_bad_tokens_refused(page, stack: Stack) -> None:
    page.goto(f"{stack.url}/")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F$"))
    page.fill("#token", "mt_not-a-real-token")
    page.click("#login-submit")
    expect(page.locator("#login-error")).to_have_text("Unknown or revoked token.")
    # The JSON endpoint the pages poll is closed too.
    response = page.request.get(f"{stack.url}/ui/overview")
    assert response.status == 401
    # The token ends up in an HttpOnly cookie that scripts cannot read.
    page.fill("#token", stack.token)
    page.click("#login-submit")
    expect(page.locator("#jobs")).to_be_visible()
    cookie = next(c for c in page.context.cookies() if c["name"] == "mergetune_token")
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""


def test_job_list_shows_the_finished_job_with_filters_and_health_panel(
    logged_in, stack: Stack, finished_job: dict[str, Any]
) -> None:
    page = logged_in
    row = page.locator(f'tr[data-job-id="{finished_job["id"]}"]')
    expect(row.locator(".badge")).to_have_text("succeeded")
    expect(row).to_contain_text("builtin-tiny")  # dataset column
    created = row.locator('td[data-col="created"]')  # relative time, the UTC time in its title
    expect(created).to_have_text(re.compile(r"^\d+ (s|min|h|d) ago$"))
    expect(created).to_have_attribute("title", re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$"))
    expect(row).to_contain_text(f"{finished_job['metrics']['recovered']['hm']:.2f}")

    page.select_option("#filter-status", "failed")
    page.click("#job-filters button")
    expect(page).to_have_url(re.compile(r"status=failed"))
    expect(row).to_have_count(0)
    page.select_option("#filter-status", "succeeded")
    page.select_option("#filter-dataset", stack.dataset_id)
    page.click("#job-filters button")
    expect(row).to_have_count(1)

    # Health panel: the worker's heartbeat is recent; nothing is queued once the demo job is done.
    expect(page.locator("#health-workers tbody tr:not(.empty)")).not_to_have_count(0)
    assert int(page.locator("#health-workers-count").inner_text()) >= 1
    expect(page.locator("#health-queued")).to_have_text("0")

    page.goto(f"{stack.url}/checkpoints")
    expect(page.locator("#checkpoints")).to_contain_text(stack.checkpoint_id)
    page.goto(f"{stack.url}/datasets")
    expect(page.locator("#datasets")).to_contain_text("builtin-tiny")


def test_finished_job_page_shows_metrics_curves_and_downloads(
    logged_in, stack: Stack, finished_job: dict[str, Any]
) -> None:
    assert finished_job["status"] == "succeeded", finished_job.get("error")
    page = logged_in
    page.click(f'a.job-link[href="/jobs/{finished_job["id"]}"]')
    expect(page.locator("#job-status")).to_have_text("succeeded")

    table = page.locator("#metrics-table")
    expect(table).to_be_visible()
    for model in MODELS:
        for split in SPLITS:
            value = finished_job["metrics"][model][split]
            cell = table.locator(f'tr[data-model="{model}"] td[data-split="{split}"]')
            expect(cell).to_have_text(re.compile(rf"^\s*{re.escape(f'{value:.2f}')}"))

    curves = page.locator("#curves-img")
    expect(curves).to_be_visible()
    page.wait_for_function("() => document.getElementById('curves-img').naturalWidth > 100")

    names = set(page.locator("#artifacts tbody tr td:first-child a").all_inner_texts())
    expected = {
        "prompts.safetensors",
        "prompts.pth.tar",
        "report.json",
        "report.html",
        "curves.png",
        "manifest.json",
    }
    assert expected <= names
    # Downloads go through the cookie-authenticated dashboard route.
    blob = page.request.get(f"{stack.url}/jobs/{finished_job['id']}/artifacts/prompts.safetensors")
    assert blob.status == 200 and len(blob.body()) > 8
    report = page.request.get(f"{stack.url}/jobs/{finished_job['id']}/artifacts/report.html")
    assert report.status == 200 and "data:image/png;base64," in report.text()
    expect(page.locator("#events tbody tr")).not_to_have_count(0)


def test_start_job_from_form_see_it_go_queued_to_succeeded_and_cancel_a_running_job(
    browser_context, logged_in, stack: Stack, finished_job: dict[str, Any]
) -> None:
    # 1. A long job from the form; it starts on the (only) worker.
    long_page = logged_in
    long_id = start_job_from_form(long_page, stack, epochs=1000, name="long")
    expect(long_page.locator("#job-status")).to_have_text("running", timeout=90_000)
    expect(long_page.locator("#progress-text")).to_contain_text("epoch", timeout=30_000)

    # 2. A second, short job waits behind it: the page shows it queued.
    short_page = browser_context.new_page()
    short_id = start_job_from_form(short_page, stack, epochs=2, name="short")
    assert short_id != long_id
    expect(short_page.locator("#job-status")).to_have_text("queued")

    # 3. Cancel the running job from its page.
    long_page.on("dialog", lambda dialog: dialog.accept())
    long_page.click("#cancel-button")
    expect(long_page.locator("#job-status")).to_have_text(re.compile("cancelling|cancelled"))
    expect(long_page.locator("#job-status")).to_have_text("cancelled", timeout=60_000)
    assert stack.job(long_id)["status"] == "cancelled"

    # 4. The queued job now runs and succeeds, on screen, without touching the page.
    expect(short_page.locator("#job-status")).to_have_text("succeeded", timeout=180_000)
    history = short_page.locator("#status-history").inner_text()
    seen = history.removeprefix("status seen: ").split(" → ")
    assert seen[0] == "queued" and seen[-1] == "succeeded", history
    expect(short_page.locator("#metrics-table")).to_be_visible()
    expect(short_page.locator("#curves-img")).to_be_visible()


def test_job_list_paginates(logged_in, stack: Stack, finished_job: dict[str, Any]) -> None:
    with stack.client() as c:
        jobs = c.get("/v1/jobs", params={"limit": 100}).json()["data"]
    if len(jobs) < 2:  # run alone: make a second job
        stack.wait_status(stack.create_job()["id"], {"succeeded", "failed", "cancelled"}, timeout=240)
        with stack.client() as c:
            jobs = c.get("/v1/jobs", params={"limit": 100}).json()["data"]
    page = logged_in
    page.goto(f"{stack.url}/?limit=1")
    first = page.locator("#jobs tbody tr").get_attribute("data-job-id")
    assert first == jobs[0]["id"]
    page.click("#page-next")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    assert page.locator("#jobs tbody tr").get_attribute("data-job-id") == jobs[1]["id"]
    page.click("#page-first")
    assert page.locator("#jobs tbody tr").get_attribute("data-job-id") == first
