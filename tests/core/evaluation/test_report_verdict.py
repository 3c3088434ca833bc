"""report.html opens with the verdict (and its warnings), and its training section shows the loss parts
and validation accuracy."""

from __future__ import annotations

import html
from pathlib import Path

from mergetune.core.evaluation.report import build_html, render_report
from mergetune.core.evaluation.result import (
    Baselines,
    FeatureInterpolation,
    Metrics,
    RecoveryResult,
    SplitMetrics,
)

METRICS = Metrics(
    zero_shot=SplitMetrics.of(35.7, 25.7),
    fine_tuned=SplitMetrics.of(37.9, 22.3),
    recovered=SplitMetrics.of(44.5, 24.7),
)


def _report(fi_hm: float) -> dict:
    baselines = Baselines(
        feature_interpolation=FeatureInterpolation(alpha=0.3, base=40.0, novel=30.0, hm=fi_hm),
        ensemble=SplitMetrics.of(37.1, 24.6),
    )
    result = RecoveryResult(
        metrics=METRICS,
        baselines=baselines,
        curves={},
        training=[
            {
                "epoch": e,
                "loss": 3.0 - e,
                "ce": 2.0 - e / 2,
                "zs": 0.02,
                "lmc": 1.0,
                "lr": 0.002,
                "val_acc": 40.0 + e,
            }
            for e in range(3)
        ],
    )
    return {"job_id": "job_x", **result.model_dump(mode="json")}


def test_verdict_comes_first_and_names_what_beat_the_recovered_model(tmp_path: Path) -> None:
    page = build_html(_report(fi_hm=34.29), None, None)
    first = page.index('id="verdict"')
    assert first < page.index(">Summary</h2>")
    assert 'class="verdict warn"' in page
    assert "Recovered HM 31.8 (+3.7 vs fine-tuned, +1.9 vs zero-shot); base +6.6, novel +2.4" in page
    assert 'data-code="baseline_better"' in page
    assert html.escape("feature interpolation (alpha 0.3) beats the recovered model: HM 34.3 vs 31.8") in page


def test_a_clean_verdict_and_an_old_report_without_one(tmp_path: Path) -> None:
    report = _report(fi_hm=28.1)
    assert 'class="verdict ok"' in build_html(report, None, None)
    del report["verdict"]  # a report.json written before verdicts: computed from its metrics
    assert "Recovered HM 31.8 (+3.7 vs fine-tuned" in build_html(report, None, None)


def test_training_section_shows_validation_accuracy(tmp_path: Path) -> None:
    paths = render_report(_report(fi_hm=28.1), tmp_path)
    page = paths[0].read_text()
    assert "<th>val_acc</th>" in page and "<td>42.00</td>" in page
    assert 'id="training-img"' in page  # the plot (loss, parts and validation accuracy panels)
