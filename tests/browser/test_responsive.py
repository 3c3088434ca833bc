"""Every page fits the screen: in a real headless Chromium at 1440x900 (desktop) and 390x844 (a phone),
``document.documentElement.scrollWidth <= innerWidth`` (no sideways scrolling) and every header link
is on screen inside the header. A full-page screenshot of each page at each size is kept under
test-artifacts/screens/<page>-<desktop|mobile>.png."""

from __future__ import annotations

from typing import Any

import pytest
from browser_support import Stack
from conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENS = ARTIFACTS / "screens"
VIEWPORTS = {"desktop": (1440, 900), "mobile": (390, 844)}


def _failed_job(stack: Stack, name: str = "a-run-with-a-rather-long-name-" + "z" * 40) -> str:
    """A failed job whose error names a field (a row, as the worker writes it)."""
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job, new_id, utcnow

    with session_scope(stack.database_url) as s:
        job = Job(
            id=new_id("job"), project_id=stack.project_id, checkpoint_id=stack.checkpoint_id,
            dataset_id=stack.dataset_id, job_type="prompt", backbone={"model": "tiny-test", "pretrained": "random"},
            hyperparameters={"epochs": 2}, status="failed", started_at=utcnow(), finished_at=utcnow(),
            error={"code": "dataset_unreadable", "param": "dataset_id",
                   "message": "the split file lists an image that is not there: " + "x/" * 40 + "img.jpg"},
            metadata_={"name": name},
        )  # fmt: skip
        s.add(job)
        s.flush()
        repo.add_event(s, job.id, "status", "job queued", data={"status": "queued"})
        repo.add_event(s, job.id, "status", "Job failed", level="error", data={"status": "failed"})
        return job.id


def test_no_page_scrolls_sideways_and_the_header_fits(
    logged_in, stack: Stack, finished_job: dict[str, Any]
) -> None:
    page = logged_in
    failed = _failed_job(stack)
    with stack.client() as c:  # a sweep of one cell, cancelled at once: its page is what is checked
        r = c.post("/v1/sweeps", json={"name": "phone-check", "cells": [{"checkpoint_id": stack.checkpoint_id,
                   "dataset_id": stack.dataset_id}], "backbone": {"model": "tiny-test", "pretrained": "random"},
                   "hyperparameters": {"epochs": 1, "batch_size": 4, "shots": 4}})  # fmt: skip
        assert r.status_code in (200, 201, 202), r.text
        sweep_id = r.json()["id"]
        c.post(f"/v1/sweeps/{sweep_id}/cancel")
    pages = {
        "jobs": "/",
        "new-job": "/jobs/new",
        "job-succeeded": f"/jobs/{finished_job['id']}",
        "job-failed": f"/jobs/{failed}",
        "checkpoints": "/checkpoints",
        "datasets": "/datasets",
        "sweeps": "/sweeps",
        "sweep": f"/sweeps/{sweep_id}",
        "jobs-sorted": "/?sort=hm&order=desc&q=browser",
        "compare": f"/compare?ids={finished_job['id']}&ids={failed}",
        "clone": f"/jobs/new?clone={finished_job['id']}",
    }
    SCREENS.mkdir(parents=True, exist_ok=True)
    problems = []
    for kind, (width, height) in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        for name, path in pages.items():
            page.goto(f"{stack.url}{path}")
            page.wait_for_load_state("load")
            page.screenshot(path=str(SCREENS / f"{name}-{kind}.png"), full_page=True)
            scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
            if scroll > inner:
                problems.append(f"{name} at {width}px: the page is {scroll}px wide")
            header = page.locator("header.top").bounding_box()
            for link in page.locator("header.top nav a, header.top .logout button").all():
                box = link.bounding_box()
                label = link.inner_text().strip()
                if not link.is_visible() or box is None:
                    problems.append(f"{name} at {width}px: header link {label!r} is not visible")
                    continue
                inside = box["x"] >= 0 and box["x"] + box["width"] <= inner and header is not None
                inside = (
                    inside
                    and box["y"] >= header["y"]
                    and box["y"] + box["height"] <= header["y"] + header["height"]
                )
                if not inside:
                    problems.append(
                        f"{name} at {width}px: header link {label!r} is outside the header: {box}"
                    )
    assert problems == [], "\n".join(problems)

    # the per-epoch chart of the finished job: one point per epoch on the total-loss line
    page.goto(f"{stack.url}/jobs/{finished_job['id']}")
    page.wait_for_selector("#live-chart-loss .mt-plot.js-plotly-plot")
    xs = page.evaluate(
        "document.querySelector('#live-chart-loss .mt-plot').data.find(t => t.name === 'total loss').x"
    )
    assert len(xs) == finished_job["hyperparameters"]["epochs"], xs
    # the login page (logged out) too
    page.context.clear_cookies()
    for kind, (width, height) in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.goto(f"{stack.url}/login")
        page.screenshot(path=str(SCREENS / f"login-{kind}.png"), full_page=True)
        assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")


@pytest.mark.parametrize("kind", list(VIEWPORTS))
def test_compare_two_jobs_picked_in_the_list(
    logged_in, stack: Stack, finished_job: dict[str, Any], kind: str
) -> None:
    page = logged_in
    width, height = VIEWPORTS[kind]
    page.set_viewport_size({"width": width, "height": height})
    # The list shows 20 jobs a page, newest first, and the tests before this one add jobs to the same
    # project, so the finished job may be on an older page. The run it is compared with is named after
    # it and the list is searched for its id: both are on the one page, however many jobs came before.
    other = _failed_job(stack, name=f"retry of {finished_job['id']}")
    page.goto(f"{stack.url}/?q={finished_job['id']}")
    assert page.locator("#page-next").count() == 0
    page.check(f'input.compare-pick[value="{finished_job["id"]}"]')
    page.once("dialog", lambda d: d.accept())  # one job only: the page says so and stays
    page.click("#compare-button")
    assert "/compare" not in page.url
    page.check(f'input.compare-pick[value="{other}"]')
    page.click("#compare-button")
    page.wait_for_url("**/compare?*")
    assert finished_job["id"] in page.url and other in page.url  # a shareable address
    assert page.locator("#compare-metrics tbody tr").count() == 2
    page.wait_for_selector("#compare-charts .mt-plot.js-plotly-plot")
    shared = page.url
    page.goto(shared)  # the same comparison from the address alone
    assert page.locator("#compare-metrics tbody tr").count() == 2
