"""POST /v1/sweeps: cells from a CoOp output tree (zip / tar) or listed, x a grid; reads, cancel, report
formats; hostile archives refused with nothing stored. The broker is a real Redis; no worker runs."""

from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from typing import Any

import pytest
from api_support import TINY_DATASET
from hostile_archives import HOSTILE as HOSTILE_ARCHIVES
from tree_writer import coop_tree, tar_bytes, zip_bytes

OPTS = TINY_DATASET["options"]


def _datasets(client, auth, *names):
    out = {}
    for name in names:
        r = client.post("/v1/datasets", headers=auth, json={"name": name, "kind": "builtin", "options": OPTS})
        assert r.status_code == 201, r.text
        out[name] = r.json()
    return out


def _post_tree(client, auth, data: bytes, filename="output.zip", **spec: Any):
    return client.post(
        "/v1/sweeps",
        headers=auth,
        files={"file": (filename, data)},
        data={"spec": json.dumps(spec)} if spec else {},
    )


def _nothing_stored(client, auth, settings) -> None:
    assert client.get("/v1/checkpoints", headers=auth).json()["data"] == []
    assert client.get("/v1/sweeps", headers=auth).json()["data"] == []
    root = settings.ARTIFACT_URL
    stored = [os.path.join(d, f) for d, _, fs in os.walk(os.path.join(root, "checkpoints")) for f in fs]
    assert stored == []
    spool = [f for f in os.listdir(settings.tmp_dir) if f.startswith(("sweep-", "upload-"))]
    assert spool == []


def test_tree_upload_makes_one_job_per_run_and_reports(client, auth, settings, ctx_and_bytes, redis_client):
    _datasets(client, auth, "tiny_a", "tiny_b")
    ckpt = ctx_and_bytes[1]
    tree = coop_tree([("tiny_a", 1, ckpt), ("tiny_a", 2, ckpt), ("tiny_b", 1, ckpt), ("tiny_b", 2, ckpt)])
    tree[
        "output/base2new/train_base/tiny_a/shots_16/CoOp/vit_b16_ep50/seed1/prompt_learner/model.pth.tar-10"
    ] = b"x"
    before = redis_client.llen("mergetune")
    r = _post_tree(client, auth, zip_bytes(tree), hyperparameters={"epochs": 3}, name="b2n")
    assert r.status_code == 202, r.text
    sw = r.json()
    assert sw["name"] == "b2n" and sw["status"] == "queued" and sw["progress"]["jobs"] == 4
    assert [(c["dataset"], c["seed"]) for c in sw["cells"]] == [
        ("tiny_a", 1),
        ("tiny_a", 2),
        ("tiny_b", 1),
        ("tiny_b", 2),
    ]
    assert all(c["source"].endswith("model.pth.tar-50") for c in sw["cells"])  # the last epoch of each run
    assert sw["source"]["trainers"] == ["CoOp"] and sw["source"]["runs"] == 4
    assert redis_client.llen("mergetune") - before == 4  # enqueued after the commit
    jobs = [client.get(f"/v1/jobs/{j['id']}", headers=auth).json() for j in sw["jobs"]]
    assert [j["hyperparameters"]["seed"] for j in jobs] == [1, 2, 1, 2]
    assert {j["hyperparameters"]["epochs"] for j in jobs} == {3}
    assert jobs[2]["metadata"] == {
        "sweep": sw["id"],
        "sweep_cell": "2",
        "sweep_point": "0",
        "dataset": "tiny_b",
        "seed": "1",
    }
    cks = client.get("/v1/checkpoints", headers=auth).json()["data"]
    assert len(cks) == 4 and {c["status"] for c in cks} == {"ready"}
    assert client.get(f"/v1/sweeps/{sw['id']}", headers=auth).json()["id"] == sw["id"]
    assert [s["id"] for s in client.get("/v1/sweeps", headers=auth).json()["data"]] == [sw["id"]]

    rep = client.get(f"/v1/sweeps/{sw['id']}/report", headers=auth).json()
    assert [d["dataset"] for d in rep["table"]["datasets"]] == ["tiny_a", "tiny_b"] and rep["table"][
        "average"
    ]["datasets"] == 0
    for fmt, head in (("csv", "point,dataset,model"), ("tex", "\\begin{table}"), ("html", "<!DOCTYPE html>")):
        r = client.get(f"/v1/sweeps/{sw['id']}/report.{fmt}", headers=auth)
        assert r.status_code == 200 and r.text.startswith(head), r.text[:200]
    text = client.get(f"/v1/sweeps/{sw['id']}/report.txt", headers=auth)  # what `mergetune sweep wait` prints
    assert text.headers["content-type"].startswith("text/plain")
    assert text.text.splitlines()[0].split() == ["dataset", "method", "base", "novel", "HM"]
    assert (
        "tiny_a         (no finished cell yet)" in text.text
        and "Average        (no finished cell yet)" in text.text
    )
    assert client.get(f"/v1/sweeps/{sw['id']}/report.pdf", headers=auth).status_code == 404

    # Cancel: every job at once (none had started), then 409.
    r = client.post(f"/v1/sweeps/{sw['id']}/cancel", headers=auth)
    assert (
        r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["progress"]["cancelled"] == 4
    )
    assert client.post(f"/v1/sweeps/{sw['id']}/cancel", headers=auth).status_code == 409
    assert rep["table"]["selection"]["final"] is False  # before: cells still to run
    after = client.get(f"/v1/sweeps/{sw['id']}/report", headers=auth).json()
    assert after["table"]["selection"]["final"] is True  # nothing left to finish


def test_listed_cells_with_a_grid_and_idempotency(client, auth, checkpoint, dataset):
    body = {
        "cells": [{"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"], "seed": 3}],
        "grid": {"w_zs": [1.0, 10.0], "w_lmc": [0.5, 1.0]},
        "hyperparameters": {"epochs": 2},
    }
    h = {**auth, "Idempotency-Key": "sweep-1"}
    r = client.post("/v1/sweeps", headers=h, json=body)
    assert r.status_code == 202, r.text
    sw = r.json()
    assert sw["points"] == [{"w_zs": 1.0, "w_lmc": 0.5}, {"w_zs": 1.0, "w_lmc": 1.0},
                            {"w_zs": 10.0, "w_lmc": 0.5}, {"w_zs": 10.0, "w_lmc": 1.0}]  # fmt: skip
    hps = [client.get(f"/v1/jobs/{j['id']}", headers=auth).json()["hyperparameters"] for j in sw["jobs"]]
    assert [(hp["w_zs"], hp["w_lmc"], hp["seed"]) for hp in hps] == [
        (1, 0.5, 3),
        (1, 1, 3),
        (10, 0.5, 3),
        (10, 1, 3),
    ]
    again = client.post("/v1/sweeps", headers=h, json=body)
    assert again.status_code == 200 and again.json()["id"] == sw["id"]
    other = client.post("/v1/sweeps", headers=h, json={**body, "grid": {}})
    assert other.status_code == 409


@pytest.mark.parametrize(
    ("patch", "param"),
    [
        ({"grid": {"w_zs": [1.0, -1.0]}}, "grid.w_zs"),
        ({"grid": {"nope": [1]}}, "grid.nope"),
        ({"grid": {"seed": [1, 2]}}, "grid.seed"),
        ({"hyperparameters": {"seed": 4}}, "hyperparameters.seed"),
        ({"cells": []}, "cells"),
        ({"selection": "test_hm"}, "selection"),
        ({"dataset_map": {"a": "b"}}, "dataset_map"),
        ({"metadata": {"sweep": "x"}}, "metadata.sweep"),
    ],
)
def test_bad_requests_name_the_field_and_create_nothing(client, auth, checkpoint, dataset, patch, param):
    body = {"cells": [{"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"]}], **patch}
    r = client.post("/v1/sweeps", headers=auth, json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param
    assert client.get("/v1/sweeps", headers=auth).json()["data"] == []
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


def test_unknown_tree_dataset_needs_a_map(client, auth, settings, ctx_and_bytes):
    ds = _datasets(client, auth, "registered")["registered"]
    data = zip_bytes(coop_tree([("eurosat", 1, ctx_and_bytes[1])]))
    r = _post_tree(client, auth, data)
    assert r.status_code == 422 and r.json()["error"]["param"] == "dataset_map.eurosat", r.text
    assert r.json()["error"]["code"] == "unknown_dataset"
    _nothing_stored(client, auth, settings)
    r = _post_tree(client, auth, data, dataset_map={"eurosat": ds["id"]})
    assert r.status_code == 202, r.text
    assert r.json()["cells"][0]["dataset_id"] == ds["id"]


def _evil_checkpoint() -> bytes:
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    buf = io.BytesIO()
    torch.save({"state_dict": {"ctx": torch.zeros(4, 512)}, "evil": Evil()}, buf)
    return buf.getvalue()


def _zip_symlink(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        link = zipfile.ZipInfo("output/link")
        link.external_attr = 0o120777 << 16
        zf.writestr(link, "/etc/passwd")
    return buf.getvalue()


def _tar_with(kind: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo("output/tiny_a/other")
    info.type = {
        "sym": tarfile.SYMTYPE,
        "hard": tarfile.LNKTYPE,
        "fifo": tarfile.FIFOTYPE,
        "dev": tarfile.CHRTYPE,
    }[kind]
    info.linkname = "/etc/passwd"
    return info


HOSTILE = {
    "traversal": (lambda good: zip_bytes({**good, "output/../../evil.txt": b"x"}), "unsafe_archive"),
    "absolute": (lambda good: tar_bytes({**good, "/etc/cron.d/evil": b"x"}), "unsafe_archive"),
    "backslash": (lambda good: zip_bytes({**good, "output\\..\\evil": b"x"}), "unsafe_archive"),
    "zip_symlink": (_zip_symlink, "unsafe_archive"),
    "tar_symlink": (lambda good: tar_bytes(good, extra=[_tar_with("sym")]), "unsafe_archive"),
    "tar_hardlink": (lambda good: tar_bytes(good, extra=[_tar_with("hard")]), "unsafe_archive"),
    "tar_fifo": (lambda good: tar_bytes(good, extra=[_tar_with("fifo")]), "unsafe_archive"),
    "too_many_members": (
        lambda good: zip_bytes({**good, **{f"output/pad/{i}": b"" for i in range(40)}}),
        "too_many_members",
    ),
    "bomb": (lambda good: zip_bytes({**good, "output/zeros.bin": bytes(3 << 20)}), "archive_too_large"),
    "not_an_archive": (lambda good: b"just some bytes" * 100, "not_an_archive"),
    "two_trainers_one_seed": (
        lambda good: zip_bytes({**good, **coop_tree([("tiny_a", 1, b"x")], trainer="KgCoOp")}),
        "ambiguous_tree",
    ),
    "empty_tree": (lambda good: zip_bytes({"output/readme.txt": b"hi"}), "empty_tree"),
    "pickle_with_code": (
        lambda good: zip_bytes({**good, **coop_tree([("tiny_b", 1, _evil_checkpoint())])}),
        None,  # the upload service's own refusal code
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_refused_with_nothing_stored(make_client, auth, settings, ctx_and_bytes, case):
    # Small limits so that the bomb and member-count cases stay small: 30 members, 2 MiB unpacked.
    client = make_client(SWEEP_MAX_MEMBERS=30, SWEEP_MAX_UNPACKED_BYTES=2 << 20)
    _datasets(client, auth, "tiny_a", "tiny_b")
    good = coop_tree([("tiny_a", 1, ctx_and_bytes[1]), ("tiny_a", 2, ctx_and_bytes[1])])
    build, code = HOSTILE[case]
    r = _post_tree(client, auth, build(good))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == "file"
    if code is not None:
        assert err["code"] == code, err
    else:  # the second dataset's checkpoint is refused after the first two were stored: all removed
        assert "tiny_b/shots_16/CoOp/vit_b16_ep50/seed1" in err["message"], err
        assert "posix.system" in err["message"] or "os.system" in err["message"], err
    _nothing_stored(client, auth, settings)
    assert client.get("/v1/jobs", headers=auth).json()["data"] == []


@pytest.mark.parametrize("name", sorted(HOSTILE_ARCHIVES))
def test_archives_hostile_to_readers_get_422_with_their_code(client, auth, settings, name):
    # Read in the sandbox with the default limits: long-name and pax headers declaring GiBs, bombs,
    # malformed or sparse headers, control characters in names, tar/zip polyglots.
    _datasets(client, auth, "tiny_a")
    build, code = HOSTILE_ARCHIVES[name]
    r = _post_tree(client, auth, build(), filename=name)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["param"] == "file", r.text
    _nothing_stored(client, auth, settings)
    assert [p for p in settings.tmp_dir.iterdir() if p.name.startswith(("sweep-", "parse-"))] == []


def test_dashboard_sweep_page_fills_in_as_cells_finish(
    make_client, client, auth, settings, checkpoint, dataset
):
    from sqlalchemy import update

    from mergetune.common.db import session_scope
    from mergetune.common.models import Job

    body = {
        "cells": [{"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"], "seed": s} for s in (1, 2)]
    }
    sw = client.post("/v1/sweeps", headers=auth, json=body).json()
    browser = make_client()
    assert browser.get(f"/ui/sweeps/{sw['id']}/table").status_code == 401
    assert browser.get(f"/sweeps/{sw['id']}", follow_redirects=False).status_code == 303  # to /login
    r = browser.post(
        "/login", data={"token": auth["Authorization"].split()[1], "next": "/"}, follow_redirects=False
    )
    assert r.status_code == 303
    page = browser.get(f"/sweeps/{sw['id']}")
    assert page.status_code == 200
    assert all(f'href="/jobs/{j["id"]}"' in page.text for j in sw["jobs"])
    assert "no finished cell yet" in page.text
    assert sw["id"] in browser.get("/sweeps").text

    # One cell finishes (the worker's finishing write, done here on the row): its numbers appear.
    first = sw["jobs"][0]["id"]
    metrics = {"zero_shot": {"base": 60.0, "novel": 70.0, "hm": 0}, "fine_tuned": {"base": 90.0, "novel": 50.0, "hm": 0},
               "recovered": {"base": 88.0, "novel": 66.0, "hm": 0}}  # fmt: skip
    with session_scope(settings.DATABASE_URL) as s:
        s.execute(update(Job).where(Job.id == first).values(status="succeeded", metrics=metrics))
    frag = browser.get(f"/ui/sweeps/{sw['id']}/table")
    assert frag.status_code == 200 and 'data-status="running"' in frag.text
    assert "88.00" in frag.text and "75.43" in frag.text  # HM(88, 66) = 75.43
    assert browser.get(f"/sweeps/{sw['id']}/report.csv").text.startswith("point,dataset,model")

    other = make_client()
    from api_support import new_token

    other.post("/login", data={"token": new_token(settings.DATABASE_URL), "next": "/"})
    assert other.get(f"/sweeps/{sw['id']}").status_code == 404
    assert other.get(f"/ui/sweeps/{sw['id']}/table").status_code == 404


def test_other_media_types_are_refused(client, auth):
    r = client.post("/v1/sweeps", headers={**auth, "Content-Type": "text/plain"}, content=b"{}")
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type"
