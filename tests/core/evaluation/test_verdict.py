"""The verdict a person reads first: text, deltas and warnings computed from metrics and baselines."""

from __future__ import annotations

import pytest

from mergetune.core.evaluation.result import (
    BASE_DROP_MARGIN,
    Baselines,
    FeatureInterpolation,
    Metrics,
    RecoveryResult,
    SplitMetrics,
    compute_verdict,
)


def _metrics(zs: tuple[float, float], ft: tuple[float, float], rec: tuple[float, float]) -> Metrics:
    return Metrics(
        zero_shot=SplitMetrics.of(*zs), fine_tuned=SplitMetrics.of(*ft), recovered=SplitMetrics.of(*rec)
    )


def _baselines(fi_hm: float, ens: tuple[float, float], alpha: float = 0.7) -> Baselines:
    return Baselines(
        feature_interpolation=FeatureInterpolation(alpha=alpha, base=fi_hm, novel=fi_hm, hm=fi_hm),
        ensemble=SplitMetrics.of(*ens),
    )


# The demo's figures: zero-shot 35.7/25.7, fine-tuned 37.9/22.3, recovered 44.5/24.7.
DEMO = _metrics((35.7, 25.7), (37.9, 22.3), (44.5, 24.7))


def test_good_result_reads_as_deltas_without_warnings():
    v = compute_verdict(DEMO, _baselines(28.08, (37.1, 24.6)))
    # HM: zs 2*35.7*25.7/61.4 = 29.885, ft 2*37.9*22.3/60.2 = 28.079, rec 2*44.5*24.7/69.2 = 31.767
    assert v.text == "Recovered HM 31.8 (+3.7 vs fine-tuned, +1.9 vs zero-shot); base +6.6, novel +2.4"
    assert v.ok and v.warnings == []
    assert v.hm_vs_fine_tuned == pytest.approx(31.767 - 28.079, abs=1e-3)
    assert v.base_vs_fine_tuned == pytest.approx(6.6) and v.novel_vs_fine_tuned == pytest.approx(2.4)


def test_worse_than_both_endpoints_warns_twice():
    # the case: recovered HM 22.9 against 28.1 fine-tuned and 29.9 zero-shot
    m = _metrics((35.7, 25.7), (37.9, 22.3), (30.0, 18.5))
    v = compute_verdict(m, _baselines(28.08, (37.1, 24.6)))
    codes = [w.code for w in v.warnings]
    assert codes[:2] == ["below_fine_tuned", "below_zero_shot"]
    assert not v.ok
    assert "Warning: recovered HM 22.9 is below the fine-tuned input's 28.1" in v.text
    assert "below zero-shot's 29.9" in v.text
    # base fell 7.9 points (> 2): base_drop; the ensemble (HM 29.6) beats it too
    assert "base_drop" in codes and "baseline_better" in codes


def test_base_drop_margin_is_strictly_more_than_the_documented_margin():
    assert BASE_DROP_MARGIN == 2.0
    at_margin = _metrics((30.0, 30.0), (50.0, 20.0), (48.0, 40.0))  # exactly 2.0 points lower
    assert "base_drop" not in [w.code for w in compute_verdict(at_margin, None).warnings]
    over = _metrics((30.0, 30.0), (50.0, 20.0), (47.8, 40.0))
    (w,) = compute_verdict(over, None).warnings
    assert w.code == "base_drop" and "fell 2.2 points (50.0 -> 47.8)" in w.message


def test_a_naive_baseline_that_beats_the_recovered_model_is_named():
    v = compute_verdict(DEMO, _baselines(33.0, (37.1, 24.6), alpha=0.4))
    (w,) = v.warnings
    assert w.code == "baseline_better"
    assert w.message == "feature interpolation (alpha 0.4) beats the recovered model: HM 33.0 vs 31.8"
    v = compute_verdict(DEMO, _baselines(28.0, (45.0, 26.0)))
    (w,) = v.warnings
    assert w.message.startswith(
        "zero-shot + fine-tuned ensemble beats the recovered model: HM 33.0 vs 31.8"
    )  # 2*45*26/71 = 32.96


def test_ties_at_the_printed_precision_do_not_warn():
    # recovered 31.76 vs a baseline at 31.80: both print as 31.8, so no warning contradicts the table
    v = compute_verdict(DEMO, _baselines(31.80, (37.1, 24.6)))
    assert v.ok


def test_result_fills_its_verdict_and_round_trips():
    r = RecoveryResult(metrics=DEMO, baselines=_baselines(28.08, (37.1, 24.6)), curves={})
    assert r.verdict is not None and r.verdict.ok
    dumped = r.model_dump(mode="json")
    assert dumped["verdict"]["text"].startswith("Recovered HM 31.8")
    assert RecoveryResult.model_validate(dumped) == r


def test_an_added_warning_extends_the_text_as_computed_ones_do():
    from mergetune.core.evaluation.result import with_warning

    clean = compute_verdict(DEMO, _baselines(28.08, (37.1, 24.6)))
    v = with_warning(clean, "adapters_unmoved", "the job barely changed the model")
    assert v.text == clean.text + ". Warning: the job barely changed the model"
    assert not v.ok and [w.code for w in v.warnings] == ["adapters_unmoved"]
    m = _metrics((35.7, 25.7), (37.9, 22.3), (30.0, 18.5))
    warned = compute_verdict(m, None)
    v2 = with_warning(warned, "adapters_unmoved", "x")
    assert v2.text == warned.text + "; x" and v2.warnings[-1].code == "adapters_unmoved"
    assert len(v2.warnings) == len(warned.warnings) + 1
