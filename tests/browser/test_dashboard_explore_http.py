"""The dashboard's exploring pages over HTTP (real Postgres, no worker): the job list's hyperparameter
columns and their cookie, the compare page's warnings, names and "only differences" toggle, the sweep
page's scatter data, human dates and the HTML report opened in the browser."""

from __future__ import annotations

import json
import re
from typing import Any

from browser_support import login, new_project
from explore_support import make_rows, make_sweep, metrics
from fastapi.testclient import TestClient


def _jobs_rows(html: str) -> list[str]:
    return re.findall(r'<tr data-job-id="(job_[0-9a-z]+)"', html)


def _column(html: str, name: str) -> list[str]:
    return [v.strip() for v in re.findall(rf'data-col="hp\.{re.escape(name)}" class="hp">([^<]*)<', html)]


def test_job_list_shows_chosen_hyperparameter_columns_sorted_and_remembered(
    app_client: TestClient, settings: Any
) -> None:
    project, secret = new_project(settings.DATABASE_URL)
    rows = make_rows(
        settings.DATABASE_URL,
        project,
        jobs=[
            {"status": "succeeded", "hyperparameters": {"epochs": 2, "lr": 0.002, "w_lmc": 1.0},
             "metadata_": {"name": "base-lr"}, "metrics": metrics(60, 50, 55)},
            {"status": "succeeded", "hyperparameters": {"epochs": 4, "lr": 0.0005, "w_lmc": 10.0},
             "metadata_": {"name": "small-lr"}, "metrics": metrics(60, 52, 58)},
            {"status": "queued", "hyperparameters": {"epochs": 3, "lr": 0.01, "w_lmc": 0.5}},
        ],
    )  # fmt: skip
    a, b, c = rows["job_ids"]
    login(app_client, secret)

    r = app_client.get("/", params={"columns": "lr,w_lmc,epochs,name"})
    assert r.status_code == 200
    for label in ("lr", "w_lmc", "epochs", "name"):
        assert f'data-sort="{label}"' in r.text  # sortable header
    ids = _jobs_rows(r.text)
    assert ids == [c, b, a]  # newest first
    assert _column(r.text, "lr") == ["0.01", "0.0005", "0.002"]
    assert _column(r.text, "w_lmc") == ["0.5", "10.0", "1.0"]
    assert _column(r.text, "name") == ["—", "small-lr", "base-lr"]
    # The choice is remembered in a cookie; the filter form and the page links carry it.
    assert "mergetune_columns=lr.w_lmc.epochs.name" in r.headers["set-cookie"]
    assert 'name="columns" value="lr,w_lmc,epochs,name"' in r.text

    again = app_client.get("/")  # no columns: the cookie's choice
    assert _column(again.text, "epochs") == ["3", "4", "2"]

    by_lr = app_client.get("/", params={"sort": "lr", "order": "asc"})
    assert _jobs_rows(by_lr.text) == [b, a, c]
    assert _column(by_lr.text, "lr") == ["0.0005", "0.002", "0.01"]
    flip = re.search(r'href="([^"]+)" class="sort sorted-asc" data-sort="lr"', by_lr.text)
    assert flip and "columns=lr%2Cw_lmc%2Cepochs%2Cname" in flip.group(1)
    by_lr_desc = app_client.get(flip.group(1).replace("&amp;", "&"))
    assert _jobs_rows(by_lr_desc.text) == [c, a, b]
    next_link = app_client.get("/", params={"sort": "w_lmc", "limit": 1})
    link = re.search(r'href="([^"]+)" id="page-next"', next_link.text)
    assert link and "columns=" in link.group(1) and "sort=w_lmc" in link.group(1)

    # The picker lists the known names with the chosen ones ticked.
    picker = re.search(r'<details class="column-picker".*?</details>', again.text, re.S)
    assert picker and 'value="w_zs"' in picker.group(0) and 'value="backbone"' in picker.group(0)
    assert re.search(r'value="lr" checked', picker.group(0))
    assert not re.search(r'value="w_zs" checked', picker.group(0))

    # The picker's form sends an empty value first and one value per ticked box.
    picked = app_client.get("/?columns=&columns=backbone&columns=dataset")
    assert _column(picked.text, "backbone") == ["tiny-test / random"] * 3
    assert len(_column(picked.text, "dataset")) == 3 and "—" not in _column(picked.text, "dataset")
    assert _column(picked.text, "lr") == []

    reset = app_client.get("/?columns=")
    assert "mergetune_columns=" in reset.headers["set-cookie"]
    assert _column(reset.text, "backbone") == []
    assert _column(app_client.get("/").text, "backbone") == []  # forgotten


def test_unknown_column_names_are_named_with_the_closest_known_ones(
    app_client: TestClient, settings: Any
) -> None:
    project, secret = new_project(settings.DATABASE_URL)
    make_rows(settings.DATABASE_URL, project, jobs=[{"status": "queued", "hyperparameters": {"lr": 0.002}}])
    login(app_client, secret)
    r = app_client.get("/", params={"columns": "lr,w_lmcc,bogus"})
    assert r.status_code == 422
    message = re.search(r'<p class="error" id="columns-error"[^>]*>([^<]*)</p>', r.text)
    assert message, r.text[:2000]
    text = message.group(1).replace("&#39;", "'")
    assert "'w_lmcc' (did you mean 'w_lmc'?)" in text and "'bogus'" in text
    assert _column(r.text, "lr") == ["0.002"]  # the known one is still shown


def test_compare_names_runs_warns_when_incomparable_and_shows_only_differences(
    app_client: TestClient, settings: Any
) -> None:
    project, secret = new_project(settings.DATABASE_URL)
    rows = make_rows(
        settings.DATABASE_URL,
        project,
        datasets=2,
        jobs=[
            {"status": "succeeded", "metadata_": {"name": "lr-low"}, "metrics": metrics(60, 50, 55),
             "hyperparameters": {"epochs": 2, "lr": 0.001, "w_lmc": 1.0}},
            {"status": "succeeded", "metadata_": {"name": "lr-high"}, "metrics": metrics(60, 52, 58),
             "hyperparameters": {"epochs": 2, "lr": 0.004, "w_lmc": 1.0}},
            {"status": "succeeded", "metrics": metrics(70, 72, 80), "dataset": 1,
             "backbone": {"model": "tiny-test", "pretrained": "random:7"},
             "hyperparameters": {"epochs": 2, "lr": 0.002, "w_lmc": 1.0}},
        ],
    )  # fmt: skip
    a, b, c = rows["job_ids"]
    set_a, set_b = rows["dataset_names"]
    login(app_client, secret)

    comparable = app_client.get(f"/compare?ids={a}&ids={b}").text
    assert 'id="compare-warning"' not in comparable
    assert "<h1>Compare lr-low, lr-high</h1>" in comparable
    assert f'title="{a}">lr-low</a>' in comparable  # the name links to the run, its id in the title
    assert f'<th title="{b}">lr-high</th>' in comparable  # the settings columns are named too
    assert 'data-metric="recovered.hm"><strong>58.00</strong>' in comparable

    page = app_client.get(f"/compare?ids={a}&ids={b}&ids={c}")
    assert page.status_code == 200
    html = page.text
    warning = re.search(r'<div class="warning" id="compare-warning".*?</div>', html, re.S)
    assert warning, "no warning for runs on different datasets and weights"
    text = warning.group(0)
    short_c = "…" + c[-8:]
    assert f"<code>{set_a}</code> (lr-low, lr-high); <code>{set_b}</code> ({short_c})" in text
    assert 'data-differs="pretrained weights"' in text and "<code>random:7</code>" in text
    assert 'data-differs="dataset"' in text and 'data-differs="job type"' not in text
    # c (HM 80) is alone in its group: nothing of it is bolded; lr-high still wins among a and b.
    row_c = re.search(rf'<tr data-job-id="{c}" data-group="B">.*?</tr>', html, re.S)
    assert row_c and "<strong>" not in row_c.group(0) and 'data-metric="recovered.hm">80.00' in row_c.group(0)
    row_b = re.search(rf'<tr data-job-id="{b}" data-group="A">.*?</tr>', html, re.S)
    assert row_b and 'data-metric="recovered.hm"><strong>58.00</strong>' in row_b.group(0)
    assert "best value is bolded only within each group" in html

    # Settings: every row by default; ?diff=1 hides the equal ones (the switch links back).
    assert re.search(r'<tr class="" data-key="hyperparameters.epochs"><th>', html)
    assert re.search(r'<tr class="differs" data-key="hyperparameters.lr"><th>hyperparameters.lr</th>'
                     r"<td>0.001</td><td>0.004</td><td>0.002</td>", html)  # fmt: skip
    only = app_client.get(f"/compare?ids={a}&ids={b}&ids={c}&diff=1").text
    assert re.search(r'<tr class="" data-key="hyperparameters.epochs" hidden>', only)
    assert re.search(r'<tr class="" data-key="checkpoint_id" hidden>', only)
    assert re.search(r'<tr class="differs" data-key="hyperparameters.lr">', only)
    assert re.search(r'<tr class="differs" data-key="backbone">', only)
    switch = re.search(r'<a href="([^"]+)" id="diff-toggle" role="switch" aria-checked="true"', only)
    assert switch and "diff=1" not in switch.group(1) and c in switch.group(1)

    # The scatter's data: each run's name, link, hyperparameters and metrics; lr first among x choices.
    data = json.loads(re.search(r'id="explore-data">(.*?)</script>', html, re.S).group(1))
    assert [r["label"] for r in data["runs"]] == ["lr-low", "lr-high", short_c]
    assert data["runs"][2]["hp"]["lr"] == 0.002 and data["runs"][2]["href"] == f"/jobs/{c}"
    assert data["runs"][1]["metrics"]["recovered.hm"] == 58.0
    assert data["runs"][1]["metrics"]["hm_vs_zero_shot"] == 58.0 - 64.0
    assert data["runs"][0]["metrics"]["hm_vs_fine_tuned"] == 5.0
    assert data["differing"] == ["lr"]
    assert 'id="explore-parcoords"' in html and 'id="explore-parcoords"' not in comparable


def test_sweep_page_plots_swept_axes_with_human_dates_and_opens_its_html_report(
    app_client: TestClient, settings: Any
) -> None:
    project, secret = new_project(settings.DATABASE_URL)
    made = make_sweep(settings.DATABASE_URL, project, lrs=[0.001, 0.002, 0.004], w_lmcs=[1.0, 10.0])
    sweep_id = made["sweep_id"]
    login(app_client, secret)

    page = app_client.get(f"/sweeps/{sweep_id}")
    assert page.status_code == 200
    html = page.text
    created = re.search(
        r'<td id="sweep-created"><time datetime="([0-9T:-]+Z)" title="([^"]+) UTC">([^<]+)</time>', html
    )
    assert (
        created
        and created.group(3) == "7 min ago"
        and created.group(1).replace("T", " ")[:-1] == created.group(2)
    )
    assert re.search(
        r'id="sweep-finished"><time [^>]*>4 min ago</time> <span class="muted small">\(took 3m 00s\)', html
    )
    data = json.loads(re.search(r'id="sweep-explore-data">(.*?)</script>', html, re.S).group(1))
    assert data["axes"] == ["lr", "w_lmc"]
    assert len(data["cells"]) == 6
    by_point = {(c["params"]["lr"], c["params"]["w_lmc"]): c for c in data["cells"]}
    assert by_point[(0.004, 1.0)]["hm"] == 53.0 and by_point[(0.001, 10.0)]["hm"] == 41.0
    assert by_point[(0.002, 10.0)]["label"] == "builtin seed 1 (lr=0.002, w_lmc=10.0)"
    assert by_point[(0.002, 10.0)]["href"] == f"/jobs/{made['job_ids'][3]}"
    assert '<select id="sweep-x"><option value="lr">lr</option><option value="w_lmc">w_lmc</option>' in html

    listing = app_client.get("/sweeps").text
    assert re.search(
        rf'{sweep_id}</code>.*?<time datetime="[0-9T:-]+Z" title="[^"]+ UTC">7 min ago</time>', listing, re.S
    )

    # The HTML report opens in the browser (sandboxed); ?download=1 and the other formats download.
    report = app_client.get(f"/sweeps/{sweep_id}/report.html")
    assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
    assert report.headers["content-disposition"].startswith("inline;")
    assert report.headers["content-security-policy"].startswith("sandbox")
    assert report.headers["x-content-type-options"] == "nosniff"
    assert "<h1>Sweep lr-by-wlmc" in report.text
    download = app_client.get(f"/sweeps/{sweep_id}/report.html?download=1")
    assert download.headers["content-disposition"] == f'attachment; filename="{sweep_id}-report.html"'
    csv = app_client.get(f"/sweeps/{sweep_id}/report.csv")
    assert csv.headers["content-disposition"].startswith("attachment;")
