"""The job page leads with what its reader came for, in a real headless Chromium against the real stack:
the job's name, status, verdict, progress and live chart above the fold at 1440x900 (a running and a
finished job), the verdict within the first screen of a 390x844 phone; the chart (plotly.js from our
own origin, nothing fetched elsewhere) shows hover values in distinct colours; relative times tick;
the event log is reachable by keyboard. Screenshots: test-artifacts/screens/job-1440.png and
job-390.png (the finished job). The HTTP part: what failed and cancelled jobs say about artifacts."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from browser_support import Stack, login, make_rows, new_project
from conftest import ARTIFACTS
from fastapi.testclient import TestClient

pytestmark = [pytest.mark.browser]

SCREENS = ARTIFACTS / "screens"


def _running_job(stack: Stack) -> str:
    """A running job of 3 epochs with two finished (epoch events as the worker writes them), made now."""
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job, WorkerHeartbeat, new_id, utcnow

    with session_scope(stack.database_url) as s:
        job = Job(
            id=new_id("job"), project_id=stack.project_id, checkpoint_id=stack.checkpoint_id,
            dataset_id=stack.dataset_id, job_type="prompt", backbone={"model": "tiny-test", "pretrained": "random"},
            hyperparameters={"epochs": 3}, status="running", started_at=utcnow(), worker_host="elsewhere@test",
            progress={"epoch": 2, "epochs": 3, "step": 1, "steps": 6, "loss": 2.287},
            metadata_={"name": "lead-running"},
        )  # fmt: skip
        s.add(job)
        # its worker stays alive for the test (else the stack's reconciler hands the job to its own worker)
        beat = s.get(WorkerHeartbeat, "elsewhere@test") or WorkerHeartbeat(hostname="elsewhere@test")
        beat.current_job_id, beat.last_seen = job.id, utcnow() + timedelta(hours=1)
        s.add(beat)
        s.flush()
        repo.add_event(s, job.id, "status", "Job started on elsewhere@test", data={"status": "running"})
        for epoch, (loss, acc) in enumerate([(2.300, 40.0), (2.291, 41.0)], start=1):
            record = {"loss": loss, "ce": loss - 0.5, "zs": 0.25, "lmc": 0.05, "val_acc": acc}
            repo.add_event(s, job.id, "epoch", f"Epoch {epoch}/3 done", data={"epoch": epoch, "epochs": 3,
                           "loss": loss, "record": record})  # fmt: skip
        for i in range(40):  # enough lines for the log to scroll
            repo.add_event(s, job.id, "log", f"step {i}")
        return job.id


def _hover(page, chart: str, where: float, text: str) -> str:
    """Moves the mouse over the chart's plot area at ``where`` (0 left .. 1 right) until its hover label
    shows ``text`` (the chart may still be settling its size); returns the label's text."""
    for _ in range(10):
        drag = page.locator(f"{chart} .nsewdrag").first.bounding_box()
        page.mouse.move(drag["x"] + 5, drag["y"] + 5)
        page.mouse.move(drag["x"] + drag["width"] * where, drag["y"] + drag["height"] / 2, steps=4)
        label = page.locator(f"{chart} .hoverlayer").text_content() or ""
        if text in label:
            return label
        page.wait_for_timeout(300)
    raise AssertionError(f"no hover label with {text!r} on {chart}: {label!r}")


def _above_fold(page, height: int) -> tuple[float, float]:
    """The top of the live chart's plot and the bottom of the verdict, in page pixels."""
    page.wait_for_selector("#live-charts .mt-plot.js-plotly-plot")
    chart = page.locator("#live-charts .mt-plot").first.bounding_box()
    verdict = page.locator("#verdict").bounding_box()
    assert chart is not None and verdict is not None
    return chart["y"], verdict["y"] + verdict["height"]


def test_the_job_page_leads_with_name_verdict_progress_and_chart(
    logged_in, stack: Stack, finished_job: dict[str, Any]
) -> None:
    page = logged_in
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    running = _running_job(stack)
    try:
        _lead(page, stack, running, finished_job, requests)
    finally:
        _end(stack, running)


def _end(stack: Stack, job_id: str) -> None:
    """The running job is cancelled and its worker's heartbeat gone (other tests count workers)."""
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job, WorkerHeartbeat, utcnow

    with session_scope(stack.database_url) as s:
        s.get(Job, job_id).status, s.get(Job, job_id).finished_at = "cancelled", utcnow()
        beat = s.get(WorkerHeartbeat, "elsewhere@test")
        if beat is not None:
            s.delete(beat)


def _lead(page, stack: Stack, running: str, finished_job: dict[str, Any], requests: list[str]) -> None:

    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto(f"{stack.url}/jobs/{running}")
    assert page.locator("h1").inner_text() == "lead-running"
    assert page.locator("#job-id").inner_text() == running  # the id stays next to the name
    assert page.locator(f'button.copy[data-copy="{running}"]').count() >= 1
    chart_top, verdict_bottom = _above_fold(page, 900)
    assert chart_top < 900 and verdict_bottom < 900, (chart_top, verdict_bottom)
    assert page.locator("#verdict").inner_text().startswith("No verdict yet.")
    for eid in ("progress-bar", "progress-text", "job-eta"):  # the lead: progress and its estimate
        box = page.locator(f"#{eid}").bounding_box()
        assert box is not None and box["y"] < chart_top, eid

    # hover a point of the loss chart: the label names the values there; every series its own colour
    plot = page.locator("#live-chart-loss .mt-plot")
    colours = page.evaluate("document.querySelector('#live-chart-loss .mt-plot').data.map(t => t.line.color)")
    assert len(colours) == 4 and len(set(colours)) == 4, colours
    hover = _hover(page, "#live-chart-loss", 0.97, "2.291")
    assert "total loss" in hover and "1.791" in hover, hover  # total and cross-entropy at epoch 2
    label = plot.locator("[role=img]").get_attribute("aria-label")
    assert label.startswith("training loss (per-epoch means): 4 series, epoch 1-2"), label

    # relative times tick while the page is open
    ago = page.locator("#job-created-ago")
    first = ago.inner_text()
    page.wait_for_function(
        f"document.getElementById('job-created-ago').textContent !== {first!r}", timeout=15_000
    )
    assert ago.inner_text().endswith(" ago") and ago.inner_text() != first

    # the event log scrolls and Tab reaches it
    page.locator("#job-details details:last-of-type summary").focus()
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "events-scroll"
    log = page.locator("#events-scroll")
    assert log.get_attribute("role") == "log" and log.get_attribute("aria-label")

    # the finished job: the verdict with its HM numbers and the chart above the fold, then on a phone
    page.goto(f"{stack.url}/jobs/{finished_job['id']}")
    chart_top, verdict_bottom = _above_fold(page, 900)
    assert chart_top < 900 and verdict_bottom < 900, (chart_top, verdict_bottom)
    assert page.locator("#verdict-text").inner_text().startswith(("Recovered HM", "Not recovered"))
    hm = finished_job["metrics"]["recovered"]["hm"]
    assert f"recovered {hm:.2f}" in page.locator("#verdict-hm").inner_text()
    SCREENS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENS / "job-1440.png"))
    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{stack.url}/jobs/{finished_job['id']}")
    page.wait_for_selector("#live-charts .mt-plot.js-plotly-plot")
    verdict = page.locator("#verdict").bounding_box()
    assert verdict["y"] + verdict["height"] <= 844, verdict
    page.screenshot(path=str(SCREENS / "job-390.png"))
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")

    # plotly.js came from our own origin, and nothing left it
    plotly = [u for u in requests if "/static/vendor/plotly-" in u]
    assert plotly and all(u.startswith(f"{stack.url}/static/vendor/") for u in plotly), plotly
    away = [u for u in requests if not u.startswith(stack.url) and not u.startswith("data:")]
    assert away == [], away


def test_finished_job_training_charts_are_one_chart_per_quantity(
    logged_in, stack: Stack, finished_job: dict[str, Any]
) -> None:
    page = logged_in
    page.goto(f"{stack.url}/jobs/{finished_job['id']}")
    page.wait_for_selector("#training-charts .mt-plot.js-plotly-plot")
    keys = page.locator("#training-charts figure").evaluate_all("fs => fs.map(f => f.dataset.key)")
    assert "loss" in keys and "val_acc" in keys, keys
    for key in keys:
        plot = page.locator(f"#training-{key} .mt-plot")
        lo, hi = plot.evaluate("p => p.layout.yaxis.range")
        ys = plot.evaluate("p => p.data[0].y")
        assert len(ys) == finished_job["hyperparameters"]["epochs"], (key, ys)
        mid = abs(max(ys) + min(ys)) / 2
        assert hi - lo >= 0.06 * mid * 0.99 and lo <= min(ys) and hi >= max(ys), (key, lo, hi, ys)


def test_failed_and_cancelled_jobs_do_not_wait_for_artifacts(app_client: TestClient, settings: Any) -> None:
    url = settings.DATABASE_URL
    project, secret = new_project(url)
    failed, cancelled, running = make_rows(
        url, project, jobs=[{"status": "failed"}, {"status": "cancelled"}, {"status": "running"}]
    )["job_ids"]
    login(app_client, secret)
    page = app_client.get(f"/jobs/{failed}").text
    assert "This job failed before it wrote artifacts." in page and "No artifacts yet" not in page
    page = app_client.get(f"/jobs/{cancelled}").text
    assert "Cancelled before any artifacts were written." in page and "No artifacts yet" not in page
    page = app_client.get(f"/jobs/{running}").text
    assert "No artifacts yet: they are written when the job has finished." in page
    assert f'<h1 id="job-title">Job <code>{running}</code></h1>' in page  # no name: the id is the title
    assert 'id="events-scroll" tabindex="0" role="log"' in page
