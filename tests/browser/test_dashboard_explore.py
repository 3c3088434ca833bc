"""The exploring pages in a real headless Chromium on the real stack: the compare page's scatter draws
one point per run, named, and its "only differences" switch hides equal settings at once; the job list
with hyperparameter columns; the sweep page's scatter and its HTML report opening in the browser.
Full-page screenshots at 1440x900 and 390x844 go to test-artifacts/screens/{compare,jobs,sweep}-{1440,390}.png."""

from __future__ import annotations

from typing import Any

import pytest
from browser_support import Stack
from conftest import ARTIFACTS
from explore_support import make_rows, make_sweep, metrics

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENS = ARTIFACTS / "screens"


def _shots(page: Any, name: str, prepare: Any = None) -> None:
    """Full-page screenshots at the desktop and phone sizes (``prepare(page)`` after each load); neither
    scrolls sideways."""
    SCREENS.mkdir(parents=True, exist_ok=True)
    for width, height in ((1440, 900), (390, 844)):
        page.set_viewport_size({"width": width, "height": height})
        page.reload()  # drawn at this size from the start, as a phone would
        page.wait_for_load_state("networkidle")
        if prepare is not None:
            prepare(page)
        page.wait_for_timeout(500)
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        wide = page.evaluate(
            "() => Array.from(document.querySelectorAll('body *')).filter(e => e.getBoundingClientRect().right"
            " > window.innerWidth + 1 && !e.closest('.table-scroll, .mt-sr-only')).slice(0, 6)"
            ".map(e => e.tagName + '#' + e.id + '.' + e.className + ' ' + Math.round(e.getBoundingClientRect().right))"
        )
        assert overflow <= 0, f"{name} scrolls sideways by {overflow}px at {width}px: {wide}"
        page.screenshot(path=str(SCREENS / f"{name}-{width}.png"), full_page=True)
    page.set_viewport_size({"width": 1440, "height": 900})


def test_compare_scatter_names_runs_and_the_sweep_report_opens_inline(logged_in, stack: Stack) -> None:
    page = logged_in
    rows = make_rows(
        stack.database_url,
        stack.project_id,
        datasets=2,
        jobs=[
            {"status": "succeeded", "metadata_": {"name": "lr-0.001"}, "metrics": metrics(60, 50, 55),
             "hyperparameters": {"epochs": 2, "lr": 0.001, "w_lmc": 1.0}},
            {"status": "succeeded", "metadata_": {"name": "lr-0.004"}, "metrics": metrics(60, 52, 58),
             "hyperparameters": {"epochs": 2, "lr": 0.004, "w_lmc": 5.0}},
            {"status": "succeeded", "metadata_": {"name": "lr-0.002"}, "metrics": metrics(61, 53, 57),
             "hyperparameters": {"epochs": 2, "lr": 0.002, "w_lmc": 2.0}},
            {"status": "succeeded", "metadata_": {"name": "other-set"}, "metrics": metrics(70, 72, 80), "dataset": 1,
             "hyperparameters": {"epochs": 4, "lr": 0.002, "w_lmc": 1.0}},
        ],
    )  # fmt: skip
    ids = rows["job_ids"]
    page.goto(f"{stack.url}/compare?" + "&".join(f"ids={i}" for i in ids))
    page.wait_for_selector("#explore-scatter .js-plotly-plot")
    assert page.locator("#compare-warning").is_visible()
    assert "dataset" in page.locator("#compare-warning").inner_text()
    trace = page.evaluate(
        "() => { const d = document.querySelector('#explore-scatter .js-plotly-plot').data[0];"
        " return {x: Array.from(d.x), y: Array.from(d.y), text: Array.from(d.text)}; }"
    )
    assert page.locator("#explore-x").input_value() == "lr"  # the first differing hyperparameter
    assert sorted(zip(trace["text"], trace["x"], trace["y"], strict=True)) == [
        ("lr-0.001", 0.001, 55.0), ("lr-0.002", 0.002, 57.0), ("lr-0.004", 0.004, 58.0), ("other-set", 0.002, 80.0),
    ]  # fmt: skip
    assert page.locator("#explore-scatter svg .points path").count() == 4  # four markers drawn
    # Another metric redraws the same runs.
    page.select_option("#explore-y", "hm_vs_zero_shot")
    page.wait_for_function("document.getElementById('explore-scatter').dataset.y === 'hm_vs_zero_shot'")
    ys = page.evaluate(
        "() => Array.from(document.querySelector('#explore-scatter .js-plotly-plot').data[0].y)"
    )
    assert sorted(ys) == [55.0 - 64.0, 57.0 - 65.0, 58.0 - 64.0, 80.0 - 74.0]
    page.wait_for_selector("#explore-parcoords .js-plotly-plot")
    # Only differences: equal rows disappear at once, the address says so, a click brings them back.
    same = page.locator('#compare-settings tr[data-key="checkpoint_id"]')
    assert same.is_visible()
    page.click("#diff-toggle")
    assert not same.is_visible() and "diff=1" in page.url
    assert page.locator('#compare-settings tr[data-key="hyperparameters.lr"]').is_visible()
    _shots(page, "compare")
    page.click("#diff-toggle")
    assert same.is_visible() and "diff=1" not in page.url

    page.goto(f"{stack.url}/?columns=lr,w_lmc,epochs,dataset&sort=lr&order=asc")
    assert page.locator("#jobs thead a[data-sort='w_lmc']").is_visible()
    _shots(page, "jobs", lambda p: p.locator("#column-picker summary").click())

    sweep = make_sweep(stack.database_url, stack.project_id, lrs=[0.001, 0.002, 0.004], w_lmcs=[1.0, 10.0])
    page.goto(f"{stack.url}/sweeps/{sweep['sweep_id']}")
    page.wait_for_selector("#sweep-scatter .js-plotly-plot")
    names = page.evaluate(
        "() => document.querySelector('#sweep-scatter .js-plotly-plot').data.map(t => t.name)"
    )
    assert names == ["w_lmc=1", "w_lmc=10"]  # x is lr, one series per w_lmc
    assert page.locator("#sweep-created time").inner_text() == "7 min ago"
    _shots(page, "sweep")

    page.click("#sweep-report-html")  # opens as a page, not a download
    page.wait_for_url(f"**/sweeps/{sweep['sweep_id']}/report.html")
    assert page.locator("h1").inner_text().startswith("Sweep lr-by-wlmc")
    assert page.locator("#grid-table tbody tr").count() == 6
