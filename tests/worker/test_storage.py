"""The artifact store contract, run against a local directory and a real S3-compatible HTTP server
(moto's server mode, started in-process on a free port; boto3 talks to it over HTTP)."""

from __future__ import annotations

import hashlib
import io

import pytest

from mergetune.common.storage import ArtifactNotFound, LocalStore, S3Store, StorageError, get_store


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        return LocalStore(tmp_path / "artifacts")
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    s = S3Store(
        f"s3://bucket-{request.node.name.split('[')[0].replace('_', '-')[:40]}/pre/fix", endpoint_url=endpoint
    )
    s.ensure_bucket()
    s.delete_prefix("")
    return s


def test_put_get_roundtrip_and_metadata(store, tmp_path):
    data = bytes(range(256)) * 5000  # 1.28 MB: more than one chunk
    store.put_bytes("jobs/job_1/a.bin", data)
    src = tmp_path / "b.txt"
    src.write_bytes(b"hello")
    store.put_file("jobs/job_1/b.txt", src)

    assert store.exists("jobs/job_1/a.bin")
    assert not store.exists("jobs/job_1/missing")
    assert store.size("jobs/job_1/a.bin") == len(data)
    assert store.get_bytes("jobs/job_1/b.txt") == b"hello"
    assert b"".join(store.iter_chunks("jobs/job_1/a.bin", chunk_size=100_000)) == data
    assert len(list(store.iter_chunks("jobs/job_1/a.bin", chunk_size=100_000))) == 13
    assert store.sha256("jobs/job_1/a.bin") == hashlib.sha256(data).hexdigest()
    with store.open("jobs/job_1/a.bin") as f:
        assert f.read(3) == b"\x00\x01\x02"
    assert store.list("jobs/job_1/") == ["jobs/job_1/a.bin", "jobs/job_1/b.txt"]
    lp = store.local_path("jobs/job_1/b.txt")
    assert lp.read_bytes() == b"hello"


def test_overwrite_stream_and_delete(store):
    store.put_bytes("x/y.json", b"{}")
    store.put_stream("x/y.json", io.BytesIO(b'{"a": 1}'))
    assert store.get_bytes("x/y.json") == b'{"a": 1}'
    store.put_bytes("x/z", b"z")
    store.delete("x/y.json")
    store.delete("x/y.json")  # idempotent
    assert not store.exists("x/y.json")
    assert store.delete_prefix("x/") == 1
    assert store.list("x/") == []


def test_missing_objects_raise_not_found(store):
    with pytest.raises(ArtifactNotFound):
        store.open("nope/never")
    with pytest.raises(ArtifactNotFound):
        store.size("nope/never")
    with pytest.raises(ArtifactNotFound):
        store.local_path("nope/never")


@pytest.mark.parametrize("key", ["", "/abs", "a/../b", "a//b", "./a", "a\\b"])
def test_bad_keys_are_refused(tmp_path, key):
    with pytest.raises(StorageError):
        LocalStore(tmp_path).put_bytes(key, b"x")


def test_local_store_stays_inside_root_and_writes_atomically(tmp_path):
    s = LocalStore(tmp_path / "root")
    s.put_bytes("a/b/c.txt", b"1")
    assert (tmp_path / "root" / "a" / "b" / "c.txt").read_bytes() == b"1"
    assert not list((tmp_path / "root" / "a" / "b").glob(".tmp-*"))


def test_get_store_selects_backend_by_url(tmp_path, s3_endpoint, monkeypatch):
    class S:
        ARTIFACT_URL = str(tmp_path / "arts")
        S3_ENDPOINT_URL = None

    assert isinstance(get_store(S()), LocalStore)

    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(var, raising=False)

    class T:
        ARTIFACT_URL = "s3://selected-bucket/prefix"
        S3_ENDPOINT_URL = s3_endpoint  # endpoint, region and keys from the settings, not the environment
        S3_REGION = "us-east-1"
        S3_ACCESS_KEY_ID = "testing"
        S3_SECRET_ACCESS_KEY = "testing"

    st = get_store(T())
    assert isinstance(st, S3Store) and st.bucket == "selected-bucket" and st.prefix == "prefix"
    st.ensure_bucket()
    st.put_bytes("k", b"v")
    assert st.client.get_object(Bucket="selected-bucket", Key="prefix/k")["Body"].read() == b"v"
