"""mergetune.core.evaluation.report: report.html holds every number of report.json, curves.png is a real PNG."""

from __future__ import annotations

import base64
import re
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from mergetune.core.evaluation.report import render_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ALPHAS = [round(0.25 * i, 2) for i in range(5)]


def _segment(offset: float, barrier_base: float, barrier_novel: float) -> dict:
    return {
        "alphas": ALPHAS,
        "base_acc": [60.0 + offset + 2 * i for i in range(5)],
        "novel_acc": [70.0 - offset - i for i in range(5)],
        "base_loss": [1.2, 1.0, 0.9, 0.8, 0.7],
        "novel_loss": [0.9, 1.0, 1.05, 1.1, 1.2],
        "barrier_base": barrier_base,
        "barrier_novel": barrier_novel,
    }


def synthetic_report() -> dict:
    return {
        "job_id": "job_abc123",
        "metrics": {
            "zero_shot": {"base": 61.25, "novel": 72.5, "hm": 66.4},
            "fine_tuned": {"base": 80.75, "novel": 55.5, "hm": 65.79},
            "recovered": {"base": 79.5, "novel": 70.25, "hm": 74.52},
        },
        "baselines": {
            "feature_interpolation": {"alpha": 0.45, "base": 75.31, "novel": 66.02, "hm": 70.36},
            "ensemble": {"base": 77.77, "novel": 64.44, "hm": 70.48},
        },
        "curves": {
            "classifier": {
                "zs_ft": _segment(0.0, 0.4321, 0.1234),
                "zs_rec": _segment(1.0, 0.0123, 0.0456),
                "ft_rec": _segment(2.0, 0.0071, 0.0089),
            },
            "prompt": {
                "zs_ft": _segment(0.5, 0.9876, 0.5432),
                "zs_rec": _segment(1.5, 0.2468, 0.1357),
                "ft_rec": _segment(2.5, 0.0579, 0.0246),
            },
        },
        "training": [
            {
                "epoch": e,
                "loss": 2.0 - 0.3 * e,
                "ce": 1.0 - 0.1 * e,
                "zs": 0.05,
                "lmc": 0.9 - 0.1 * e,
                "lr": 0.002,
            }
            for e in range(1, 5)
        ],
        "timings": {"train": 12.5, "evaluate": 3.25},
        "config": {"hyperparameters": {"epochs": 4, "w_zs": 10.0}},
        # The layout the worker writes (worker/pipeline.py): provenance grouped by object.
        "manifest": {
            "job_id": "job_abc123",
            "seed": 7,
            "config": {"hyperparameters": {"epochs": 4, "lr": 0.002, "w_zs": 10.0, "loss_type": "cosine"}},
            "dataset": {"name": "builtin-tiny", "split_sha256": "ds" + "a1" * 31},
            "backbone": {"model": "tiny-test", "pretrained": "random", "weights_sha256": "random:1234"},
            "packages": {"torch": "2.14.1", "open_clip_torch": "3.3.0"},
            "worker": {"node": "w1@test", "host": "worker-<host>-1", "device": "cpu"},
            "timings": {"total": 15.75},
        },
        "extra_evaluations": [],
    }


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_render_report_writes_html_with_every_number_and_a_valid_png(tmp_path: Path) -> None:
    paths = render_report(synthetic_report(), tmp_path / "out")
    html_path, png_path = tmp_path / "out" / "report.html", tmp_path / "out" / "curves.png"
    assert paths == [html_path, png_path]
    page = html_path.read_text(encoding="utf-8")

    # Summary: every metric to two decimals, and deltas vs fine-tuned and zero-shot.
    for value in ("61.25", "72.50", "66.40", "80.75", "55.50", "65.79", "79.50", "70.25", "74.52"):
        assert value in page, value
    assert "+14.75" in page  # recovered novel vs fine-tuned: 70.25 - 55.5
    assert "-1.25" in page  # recovered base vs fine-tuned: 79.5 - 80.75
    assert "+18.25" in page  # recovered base vs zero-shot: 79.5 - 61.25
    assert "+8.12" in page  # recovered HM vs zero-shot: 74.52 - 66.40

    # Barrier heights of all six segments, both spaces labelled.
    for value in ("0.4321", "0.1234", "0.0123", "0.0456", "0.0071", "0.0089", "0.9876", "0.5432"):
        assert value in page, value
    assert "classifier (text-feature) space" in page and "prompt-parameter space" in page

    # Baselines.
    for value in ("0.45", "75.31", "66.02", "70.36", "77.77", "64.44", "70.48"):
        assert value in page, value

    # Manifest: the provenance summary pulls seed, split hash, weights hash and worker host out of it,
    # HTML-escaped where needed; hyperparameters and package versions get their own tables.
    summary = page[page.index(">Manifest</h2>") : page.index("Full manifest")]
    for label, value in (
        ("seed", "7"),
        ("dataset split sha256", "ds" + "a1" * 31),
        ("backbone weights hash", "random:1234"),
        ("worker host", "worker-&lt;host&gt;-1 (w1@test)"),
        ("total time (s)", "15.75"),
    ):
        assert f'<th class="l">{label}</th><td class="l">{value}</td>' in summary, label
    for value in ("2.14.1", "3.3.0", "cosine", "0.002"):
        assert value in summary, value
    assert "worker-<host>-1" not in page

    # Self-contained: two inline PNGs that decode, no external references, relative download links.
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 2
    for uri in uris:
        width, height = _png_size(base64.b64decode(uri))
        assert width > 100 and height > 100
    assert "http://" not in page and "https://" not in page
    assert re.search(r"<link|<script", page) is None
    for name in ("prompts.safetensors", "prompts.pth.tar", "report.json", "manifest.json", "curves.png"):
        assert f'href="{name}"' in page

    # curves.png on disk: a PNG, the same image as the first inline one: a title, then one row of 3
    # segments per space (2 spaces) -> 13 x (0.9 + 2 x 3.4) inches at 100 dpi.
    png = png_path.read_bytes()
    width, height = _png_size(png)
    assert base64.b64decode(uris[0]) == png
    assert width == 1300 and height == 770


def test_render_report_survives_missing_optional_parts(tmp_path: Path) -> None:
    report = {
        "job_id": "job_min",
        "metrics": {"zero_shot": {"base": 50.0, "novel": 60.0, "hm": 54.55}},
        "curves": {"classifier": {"zs_ft": {"alphas": [0.0, 1.0], "base_acc": [50.0, None]}}},
        "training": [{"epoch": 1, "loss": 1.5, "ce": 1.5, "zs": None, "lmc": None, "lr": 0.002}],
        "extra_evaluations": [{"dataset": "imagenet-v2", "accuracy": 41.5}],
    }
    html_path, png_path = render_report(report, tmp_path)
    page = html_path.read_text(encoding="utf-8")
    assert "54.55" in page
    assert "No baselines recorded." in page
    assert "No manifest recorded." in page
    assert "imagenet-v2" in page and "41.5" in page
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE


def test_manifest_summary_reads_the_flat_layout_too(tmp_path: Path) -> None:
    manifest = {
        "seed": 3,
        "hyperparameters": {"epochs": 9},
        "dataset_split_sha256": "f" * 64,
        "backbone_weights_sha256": "e" * 64,
        "package_versions": {"numpy": "2.4.6"},
        "worker_host": "gpu-7",
        "timings": {"total": 2.5},
    }
    html_path, _ = render_report({"manifest": manifest}, tmp_path)
    page = html_path.read_text(encoding="utf-8")
    for label, value in (
        ("seed", "3"),
        ("dataset split sha256", "f" * 64),
        ("backbone weights hash", "e" * 64),
        ("worker host", "gpu-7"),
        ("total time (s)", "2.5"),
        ("epochs", "9"),
        ("numpy", "2.4.6"),
    ):
        assert f'<th class="l">{label}</th><td class="l">{value}</td>' in page, label


def test_render_report_with_empty_report_still_writes_both_files(tmp_path: Path) -> None:
    html_path, png_path = render_report({}, tmp_path)
    page = html_path.read_text(encoding="utf-8")
    assert "No metrics recorded." in page and "No interpolation curves recorded." in page
    assert png_path.read_bytes()[:8] == PNG_SIGNATURE


@pytest.mark.parametrize("module", ["mergetune.core.evaluation.report", "mergetune.core.evaluation.plots"])
def test_importing_report_does_not_import_matplotlib(module: str) -> None:
    code = f"import sys, {module}; assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])


def _head_report() -> dict:
    """A linear-head job's report.json part, validated against mergetune.core.evaluation.result's schema."""
    from mergetune.core.evaluation.result import HeadReport

    models = ("zero_shot", "fine_tuned", "merged", "merged_zs_ensemble", "endpoint_ensemble", "wise_ft")

    def split(name: str, kind: str, accs: tuple[float, ...]) -> dict:
        return {
            "name": name,
            "kind": kind,
            "images": 40,
            "classes": 8,
            "accuracy": dict(zip(models, accs, strict=True)),
            "loss": {m: 0.5 + 0.1 * i for i, m in enumerate(models)},
        }

    head = HeadReport(
        classes=8,
        dim=64,
        bias=True,
        models={m: f"description of {m}" for m in models},
        splits=[
            split("val", "validation", (41.11, 88.12, 86.13, 84.14, 80.15, 82.16)),
            split("test", "in_distribution", (42.21, 90.22, 87.23, 85.24, 81.25, 83.26)),
            split("hue-shift", "shift", (38.31, 20.32, 33.33, 39.34, 30.35, 31.36)),
        ],
        wise_ft={
            "alphas": [0.0, 0.5, 1.0],
            "accuracy": {"val": [41.11, 84.41, 88.12], "hue-shift": [38.31, 29.42, 20.32]},
            "loss": {"val": [1.2, 0.7, 0.5], "hue-shift": [1.3, 1.5, 1.9]},
            "best_alpha": 0.5,
            "selected_on": "val",
        },
    )
    return head.model_dump(mode="json")


def test_report_renders_the_head_splits_wise_ft_sweep_and_extra_columns(tmp_path: Path) -> None:
    report = synthetic_report()
    report["head"] = _head_report()
    report["extra_evaluations"] = [
        {"dataset": "hue-shift", "kind": "shift", "mapping": "same", "classes": 8, "images": 40,
         "zero_shot": 38.31, "fine_tuned": 20.32, "recovered": 33.33, "recovered_zs_ensemble": 39.34,
         "endpoint_ensemble": 30.35, "wise_ft": 31.36},
        {"dataset": "other-set", "kind": "cross_dataset", "mapping": "other", "classes": 5, "images": 10,
         "zero_shot": 55.55, "fine_tuned": None, "recovered": None, "recovered_zs_ensemble": None,
         "endpoint_ensemble": None, "wise_ft": None},
    ]  # fmt: skip
    html_path, _ = render_report(report, tmp_path)
    page = html_path.read_text(encoding="utf-8")

    # Per-split table: every split, every model's accuracy, the best per split in bold, deltas vs ZS.
    table = page[page.index('<table id="head-splits">') :]
    table = table[: table.index("</table>")]
    for label in ("Zero-shot", "Fine-tuned", "Merged (MergeTune)", "Merged + zero-shot ensemble",
                  "Endpoint ensemble (zero-shot + fine-tuned)", "WiSE-FT (chosen alpha)"):  # fmt: skip
        assert f"<th>{label}</th>" in table, label
    for name, kind in (("val", "validation"), ("test", "in_distribution"), ("hue-shift", "shift")):
        assert f'<th class="l">{name}</th><td class="l">{kind}</td>' in table, name
    for value in ("41.11", "90.22", "87.23", "85.24", "81.25", "83.26", "20.32", "33.33", "39.34"):
        assert value in table, value
    assert "<strong>90.22</strong>" in table and "<strong>39.34</strong>" in table
    assert "-17.99" in table  # fine-tuned vs zero-shot under shift: 20.32 - 38.31
    assert "loss 0.5000" in table
    assert "description of merged_zs_ensemble" in page

    # WiSE-FT sweep: the chosen alpha stated, a plot, and the table with the chosen row marked.
    assert 'id="wiseft-alpha"' in page and "<strong>0.50</strong>" in page
    sweep = page[page.index('<table id="wiseft">') :]
    sweep = sweep[: sweep.index("</table>")]
    assert '<tr class="chosen"><th class="l">0.50 (chosen)</th><td>84.41</td><td>29.42</td></tr>' in sweep
    uris = re.findall(r'<img id="wiseft-img" alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(uris) == 1 and _png_size(base64.b64decode(uris[0]))[0] > 100

    # Extra evaluations: one row per dataset, the models as columns, a dash where a model has no number.
    extra = page[page.index('<table id="extra">') :]
    extra = extra[: extra.index("</table>")]
    for label in ("Zero-shot", "Fine-tuned", "Recovered", "Recovered + zero-shot ensemble", "WiSE-FT"):
        assert f"<th>{label}</th>" in extra, label
    assert "hue-shift" in extra and "other-set" in extra and "55.55" in extra and "—" in extra
    assert '<td>33.33<span class="sub">vs ZS <span class="neg">-4.98</span></span></td>' in extra

    # A head job links its head, not prompt files.
    assert 'href="head.safetensors"' in page and 'href="prompts.pth.tar"' not in page


def test_prompt_job_extra_evaluations_show_zero_shot_fine_tuned_and_recovered(tmp_path: Path) -> None:
    report = synthetic_report()
    report["extra_evaluations"] = [
        {"dataset": "eurosat-all", "kind": "cross_dataset", "mapping": "other", "classes": 10, "images": 50,
         "zero_shot": 45.5, "fine_tuned": 38.25, "recovered": 47.75, "recovered_zs_ensemble": None,
         "endpoint_ensemble": None, "wise_ft": None},
    ]  # fmt: skip
    html_path, _ = render_report(report, tmp_path)
    page = html_path.read_text(encoding="utf-8")
    extra = page[page.index('<table id="extra">') :]
    extra = extra[: extra.index("</table>")]
    assert "<th>Zero-shot</th><th>Fine-tuned</th><th>Recovered</th>" in extra
    assert "Ensemble" not in extra and "WiSE-FT" not in extra  # columns no row has numbers for
    assert "eurosat-all" in extra and "45.50" in extra and "38.25" in extra and "47.75" in extra
    assert 'id="wiseft-img"' not in page and "Linear head" not in page


def test_curves_png_has_hm_curves_and_one_row_per_space() -> None:
    from mergetune.core.evaluation.plots import hm_series, plot_curves

    # HM point by point, by hand: 2 * 60 * 40 / 100 = 48; 2 * 50 * 50 / 100 = 50; a gap stays a gap
    hm = hm_series([60.0, 50.0, float("nan")], [40.0, 50.0, 30.0])
    assert hm[:2] == [48.0, 50.0] and hm[2] != hm[2]
    seg = {"alphas": [0.0, 1.0], "base_acc": [60.0, 70.0], "novel_acc": [40.0, 30.0]}
    one = plot_curves({"classifier": {"zs_ft": seg}})
    two = plot_curves({"classifier": {"zs_ft": seg}, "prompt": {"zs_rec": seg}})
    assert one is not None and two is not None
    assert _png_size(one) == (1300, 430) and _png_size(two) == (1300, 770)
    assert plot_curves({}) is None
