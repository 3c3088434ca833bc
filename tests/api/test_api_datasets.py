from __future__ import annotations

import os

import pytest
from api_support import TINY_DATASET


def test_builtin_dataset_needs_no_path(client, auth):
    r = client.post("/v1/datasets", headers=auth, json=TINY_DATASET)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["id"].startswith("ds_")
    assert body["kind"] == "builtin"
    assert body["num_classes"] == 6
    assert len(body["classnames"]) == 6
    assert body["base_classes"] == body["classnames"][:3]
    assert body["novel_classes"] == body["classnames"][3:]
    assert body["split_sizes"] == {"train": 24, "val": 12, "test": 24}
    assert len(body["sha256_of_split"]) == 64
    assert "{}" in body["template"]
    assert client.get(f"/v1/datasets/{body['id']}", headers=auth).json() == body


@pytest.mark.parametrize("path", ["../outside", "/etc", "a/../../outside", "escape"])
def test_dataset_path_escape_is_refused(client, auth, settings, tmp_path, path):
    outside = tmp_path / "outside"
    (outside / "train" / "cat").mkdir(parents=True)
    os.symlink(outside, settings.DATA_ROOT / "escape")
    r = client.post("/v1/datasets", headers=auth, json={"name": "x", "kind": "imagefolder", "path": path})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "path_outside_root"
    assert r.json()["error"]["param"] == "path"


def test_dataset_missing_path_and_folder(client, auth):
    r = client.post("/v1/datasets", headers=auth, json={"name": "x", "kind": "imagefolder"})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "path"
    r = client.post("/v1/datasets", headers=auth, json={"name": "x", "kind": "imagefolder", "path": "nope"})
    assert r.status_code == 422
    assert r.json()["error"] == {
        "code": "not_found",
        "message": "dataset folder 'nope' not found under the data root",
        "param": "path",
    }
    r = client.post("/v1/datasets", headers=auth, json={"name": "x", "kind": "tarball"})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "kind"


def test_imagefolder_dataset(client, auth, settings):
    from PIL import Image

    for split, n in (("train", 2), ("test", 1)):
        for cls in ("golden_retriever", "tabby_cat"):
            d = settings.DATA_ROOT / "pets" / split / cls
            d.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (4, 4)).save(d / f"{i}.png")
    r = client.post(
        "/v1/datasets", headers=auth, json={"name": "pets", "kind": "imagefolder", "path": "pets"}
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["classnames"] == ["golden retriever", "tabby cat"]
    assert body["split_sizes"] == {"train": 4, "val": 0, "test": 2}
    assert body["path"] == "pets"
