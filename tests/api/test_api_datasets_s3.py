"""Datasets by object-store reference: ``path`` = ``s3://bucket/prefix`` for coop and imagefolder,
registered against a real S3-protocol server (moto's server mode) with the service's S3 settings."""

from __future__ import annotations

import pytest
import s3_support as s3


@pytest.fixture(scope="module")
def endpoint():
    with s3.moto_server() as url:
        c = s3.client(url)
        s3.put_tree(c, "data", "coop/eurosat", s3.eurosat_files())
        s3.put_tree(c, "data", "tiny/pets", s3.imagefolder_files())
        yield url


@pytest.fixture
def s3_client(make_client, endpoint):
    return make_client(S3_ENDPOINT_URL=endpoint, **s3.CREDENTIALS)


def _post(client, auth, **body):
    return client.post("/v1/datasets", headers=auth, json={"name": "x", **body})


def test_coop_dataset_from_a_bucket_reads_as_the_same_local_folder(s3_client, auth, settings, endpoint):
    r = _post(s3_client, auth, kind="coop", path="s3://data/coop/eurosat")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["path"] == "s3://data/coop/eurosat"
    assert body["coop_name"] == "EuroSAT"
    assert body["classnames"] == [f"Class{i}" for i in range(6)]
    assert body["split_sizes"] == {"train": 24, "val": 6, "test": 12}
    assert body["base_classes"] == ["Class0", "Class1", "Class2"]
    assert body["template"] == "a centered satellite photo of {}."

    local = settings.DATA_ROOT / "eurosat"  # the same files on a local disk
    for rel, data in s3.eurosat_files().items():
        (local / rel).parent.mkdir(parents=True, exist_ok=True)
        (local / rel).write_bytes(data)
    r_local = _post(s3_client, auth, kind="coop", path="eurosat")
    assert r_local.status_code == 201, r_local.text
    same = ("classnames", "base_classes", "novel_classes", "split_sizes", "template", "coop_name")
    assert {k: r_local.json()[k] for k in same} == {k: body[k] for k in same}
    assert r_local.json()["sha256_of_split"] != body["sha256_of_split"]  # keys and ETags count too

    again = _post(s3_client, auth, kind="coop", path="s3://data/coop/eurosat")
    assert again.json()["sha256_of_split"] == body["sha256_of_split"]


def test_a_changed_object_changes_the_split_hash(s3_client, auth, endpoint):
    c = s3.client(endpoint)
    s3.put_tree(c, "data", "changing/eurosat", s3.eurosat_files())
    first = _post(s3_client, auth, kind="coop", path="s3://data/changing/eurosat").json()["sha256_of_split"]
    c.put_object(Bucket="data", Key="changing/eurosat/2750/Class0/Class0_train0.png", Body=s3.png(999))
    second = _post(s3_client, auth, kind="coop", path="s3://data/changing/eurosat")
    assert second.status_code == 201
    assert second.json()["split_sizes"] == {"train": 24, "val": 6, "test": 12}  # the same keys...
    assert second.json()["sha256_of_split"] != first  # ...but another image


def test_imagefolder_from_a_bucket(s3_client, auth):
    r = _post(s3_client, auth, kind="imagefolder", path="s3://data/tiny/pets/")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["classnames"] == ["golden retriever", "tabby cat"]
    assert body["split_sizes"] == {"train": 4, "val": 0, "test": 2}


@pytest.mark.parametrize(
    ("path", "kind", "code"),
    [
        ("s3://no-such-bucket/x", "coop", "not_found"),
        ("s3://data/nothing/here", "imagefolder", "not_found"),
        ("s3://Bad_Bucket/x", "coop", "invalid_reference"),
        ("s3://data/a/../b", "coop", "invalid_reference"),
        ("s3://data/coop/eurosat", "builtin", "invalid_request"),
        ("s3://data/tiny", "coop", "unknown_dataset"),  # no CoOp layout there
        ("s3://data/tiny/pets", "coop", "not_found"),  # named like OxfordPets, without its split file
        ("s3://data/coop", "imagefolder", "bad_layout"),  # no train/val/test folders
    ],
)
def test_what_cannot_be_read_is_refused_naming_path(s3_client, auth, path, kind, code):
    r = _post(s3_client, auth, kind=kind, path=path)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == code, err
    assert err["param"] == ("coop_name" if code == "unknown_dataset" else "path")


def test_a_key_no_folder_can_hold_is_refused(s3_client, auth, endpoint):
    s3.put_tree(s3.client(endpoint), "data", "long/pets", {f"train/cat/{'x' * 300}.png": s3.png(1)})
    r = _post(s3_client, auth, kind="imagefolder", path="s3://data/long/pets")
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("dataset_unreadable", "path")
    assert "cannot be laid out" in r.json()["error"]["message"]


def test_an_unreachable_store_is_refused(make_client, auth):
    c = make_client(S3_ENDPOINT_URL=f"http://127.0.0.1:{s3.free_port()}", **s3.CREDENTIALS)
    r = _post(c, auth, kind="coop", path="s3://data/coop/eurosat")
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "dataset_unreadable"
    assert r.json()["error"]["param"] == "path"


def _weights_job(client, auth, job_body, pretrained):
    return client.post(
        "/v1/jobs",
        headers=auth,
        json={**job_body, "backbone": {"model": "ViT-B-16", "pretrained": pretrained}},
    )


def test_weights_by_reference_are_checked_at_creation(s3_client, auth, job_body, settings, endpoint):
    import os

    from mergetune.common.db import session_scope
    from mergetune.common.models import WorkerHeartbeat, utcnow
    from mergetune.worker import jobdb

    s3.put_tree(s3.client(endpoint), "models", "clip", {"ViT-B-16.pt": b"weights"})
    ok = _weights_job(s3_client, auth, job_body, "s3://models/clip/ViT-B-16.pt")
    assert ok.status_code == 202, ok.text  # no worker reports yet: queued for the workers to come
    for pretrained, code in (
        ("s3://models/clip/ViT-L-14.pt", "weights_unavailable"),
        ("s3://no-bucket-here/x.pt", "weights_unavailable"),
        ("s3://models/", "invalid_reference"),
        ("s3://models/a/../b.pt", "invalid_reference"),
    ):
        r = _weights_job(s3_client, auth, job_body, pretrained)
        assert r.status_code == 422, r.text
        assert (r.json()["error"]["code"], r.json()["error"]["param"]) == (code, "backbone.pretrained")

    host = f"remote-{os.getpid()}@test"
    url = settings.DATABASE_URL
    try:
        old = {"pid": 1, "device": "cpu", "weights": {"files": [], "tags": []}}  # cannot fetch references
        jobdb.heartbeat(url, host, old, reset_job=True)
        r = _weights_job(s3_client, auth, job_body, "s3://models/clip/ViT-B-16.pt")
        assert r.status_code == 422 and r.json()["error"]["code"] == "weights_unavailable", r.text
        new = {"pid": 1, "device": "cpu", "weights": {"files": [], "tags": [], "remote": ["s3"]}}
        jobdb.heartbeat(url, host, new, reset_job=True)
        assert _weights_job(s3_client, auth, job_body, "s3://models/clip/ViT-B-16.pt").status_code == 202
    finally:
        with session_scope(url) as s:  # leave no live worker for the other tests
            row = s.get(WorkerHeartbeat, host)
            if row is not None:
                row.last_seen = utcnow().replace(year=2000)
