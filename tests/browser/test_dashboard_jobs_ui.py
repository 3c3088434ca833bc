"""What an ML engineer does in the job list and on job pages (HTTP, no browser; real Postgres):
tags, notes and names through PATCH /v1/jobs/{id} and the page's form, search and sort over several
metric columns, compare 2-8 jobs at a shareable URL, clone-and-edit a job."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from browser_support import csrf_token, login, make_rows, new_project
from fastapi.testclient import TestClient


def _metrics(ft_hm: float, base: float, novel: float) -> dict[str, Any]:
    hm = round(2 * base * novel / (base + novel), 2)
    return {
        "zero_shot": {"base": 50.0, "novel": 60.0, "hm": 54.55},
        "fine_tuned": {"base": 70.0, "novel": 40.0, "hm": ft_hm},
        "recovered": {"base": base, "novel": novel, "hm": hm},
    }


def test_patch_sets_name_tags_and_notes_and_names_the_bad_field(
    app_client: TestClient, settings: Any
) -> None:
    url = settings.DATABASE_URL
    project, secret = new_project(url)
    _, other = new_project(url)
    (job_id,) = make_rows(url, project, jobs=[{"status": "succeeded"}])["job_ids"]
    h = {"Authorization": f"Bearer {secret}"}

    r = app_client.patch(f"/v1/jobs/{job_id}", headers=h,
                         json={"name": "w10 seed1", "tags": [" eurosat ", "w10", "eurosat"], "notes": "baseline\nrun"})  # fmt: skip
    assert r.status_code == 200, r.text
    job = r.json()
    assert (job["metadata"]["name"], job["tags"], job["notes"]) == (
        "w10 seed1",
        ["eurosat", "w10"],
        "baseline\nrun",
    )
    # omitted fields stay; [] and null clear
    r = app_client.patch(f"/v1/jobs/{job_id}", headers=h, json={"tags": []})
    assert (r.json()["tags"], r.json()["notes"], r.json()["metadata"]["name"]) == (
        [],
        "baseline\nrun",
        "w10 seed1",
    )
    r = app_client.patch(f"/v1/jobs/{job_id}", headers=h, json={"notes": None, "name": None})
    assert r.json()["notes"] is None and "name" not in r.json()["metadata"]

    r = app_client.patch(f"/v1/jobs/{job_id}", headers=h, json={"tags": ["x" * 41]})
    assert r.status_code == 422 and r.json()["error"]["param"].startswith("tags"), r.text
    r = app_client.patch(f"/v1/jobs/{job_id}", headers=h, json={"notes": "n" * 10_001})
    assert r.status_code == 422 and r.json()["error"]["param"] == "notes", r.text
    r = app_client.patch(f"/v1/jobs/{job_id}", headers=h, json={"status": "succeeded"})
    assert r.status_code == 422 and r.json()["error"]["param"] == "status", r.text
    r = app_client.patch(
        f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {other}"}, json={"tags": ["a"]}
    )
    assert r.status_code == 404

    # the page's form: same rules, the error names the field
    login(app_client, secret)
    page = app_client.get(f"/jobs/{job_id}").text
    r = app_client.post(f"/jobs/{job_id}/annotate", follow_redirects=False,
                        data={"csrf": csrf_token(page), "name": "renamed", "tags": "a, b ,a", "notes": "kept"})  # fmt: skip
    assert r.status_code == 303
    got = app_client.get(f"/v1/jobs/{job_id}", headers=h).json()
    assert (got["metadata"]["name"], got["tags"], got["notes"]) == ("renamed", ["a", "b"], "kept")
    r = app_client.post(f"/jobs/{job_id}/annotate", data={"csrf": csrf_token(page), "tags": "y" * 41})
    assert "tags: each tag must be 1-40 characters" in r.text
    assert (
        app_client.post(f"/jobs/{job_id}/annotate", data={"csrf": "0" * 64, "tags": "z"}).status_code == 403
    )


def test_list_searches_and_sorts_by_metric_columns(app_client: TestClient, settings: Any) -> None:
    url = settings.DATABASE_URL
    project, secret = new_project(url)
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    rows = make_rows(url, project, jobs=[
        {"status": "succeeded", "metrics": _metrics(50.0, 70.0, 60.0), "tags": ["eurosat"],
         "started_at": t0, "finished_at": t0 + timedelta(seconds=300), "metadata_": {"name": "alpha"}},
        {"status": "succeeded", "metrics": _metrics(50.0, 80.0, 70.0), "tags": ["dtd"],
         "started_at": t0, "finished_at": t0 + timedelta(seconds=100), "metadata_": {"name": "beta"}},
        {"status": "succeeded", "metrics": _metrics(60.0, 60.0, 50.0), "notes": "the EuroSAT rerun",
         "started_at": t0, "finished_at": t0 + timedelta(seconds=200), "metadata_": {"name": "gamma"}},
        {"status": "queued", "metadata_": {"name": "delta"}},
    ])  # fmt: skip
    a, b, c, d = rows["job_ids"]
    login(app_client, secret)

    def order(query: str) -> list[str]:
        return re.findall(r'<tr data-job-id="([^"]+)"', app_client.get("/?" + query).text)

    assert order("sort=hm&order=desc") == [b, a, c, d]  # 74.67, 64.62, 54.55; no metrics last
    assert order("sort=hm&order=asc") == [c, a, b, d]
    assert order("sort=duration&order=asc") == [b, c, a, d]
    assert order("sort=hm_gain&order=desc") == [b, a, c, d]  # +24.67, +14.62, -5.45
    assert order("sort=novel&order=desc") == [b, a, c, d]
    assert order("q=eurosat") == [c, a]  # a note and a tag (newest first)
    assert order("q=BETA") == [b]  # the name, any case
    assert order(f"q={rows['dataset_id']}&sort=hm") == [b, a, c, d]  # the dataset id
    page = app_client.get("/?sort=hm&order=desc").text
    assert "HM ▼" in page and 'data-col="hm_gain"><span class="pos">+24.67' in page
    assert f'data-copy="{a}"' in page  # copy buttons
    assert app_client.get("/?q=nothing-like-this").text.count("<tr data-job-id") == 0


def test_compare_two_jobs_side_by_side_at_a_shareable_url(app_client: TestClient, settings: Any) -> None:
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.models import Artifact, Job
    from mergetune.common.storage import get_store

    url = settings.DATABASE_URL
    project, secret = new_project(url)
    a, b = make_rows(url, project, jobs=[
        {"status": "succeeded", "metrics": _metrics(50.0, 70.0, 60.0), "verdict": {"text": "Recovered HM 64.6"}},
        {"status": "succeeded", "metrics": _metrics(50.0, 80.0, 70.0)},
    ])["job_ids"]  # fmt: skip
    report = {"curves": {"classifier": {"zs_rec": {"alphas": [0.0, 0.5, 1.0], "base_acc": [50.0, 60.0, 70.0],
                                                   "novel_acc": [50.0, 60.0, 30.0]}}}}  # fmt: skip
    data = json.dumps(report).encode()
    get_store(settings).put_bytes(f"jobs/{a}/report.json", data)
    with session_scope(url) as s:
        s.get(Job, b).hyperparameters = {"epochs": 5}
        s.add(Artifact(job_id=a, name="report.json", bytes=len(data), sha256="00" * 32,
                       media_type="application/json", key=f"jobs/{a}/report.json"))  # fmt: skip
        for epoch in (1, 2):
            repo.add_event(s, b, "epoch", "e", data={"epoch": epoch, "record": {"loss": 3.0 - epoch}})
    login(app_client, secret)

    page = app_client.get(f"/compare?ids={a}&ids={b}").text
    assert 'data-metric="recovered.hm"><strong>74.67</strong>' in page  # the best HM in bold
    assert 'data-metric="recovered.hm">64.62' in page
    assert "Recovered HM 64.6" in page
    assert re.search(r'<tr class="differs" data-key="hyperparameters.epochs"><th>hyperparameters.epochs</th>'
                     r"<td>2</td><td>5</td>", page)  # fmt: skip
    assert '<tr class="" data-key="checkpoint_id">' in page  # same checkpoint: not marked
    series = json.loads(re.search(r'id="compare-data">(.*?)</script>', page, re.S).group(1))
    assert series[0]["interpolation"] == [[0.0, 50.0], [0.5, 60.0], [1.0, 42.0]]  # 2*70*30/100
    assert [e["loss"] for e in series[1]["epochs"]] == [2.0, 1.0]

    r = app_client.get(f"/compare?ids={a}")
    assert r.status_code == 422 and "at least 2" in r.text
    r = app_client.get(f"/compare?ids={a}&ids=job_nope")
    assert r.status_code == 422 and "no job job_nope" in r.text


def test_clone_and_edit_fills_the_form_from_the_job(app_client: TestClient, settings: Any) -> None:
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job

    url = settings.DATABASE_URL
    project, secret = new_project(url)
    (job_id,) = make_rows(url, project, jobs=[{"status": "failed", "metadata_": {"name": "first try"}}])[
        "job_ids"
    ]
    with session_scope(url) as s:
        s.get(Job, job_id).hyperparameters = {"epochs": 7, "w_zs": 3.5, "seed": 2}
    login(app_client, secret)
    page = app_client.get(f"/jobs/{job_id}").text
    assert f'href="/jobs/new?clone={job_id}"' in page
    form = app_client.get(f"/jobs/new?clone={job_id}").text
    assert f'href="/jobs/{job_id}">{job_id}</a>' in form
    for field, value in (("epochs", "7"), ("w_zs", "3.5"), ("seed", "2"), ("name", "first try (clone)"),
                         ("backbone_model", "tiny-test")):  # fmt: skip
        assert re.search(rf'name="{field}"[^>]*value="{re.escape(value)}"', form), field
    assert app_client.get("/jobs/new?clone=job_nope").status_code == 404


def _dassl_bytes() -> bytes:
    import io

    import torch

    g = torch.Generator().manual_seed(0)
    state = {"state_dict": {"ctx": torch.randn(4, 512, generator=g), "token_prefix": torch.zeros(3, 1, 512),
             "token_suffix": torch.zeros(3, 72, 512)}, "epoch": 50, "optimizer": None, "scheduler": None}  # fmt: skip
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def test_upload_a_checkpoint_and_register_a_dataset_from_the_ui(
    app_client: TestClient, settings: Any
) -> None:
    url = settings.DATABASE_URL
    project, secret = new_project(url)
    h = {"Authorization": f"Bearer {secret}"}
    login(app_client, secret)
    csrf = csrf_token(app_client.get("/checkpoints").text)

    r = app_client.post("/checkpoints", data={"csrf": csrf, "name": "from the page", "method": "coop"},
                        files={"file": ("model.pth.tar-50", _dassl_bytes())}, follow_redirects=False)  # fmt: skip
    assert r.status_code == 303, r.text
    ckpt_id = r.headers["location"].split("uploaded=")[1]
    got = app_client.get(f"/v1/checkpoints/{ckpt_id}", headers=h).json()
    assert (got["status"], got["method"], got["name"], got["n_ctx"]) == ("ready", "coop", "from the page", 4)
    assert (
        f'id="upload-ok">Uploaded and checked: <code>{ckpt_id}</code>'
        in app_client.get(r.headers["location"]).text
    )

    # a file that is no checkpoint: the API's message, naming the field
    r = app_client.post(
        "/checkpoints", data={"csrf": csrf}, files={"file": ("notes.pth", b"just some text\n" * 10)}
    )
    assert r.status_code == 422
    assert re.search(
        r'id="upload-error"><code id="upload-error-param">file</code>: notes.pth was refused: ', r.text
    )
    r = app_client.post(
        "/checkpoints", data={"csrf": csrf, "method": "nonsense"}, files={"file": ("m.pt", b"x")}
    )
    assert r.status_code == 422 and '<code id="upload-error-param">method</code>' in r.text, r.text
    r = app_client.post("/checkpoints", data={"csrf": "0" * 64}, files={"file": ("m.pt", _dassl_bytes())})
    assert r.status_code == 403
    ready = [c for c in app_client.get("/v1/checkpoints", headers=h).json()["data"] if c["status"] == "ready"]
    assert [c["id"] for c in ready] == [ckpt_id]

    csrf = csrf_token(app_client.get("/datasets").text)
    r = app_client.post("/datasets", follow_redirects=False, data={"csrf": csrf, "name": "tiny", "kind": "builtin",
                        "options": '{"num_classes": 6, "train_per_class": 4, "val_per_class": 2, "test_per_class": 4}'})  # fmt: skip
    assert r.status_code == 303, r.text
    ds_id = r.headers["location"].split("registered=")[1]
    assert app_client.get(f"/v1/datasets/{ds_id}", headers=h).json()["num_classes"] == 6

    r = app_client.post("/datasets", data={"csrf": csrf, "name": "x", "kind": "builtin", "options": "{bad"})
    assert r.status_code == 422 and '<code id="register-error-param">options</code>: not valid JSON' in r.text
    assert 'value="{bad"' in r.text  # what was typed stays in the form
    r = app_client.post("/datasets", data={"csrf": csrf, "name": "x", "kind": "tarball"})
    assert r.status_code == 422 and '<code id="register-error-param">kind</code>' in r.text
    r = app_client.post("/datasets", data={"csrf": csrf, "name": "x", "kind": "coop", "coop_name": "eurosat",
                                           "path": "no/such/folder"})  # fmt: skip
    assert r.status_code in (400, 404, 422) and 'id="register-error-param">' in r.text, r.text
    assert len(app_client.get("/v1/datasets", headers=h).json()["data"]) == 1
