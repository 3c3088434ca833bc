"""report.html names its run and has landmarks and a phone layout; curves.png (inspected as the matplotlib
figure the code builds) names which end of each panel is the recovered model, writes the HM at both
ends, draws the zero-shot and fine-tuned HM as reference lines and has one legend."""

from __future__ import annotations

import re
from pathlib import Path

from test_report import synthetic_report

from mergetune.core.evaluation.plots import curves_figure
from mergetune.core.evaluation.report import render_report


def _report() -> dict:
    report = synthetic_report()
    report["manifest"].update(
        finished_at="2026-12-07T16:04:05+01:00",
        checkpoint={"id": "ckpt_9f3a1b2c", "method": "coop", "sha256": "ab" * 32},
        dataset={"id": "ds_5e6f7a8b", "name": "eurosat-16-shot", "kind": "coop"},
    )
    return report


def test_header_names_job_dataset_checkpoint_backbone_and_date(tmp_path: Path) -> None:
    html = render_report(_report(), tmp_path)[0].read_text()
    header = html[html.index("<header") : html.index("</header>")]
    facts = dict(re.findall(r"<dt>(\w+)</dt><dd>([^<]*)", header))
    assert facts == {
        "Job": "job_abc123",
        "Dataset": "eurosat-16-shot ",
        "Checkpoint": "ckpt_9f3a1b2c ",
        "Backbone": "tiny-test ",
        "Date": "2026-12-07 15:04 UTC ",  # the manifest's time in UTC
    }
    assert "(ds_5e6f7a8b, coop)" in header and "(coop, sha256 abababababab)" in header
    assert "(random)" in header and "(finished)" in header


def test_header_says_what_an_old_report_did_not_record(tmp_path: Path) -> None:
    html = render_report({"job_id": "job_old"}, tmp_path)[0].read_text()
    header = html[html.index("<header") : html.index("</header>")]
    assert header.count("not recorded") == 4 and "job_old" in header


def test_landmarks_are_labelled_and_the_page_fits_a_phone(tmp_path: Path) -> None:
    html = render_report(_report(), tmp_path)[0].read_text()
    assert re.search(r'<meta name="viewport" content="width=device-width, initial-scale=1">', html)
    for tag in ("header", "main", "nav", "footer"):
        assert len(re.findall(rf"<{tag}[\s>]", html)) == 1, tag
    assert re.search(r'<header aria-label="Report">', html)
    assert re.search(r'<nav aria-label="Report sections">', html)
    assert re.search(r'<footer aria-labelledby="downloads-h">', html) and 'id="downloads-h"' in html
    assert html.index("<header") < html.index("<nav") < html.index("<main") < html.index("<footer")
    assert html.index('id="downloads"') > html.index("<footer")
    # every section the nav links to exists
    for target in re.findall(r"<nav[^>]*>.*?</nav>", html, re.S)[0].split('href="#')[1:]:
        assert f'id="{target.split(chr(34))[0]}"' in html
    css = html[html.index("<style>") : html.index("</style>")]
    assert "max-width:1100px" in css and "img{max-width:100%" in css
    # wide tables scroll inside themselves, never the page
    assert re.search(r"table\{[^}]*display:block;max-width:100%;overflow-x:auto", css)
    assert "@media (max-width:600px)" in css


def _texts(ax) -> list[str]:
    return [t.get_text() for t in ax.texts]


def test_curves_figure_marks_ends_references_and_has_one_legend() -> None:
    report = synthetic_report()
    fig = curves_figure(report["curves"], report["metrics"])
    axes = [ax for sub in fig.subfigs[1:] for ax in sub.axes]
    assert len(axes) == 6  # 2 spaces x 3 segments
    # one legend for the figure, none over the curves
    assert [ax.get_legend() for ax in axes] == [None] * 6
    legends = [leg for sub in fig.subfigs for leg in sub.legends] + list(fig.legends)
    assert len(legends) == 1
    assert [t.get_text() for t in legends[0].get_texts()] == [
        "base", "novel", "HM", "zero-shot HM 66.4", "fine-tuned HM 65.8",
    ]  # fmt: skip
    for ax in axes:
        ticks = [t.get_text() for t in ax.get_xticklabels()]
        title = ax.get_title()
        left, right = title.split(" → ")
        assert ticks[0] == f"0\n{left}" and ticks[-1] == f"1\n{right}"
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        # the reference lines sit at the report's zero-shot and fine-tuned HM
        assert list(lines["zero-shot HM"].get_ydata()) == [66.4, 66.4]
        assert list(lines["fine-tuned HM"].get_ydata()) == [65.79, 65.79]
        hm = list(lines["HM"].get_ydata())
        assert _texts(ax) == [f"{hm[0]:.1f}", f"{hm[-1]:.1f}"]
    first = axes[0]  # classifier space, zero-shot -> fine-tuned: base 60 -> 68, novel 70 -> 66
    assert _texts(first) == ["64.6", "67.0"]
    assert [t.get_text() for t in axes[1].get_xticklabels()][-1] == "1\nrecovered"


def test_curves_reference_lines_fall_back_to_the_segment_ends_without_metrics() -> None:
    seg = synthetic_report()["curves"]["classifier"]
    fig = curves_figure({"feature": seg})
    ax = fig.subfigs[1].axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert round(lines["zero-shot HM"].get_ydata()[0], 2) == 64.62  # HM(60, 70)
    assert round(lines["fine-tuned HM"].get_ydata()[0], 2) == 66.99  # HM(68, 66)
    assert curves_figure({}) is None
