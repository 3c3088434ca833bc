"""Bounded storage: what is kept per checkpoint stays small after the pickle memo is expanded, list
endpoints never load the big columns, and a refused upload keeps no bytes (local store and a real
S3-compatible server, plus the upload scratch folder)."""

from __future__ import annotations

import io
import json
import pickle
from typing import Any

import pytest
from api_support import free_port, upload
from sqlalchemy import event, text

from mergetune.common.db import get_engine, session_scope
from mergetune.common.models import Checkpoint
from mergetune.common.storage import get_store


def _memo_bomb() -> bytes:
    """An ~89 KB torch file whose metadata references one 64 KiB string 2,000 times (one memo entry):
    131 MB once expanded."""
    import torch

    big = "m" * 65536
    state = {"state_dict": {"ctx": torch.randn(4, 512)}, "epoch": 3, "mergetune": {"notes": [big] * 2000}}
    buf = io.BytesIO()
    torch.save(state, buf)
    return buf.getvalue()


def _info_json(settings: Any, ckpt_id: str) -> str:
    with session_scope(settings.DATABASE_URL) as s:
        return str(
            s.execute(
                text("SELECT CAST(info AS TEXT) FROM checkpoints WHERE id = :i"), {"i": ckpt_id}
            ).scalar()
        )


def test_memo_expanded_metadata_is_not_stored(client, auth, settings):
    data = _memo_bomb()
    assert len(data) < 150_000
    r = upload(client, auth, data)
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "ready"
    assert r.json()["n_ctx"] == 4
    stored = _info_json(settings, r.json()["id"])
    assert len(stored) < 16 * 1024, len(stored)  # not 131 MB
    info = json.loads(stored)
    assert info["epoch"] == 3
    assert "metadata" not in info


def test_small_metadata_of_our_exports_is_kept(client, auth, settings):
    import torch

    buf = io.BytesIO()
    meta = {"class_token_position": "front", "classnames": [f"class {i}" for i in range(1000)]}
    torch.save({"state_dict": {"ctx": torch.randn(4, 512)}, "epoch": 1, "mergetune": meta}, buf)
    r = upload(client, auth, buf.getvalue())
    assert r.status_code == 201, r.text
    assert r.json()["class_token_position"] == "front"
    assert json.loads(_info_json(settings, r.json()["id"]))["metadata"] == meta


def test_list_checkpoints_never_selects_info(client, auth, settings, ctx_and_bytes):
    ids = [upload(client, auth, ctx_and_bytes[1]).json()["id"] for _ in range(3)]
    with session_scope(settings.DATABASE_URL) as s:  # an old row as large as before the bound
        s.execute(
            text("UPDATE checkpoints SET info = CAST(:v AS JSON) WHERE id = :i"),
            {"v": json.dumps({"epoch": 1, "metadata": {"x": "y" * 5_000_000}}), "i": ids[0]},
        )
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    engine = get_engine(settings.DATABASE_URL)
    event.listen(engine, "before_cursor_execute", record)
    try:
        r = client.get("/v1/checkpoints", headers=auth)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert r.status_code == 200
    assert sorted(c["id"] for c in r.json()["data"]) == sorted(ids)
    selects = [s for s in statements if "FROM checkpoints" in s]
    assert selects, statements
    assert not any("checkpoints.info" in s for s in selects), selects
    # the job-facing read still has it, loaded when asked for
    with session_scope(settings.DATABASE_URL) as s:
        row = s.get(Checkpoint, ids[1])
        assert row is not None and row.info is not None and row.info["epoch"] == 50


def _refused_files(client: Any, auth: dict[str, str]) -> list[dict[str, Any]]:
    garbage = upload(client, auth, b"not a checkpoint at all" * 10, filename="x.pt")
    evil = upload(client, auth, pickle.dumps({"ctx": print}, protocol=2), filename="evil.pth")
    out = [garbage.json(), evil.json()]
    assert [garbage.status_code, evil.status_code] == [201, 201]
    assert [b["status"] for b in out] == ["rejected", "rejected"]
    return out


def test_refused_upload_keeps_no_bytes_local(client, auth, settings, ctx_and_bytes):
    ok = upload(client, auth, ctx_and_bytes[1]).json()
    refused = _refused_files(client, auth)
    store = get_store(settings)
    assert store.list(f"checkpoints/{ok['id']}/")  # an accepted file is kept
    for body in refused:
        assert store.list(f"checkpoints/{body['id']}/") == []
        # the answer is kept: a GET shows the same refusal
        assert client.get(f"/v1/checkpoints/{body['id']}", headers=auth).json()["error"] == body["error"]
    assert list(settings.tmp_dir.iterdir()) == []


@pytest.fixture
def s3_endpoint():
    moto_server = pytest.importorskip("moto.server")
    port = free_port()
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_refused_upload_keeps_no_bytes_s3(make_client, auth, settings, s3_endpoint, ctx_and_bytes):
    overrides = {
        "ARTIFACT_URL": "s3://refused-uploads/pre",
        "S3_ENDPOINT_URL": s3_endpoint,
        "S3_REGION": "us-east-1",
        "S3_ACCESS_KEY_ID": "testing",
        "S3_SECRET_ACCESS_KEY": "testing",
    }
    client = make_client(**overrides)
    store = get_store(settings.model_copy(update=overrides))
    store.ensure_bucket()  # type: ignore[attr-defined]
    ok = upload(client, auth, ctx_and_bytes[1]).json()
    assert ok["status"] == "ready"
    refused = _refused_files(client, auth)
    assert sorted(store.list("checkpoints/")) == sorted(
        [f"checkpoints/{ok['id']}/original/model.pth.tar", f"checkpoints/{ok['id']}/tensors.safetensors"]
    )
    assert {b["id"] for b in refused}.isdisjoint(k.split("/")[1] for k in store.list(""))
    assert list(settings.tmp_dir.iterdir()) == []


def test_migration_shrinks_oversized_info_rows(tmp_path):
    """Rows written before the bound (metadata of megabytes) lose their metadata on upgrade; small
    rows are untouched. Run on SQLite (the embedded mode's database): the same statements as Postgres."""
    from alembic import command
    from sqlalchemy import create_engine

    from mergetune.common.db import alembic_config

    url = f"sqlite:///{tmp_path / 'm.db'}"
    command.upgrade(alembic_config(url), "0009_bounded_checkpoint_info-1")
    engine = create_engine(url)
    big = {"epoch": 7, "unknown_globals": [], "metadata": {"notes": ["m" * 65536] * 40}}
    small = {"epoch": 2, "unknown_globals": ["a.B"], "metadata": {"class_token_position": "end"}}
    try:
        with engine.begin() as conn:
            conn.execute(
                text("INSERT INTO projects (id, name, created_at) VALUES ('proj_1', 'p', '2026-01-01')")
            )
            for cid, info in (("ckpt_big", big), ("ckpt_small", small)):
                conn.execute(
                    text(
                        "INSERT INTO checkpoints (id, project_id, name, filename, bytes, sha256, status, info,"
                        " created_at) VALUES (:i, 'proj_1', 'n', 'f', 1, 's', 'ready', :info, '2026-01-01')"
                    ),
                    {"i": cid, "info": json.dumps(info)},
                )
        command.upgrade(alembic_config(url), "head")
        with engine.connect() as conn:
            rows = dict(conn.execute(text("SELECT id, info FROM checkpoints")).all())
    finally:
        engine.dispose()
    assert json.loads(rows["ckpt_big"]) == {"epoch": 7, "unknown_globals": [], "metadata_dropped": True}
    assert json.loads(rows["ckpt_small"]) == small


def test_sweep_archive_stored_total_is_bounded(make_client, auth, settings, ctx_and_bytes):
    from tree_writer import coop_tree, zip_bytes

    data = ctx_and_bytes[1]
    archive = zip_bytes(coop_tree([("tiny_a", 1, data), ("tiny_a", 2, data)]))
    opts = {"num_classes": 6, "train_per_class": 4, "val_per_class": 2, "test_per_class": 4}

    def post(client: Any) -> Any:
        return client.post("/v1/sweeps", headers=auth, files={"file": ("output.zip", archive)})

    tight = make_client(SWEEP_MAX_STORED_BYTES=len(data) * 2 - 1)
    r = tight.post("/v1/datasets", headers=auth, json={"name": "tiny_a", "kind": "builtin", "options": opts})
    assert r.status_code == 201, r.text
    r = post(tight)
    assert r.status_code == 422, r.text
    assert (r.json()["error"]["code"], r.json()["error"]["param"]) == ("too_large", "file")
    assert f"{2 * len(data)} bytes" in r.json()["error"]["message"]
    assert tight.get("/v1/checkpoints", headers=auth).json()["data"] == []
    assert get_store(settings).list("checkpoints/") == []

    r = post(make_client(SWEEP_MAX_STORED_BYTES=len(data) * 2))
    assert r.status_code == 202, r.text
    assert len(get_store(settings).list("checkpoints/")) == 4  # two originals, two tensor files
