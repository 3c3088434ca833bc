"""``report.html`` on a phone: rendered from a full report (every section, the MMA curve spaces and an
extra evaluation) and opened from disk in a real headless Chromium at 390x844, the page does not scroll
sideways, the header's facts are on screen, and the landmarks are there. Screenshots at both sizes go
to test-artifacts/screens/report-<mobile|desktop>.png."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import ARTIFACTS

from mergetune.core.evaluation.report import render_report

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "core" / "evaluation"))
from test_report import synthetic_report  # noqa: E402

pytestmark = pytest.mark.browser

VIEWPORTS = {"mobile": (390, 844), "desktop": (1440, 900)}


def _full_report() -> dict:
    report = synthetic_report()
    seg = report["curves"]["classifier"]
    report["curves"].update(feature=dict(seg), adapter=dict(seg))
    report["manifest"].update(
        finished_at="2026-12-07T15:04:05+00:00",
        checkpoint={"id": "ckpt_9f3a1b2c4d5e6f70", "method": "mma", "sha256": "ab" * 32},
        dataset={
            "id": "ds_5e6f7a8b9c0d1e2f",
            "name": "eurosat-16-shot",
            "kind": "coop",
            "split_sha256": "cd" * 32,
        },
    )
    report["extra_evaluations"] = [
        {"dataset": "imagenet-sketch", "kind": "coop", "mapping": "same", "classes": 1000, "images": 50889,
         "zero_shot": 46.2, "fine_tuned": 44.1, "recovered": 47.0, "recovered_zs_ensemble": 47.3,
         "endpoint_ensemble": 46.9, "wise_ft": 47.1},
    ]  # fmt: skip
    return report


def test_report_fits_a_phone_and_names_its_run(page, tmp_path: Path) -> None:
    html, _ = render_report(_full_report(), tmp_path)
    shots = ARTIFACTS / "screens"
    shots.mkdir(parents=True, exist_ok=True)
    for name, (width, height) in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        page.goto(html.as_uri())
        page.screenshot(path=str(shots / f"report-{name}.png"), full_page=True)
        scroll, inner = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert scroll <= inner, (name, scroll, inner)
        facts = page.locator("header dd").all_inner_texts()
        assert [f.split(" (")[0] for f in facts] == [
            "job_abc123", "eurosat-16-shot", "ckpt_9f3a1b2c4d5e6f70", "tiny-test", "2026-12-07 15:04 UTC",
        ]  # fmt: skip
        box = page.locator("header dl").bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= inner
        for selector in ("header", "main", "footer", "nav[aria-label]"):
            assert page.locator(selector).count() == 1, selector
        img = page.locator("#curves-img").bounding_box()
        assert img is not None and img["x"] + img["width"] <= inner
