"""The chart module (api/static/charts.js on plotly.js) on a page of its own, apart from any dashboard
page: in a real headless Chromium, with the plotly.js the ``plotly`` package ships and our charts.js
served from one origin, line charts (distinct colours, honest y range, hover values, hidden data table,
live update keeping the zoom), a scatter whose points link somewhere and parallel coordinates."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import REPO

pytestmark = [pytest.mark.browser]

ORIGIN = "http://charts.test"
PAGE = """<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>charts</title>
<link rel="stylesheet" href="/static/dashboard.css"><script src="/plotly.js"></script>
<script src="/static/charts.js"></script></head><body><main>
<figure id="a"></figure><figure id="b"></figure><figure id="c"></figure><figure id="d"></figure>
<p id="target">target</p></main></body></html>"""


@pytest.fixture
def chart_page(page):
    import plotly

    files = {
        "/": (PAGE.encode(), "text/html"),
        "/plotly.js": ((Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes(), "text/javascript"),
        "/static/charts.js": ((REPO / "api/static/charts.js").read_bytes(), "text/javascript"),
        "/static/dashboard.css": ((REPO / "api/static/dashboard.css").read_bytes(), "text/css"),
        "/target": (b"<!DOCTYPE html><title>target</title><p id=here>here</p>", "text/html"),
    }  # fmt: skip

    def serve(route) -> None:
        path = route.request.url.removeprefix(ORIGIN).split("?")[0]
        if path in files:
            body, kind = files[path]
            route.fulfill(status=200, body=body, content_type=kind)
        else:
            route.fulfill(status=404, body=b"")

    page.route(f"{ORIGIN}/**", serve)
    page.set_viewport_size({"width": 900, "height": 800})
    page.goto(f"{ORIGIN}/")
    return page


def test_line_chart_colours_range_hover_table_and_update(chart_page) -> None:
    page = chart_page
    palette = page.evaluate("MTCharts.COLORS")
    assert len(palette) >= 8 and len(set(c.lower() for c in palette)) == len(palette)
    page.evaluate(
        """() => MTCharts.lineChart(document.getElementById('a'), 'loss', [
             {label: 'total', points: [[1, 2.300], [2, 2.295], [3, 2.291]]},
             {label: 'ce', points: [[1, 2.10], [2, 2.09], [3, 2.08]]},
             {label: 'other', points: [[1, 2.2], [2, 2.25], [3, null]], dash: true}],
           {xTitle: 'epoch', yTitle: 'loss', refLines: [{y: 2.0, label: 'floor'}]})"""
    )
    # the drawing is the one role="img" element of the chart (plotly's PNG button stays outside it)
    image = page.locator("#a [role=img]")
    assert image.count() == 1 and image.evaluate("e => e.querySelectorAll('button, a[href]').length") == 0
    label = image.get_attribute("aria-label")
    assert label.startswith("loss: 3 series, epoch 1-3"), label
    assert page.locator("#a .modebar-btn").count() == 1  # download as PNG, nothing else
    colours = page.evaluate("document.querySelector('#a .mt-plot').data.map(t => t.line.color)")
    assert len(set(colours)) == 3, colours
    # the hidden table carries every number
    rows = page.locator("#a table.mt-chart-data tbody tr")
    assert rows.count() == 3
    cells = rows.nth(2).locator("th, td").all_text_contents()
    assert cells == ["3", "2.291", "2.08", "—"], cells
    # honest range: a change of 0.4% of the value does not fill the height
    lo, hi = page.evaluate("document.querySelector('#a .mt-plot').layout.yaxis.range")
    assert hi - lo >= 0.06 * 2.0, (lo, hi)
    # hover: the unified label shows the values at that epoch
    box = page.locator("#a .nsewdrag").first.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    hover = page.locator("#a .hoverlayer")
    page.wait_for_function("document.querySelector('#a .hoverlayer').textContent.includes('2.295')")
    assert "2.09" in hover.text_content()
    # zoom, then a live update: the zoom stays, the new point is there
    page.evaluate("Plotly.relayout(document.querySelector('#a .mt-plot'), {'xaxis.range': [1.5, 2.5]})")
    page.evaluate(
        """() => MTCharts.update(document.getElementById('a'), [
             {label: 'total', points: [[1, 2.300], [2, 2.295], [3, 2.291], [4, 2.2]]}])"""
    )
    state = page.evaluate(
        "(() => { const p = document.querySelector('#a .mt-plot'); return [p.layout.xaxis.range, p.data.length, p.data[0].x.length]; })()"
    )
    assert state == [[1.5, 2.5], 1, 4], state
    assert page.locator("#a table.mt-chart-data tbody tr").count() == 4


def test_alpha_curves_mark_both_ends(chart_page) -> None:
    page = chart_page
    page.evaluate(
        """() => MTCharts.lineChart(document.getElementById('b'), 'HM along alpha', [
             {label: 'run 1', points: [[0, 60], [0.5, 70], [1, 75]]},
             {label: 'run 2', points: [[0, 61], [0.5, 65], [1, 72]]}], {xTitle: 'alpha', markEnds: true})"""
    )
    notes = page.locator("#b .annotation-text").all_text_contents()
    assert any(t.startswith("zero-shot") for t in notes) and any(t.startswith("recovered") for t in notes), (
        notes
    )
    sizes = page.evaluate("document.querySelector('#b .mt-plot').data[0].marker.size")
    assert sizes[0] > sizes[1] and sizes[-1] > sizes[1], sizes


def test_scatter_click_follows_the_link_and_parcoords_draws(chart_page) -> None:
    page = chart_page
    page.evaluate(
        """() => MTCharts.parcoords(document.getElementById('d'), 'sweep', [
             {label: 'lr', values: [0.001, 0.002, 0.004]}, {label: 'epochs', values: [5, 10, 20]},
             {label: 'HM', values: [60, 70, 65]}])"""
    )
    assert page.locator("#d .axis-title").all_text_contents() == ["lr", "epochs", "HM"]
    assert page.locator("#d [role=img]").get_attribute("aria-label") == "sweep: 3 dimensions, 3 rows"
    page.evaluate(
        """() => MTCharts.scatter(document.getElementById('c'), 'HM vs cost', [
             {x: 1, y: 60, label: 'job a', href: '/target'}, {x: 2, y: 70, label: 'job b'}],
           {xTitle: 'hours', yTitle: 'HM'})"""
    )
    box = page.locator("#c .scatterlayer path.point").first.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x, y)
    page.wait_for_function("document.querySelector('#c .hoverlayer').textContent.includes('job a')")
    page.mouse.click(x, y)
    page.wait_for_url(f"{ORIGIN}/target")
