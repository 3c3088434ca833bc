"""The sweep table against numbers worked by hand: seed means, ddof=0 std, HM of the means (not the mean
of per-seed HMs), the average over datasets, deltas, the grid selection on validation accuracy."""

from __future__ import annotations

import csv
import io

import pytest

from mergetune.core.evaluation.sweep_table import CellResult, build_table, select_point, to_csv, to_latex

A1 = {"zero_shot": (70, 80), "fine_tuned": (90, 60), "recovered": (88, 74),
      "feature_interpolation": (89, 66), "ensemble": (85, 70)}  # fmt: skip
A2 = {"zero_shot": (70, 80), "fine_tuned": (86, 64), "recovered": (84, 76),
      "feature_interpolation": (87, 68), "ensemble": (83, 72)}  # fmt: skip
B1 = {"zero_shot": (60, 50), "fine_tuned": (80, 40), "recovered": (78, 52),
      "feature_interpolation": (79, 45), "ensemble": (75, 48)}  # fmt: skip
B2 = {"zero_shot": (60, 50), "fine_tuned": (80, 40), "recovered": (76, 54),
      "feature_interpolation": (79, 45), "ensemble": (75, 48)}  # fmt: skip


def _cells(point: int = 0, vals: tuple[float, ...] = (80, 82, 70, 72)) -> list[CellResult]:
    return [
        CellResult("eurosat", 1, point, A1, vals[0]),
        CellResult("eurosat", 2, point, A2, vals[1]),
        CellResult("dtd", 1, point, B1, vals[2]),
        CellResult("dtd", 2, point, B2, vals[3]),
    ]


def test_per_dataset_seed_means_std_and_hm_of_means():
    t = build_table(_cells(), datasets=["eurosat", "dtd"], cells_per_point=4)
    eurosat, dtd = t["datasets"]
    assert eurosat["dataset"] == "eurosat" and eurosat["seeds"] == [1, 2]
    ft, rec, zs = eurosat["rows"]["fine_tuned"], eurosat["rows"]["recovered"], eurosat["rows"]["zero_shot"]
    assert (ft["base"], ft["base_std"], ft["novel"], ft["novel_std"]) == (88, 2, 62, 2)
    assert ft["hm"] == pytest.approx(2 * 88 * 62 / 150)  # 72.7467
    assert (rec["base"], rec["base_std"], rec["novel"], rec["novel_std"]) == (86, 2, 75, 1)
    assert rec["hm"] == pytest.approx(12900 / 161)  # 80.1242: HM of the means ...
    assert rec["hm"] != pytest.approx((2 * 88 * 74 / 162 + 2 * 84 * 76 / 160) / 2)  # ... not 80.0975
    assert zs["hm"] == pytest.approx(11200 / 150) and zs["base_std"] == 0
    assert eurosat["delta_vs_fine_tuned"] == pytest.approx(
        {"base": -2, "novel": 13, "hm": 12900 / 161 - 10912 / 150}
    )
    assert eurosat["delta_vs_zero_shot"] == pytest.approx(
        {"base": 16, "novel": -5, "hm": 12900 / 161 - 11200 / 150}
    )
    assert (
        eurosat["rows"]["feature_interpolation"]["base"] == 88 and eurosat["rows"]["ensemble"]["novel"] == 71
    )
    assert dtd["rows"]["recovered"]["hm"] == pytest.approx(8162 / 130)  # 77 and 53


def test_average_over_datasets_is_the_hm_of_averaged_base_and_novel():
    avg = build_table(_cells(), datasets=["eurosat", "dtd"])["average"]
    assert avg["datasets"] == 2
    assert avg["rows"]["fine_tuned"] == pytest.approx({"base": 84, "novel": 51, "hm": 8568 / 135})
    assert avg["rows"]["recovered"] == pytest.approx({"base": 81.5, "novel": 64, "hm": 10432 / 145.5})
    assert avg["rows"]["zero_shot"] == pytest.approx({"base": 65, "novel": 65, "hm": 65})
    assert avg["delta_vs_fine_tuned"]["hm"] == pytest.approx(10432 / 145.5 - 8568 / 135)  # +8.2309
    assert avg["delta_vs_zero_shot"]["hm"] == pytest.approx(10432 / 145.5 - 65)  # +6.6976


def test_grid_selects_the_best_mean_validation_accuracy_and_keeps_every_point():
    cells = _cells(0, (80, 82, 70, 72)) + _cells(1, (85, 83, 70, 70))  # means 76 and 77
    points = [{"w_zs": 1.0}, {"w_zs": 10.0}]
    t = build_table(cells, datasets=["eurosat", "dtd"], points=points, cells_per_point=4)
    assert t["selection"] == {"rule": "val_acc", "point": 1, "params": {"w_zs": 10.0}, "final": True}
    assert [g["val_acc"] for g in t["grid"]] == [76, 77]
    assert [g["done"] for g in t["grid"]] == [4, 4]
    assert t["average"] == t["grid"][1]["average"]
    # Ties go to the earlier point; no validation numbers yet: no choice.
    assert select_point(_cells(0, (1, 2, 3, 4)) + _cells(1, (4, 3, 2, 1)), 2) == 0
    assert select_point([CellResult("x", 1, 0, A1, None)], 2) is None
    partial = build_table(cells[:5], datasets=["eurosat", "dtd"], points=points, cells_per_point=4)
    assert partial["selection"]["final"] is False


def test_unfinished_datasets_keep_their_row_and_stay_out_of_the_average():
    t = build_table(_cells()[:2], datasets=["eurosat", "dtd"], cells_per_point=4)
    assert t["datasets"][1] == {"dataset": "dtd", "seeds": [], "rows": {}, "delta_vs_fine_tuned": None,
                                "delta_vs_zero_shot": None}  # fmt: skip
    assert t["average"]["datasets"] == 1
    assert t["average"]["rows"]["recovered"]["base"] == 86
    assert "dtd & -- & -- & -- & --" in to_latex(t)


def test_csv_and_latex_render_the_same_numbers():
    t = build_table(_cells(), datasets=["eurosat", "dtd"])
    rows = list(csv.DictReader(io.StringIO(to_csv(t))))
    rec = next(r for r in rows if r["dataset"] == "eurosat" and r["model"] == "recovered")
    assert (rec["base"], rec["base_std"], rec["novel"], rec["hm"], rec["seeds"]) == (
        "86.00",
        "2.00",
        "75.00",
        "80.12",
        "1;2",
    )
    avg = next(r for r in rows if r["dataset"] == "Average" and r["model"] == "delta_vs_fine_tuned")
    assert avg["hm"] == "8.23"
    tex = to_latex(t)
    assert r"\textbf{86.00$_{\pm 2.00}$} & \textbf{75.00$_{\pm 1.00}$} & \textbf{80.12}" in tex
    assert r" & $\Delta$ vs fine-tuned & -2.50 & +13.00 & +8.23 \\" in tex
    assert tex.count(r"\midrule") == 3  # header, eurosat | dtd, dtd | Average
    named = build_table([CellResult("a_b&c", 1, 0, A1, None)], datasets=["a_b&c"])
    assert r"a\_b\&c" in to_latex(named)


def test_text_rendering_for_terminals():
    from mergetune.core.evaluation.sweep_table import to_text

    cells = _cells(0, (80, 82, 70, 72)) + _cells(1, (85, 83, 70, 70))
    text = to_text(
        build_table(cells, datasets=["eurosat", "dtd"], points=[{"w_zs": 1}, {"w_zs": 10}], cells_per_point=4)
    )
    lines = text.splitlines()
    rec = next(ln for ln in lines if ln.startswith("eurosat") or "MergeTune" in ln)
    assert "MergeTune (recovered)" in text and " 86.00 ± 2.00" in text and "80.12" in text
    assert any(ln.startswith("Average") for ln in lines) and rec
    assert "* point 1" in text and "selected by val_acc: point 1" in text
