from __future__ import annotations

import hashlib
import os
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from api_support import upload
from safetensors.numpy import load_file

from mergetune.common.storage import get_store


def test_upload_happy_path_stores_original_and_extracted_tensors(client, auth, settings, ctx_and_bytes):
    ctx, data = ctx_and_bytes
    r = upload(client, auth, data, name="my coop")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "ready"
    assert body["error"] is None
    assert body["id"].startswith("ckpt_")
    assert body["name"] == "my coop"
    assert body["filename"] == "model.pth.tar"
    assert body["bytes"] == len(data)
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert (body["format"], body["method"]) == ("dassl", "coop")
    assert (body["n_ctx"], body["ctx_dim"], body["csc"]) == (4, 512, False)

    from mergetune.common.db import session_scope
    from mergetune.common.models import Checkpoint

    with session_scope(settings.DATABASE_URL) as s:
        row = s.get(Checkpoint, body["id"])
        assert row is not None
        original_key, tensors_key = row.original_key, row.tensors_key
    store = get_store(settings)
    assert store.get_bytes(original_key) == data
    tensors = load_file(str(store.local_path(tensors_key)))
    assert list(tensors) == ["ctx"]
    np.testing.assert_array_equal(tensors["ctx"], ctx)
    # nothing left behind in the upload scratch folder
    assert list(settings.tmp_dir.iterdir()) == []

    got = client.get(f"/v1/checkpoints/{body['id']}", headers=auth)
    assert got.status_code == 200
    assert got.json() == body


class _Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_rejected_without_running_code(client, auth, tmp_path: Path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"state_dict": {"ctx": _Evil(str(marker))}}, protocol=2)
    r = upload(client, auth, payload, filename="evil.pth")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["status"] == "rejected"
    assert body["error"]["code"] == "unsafe_pickle"
    assert body["error"]["param"] == "file"
    assert not marker.exists()


def test_garbage_file_is_rejected(client, auth):
    r = upload(client, auth, b"not a checkpoint at all" * 10, filename="x.pt")
    assert r.status_code == 201
    assert r.json()["status"] == "rejected"
    assert r.json()["error"]["code"] in {"not_a_checkpoint", "truncated"}


def test_upload_over_limit_is_413_and_leaves_nothing_on_disk(make_client, auth, settings):
    small = make_client(MAX_UPLOAD_BYTES=1000)
    # streamed check (Content-Length is within the framing slack, the file part is not)
    r = upload(small, auth, b"x" * 5000)
    assert r.status_code == 413
    assert r.json()["error"] == {
        "code": "payload_too_large",
        "message": "upload exceeds the limit of 1000 bytes",
        "param": "file",
    }
    # early check on Content-Length
    r = upload(small, auth, b"x" * 200_000)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "payload_too_large"
    assert list(settings.tmp_dir.iterdir()) == []
    assert small.get("/v1/checkpoints", headers=auth).json()["data"] == []


def test_upload_needs_multipart_and_a_file_and_a_valid_method(client, auth, ctx_and_bytes):
    r = client.post("/v1/checkpoints", headers=auth, json={"file": "x"})
    assert r.status_code == 415
    assert r.json()["error"]["code"] == "unsupported_media_type"
    r = client.post("/v1/checkpoints", headers=auth, files={"other": ("a", b"1")})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "file"
    r = upload(client, auth, ctx_and_bytes[1], method="lora")
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "method"


def test_upload_idempotency(client, auth, ctx_and_bytes):
    h = {**auth, "Idempotency-Key": "up-1"}
    first = upload(client, h, ctx_and_bytes[1])
    again = upload(client, h, ctx_and_bytes[1])
    assert first.status_code == 201 and again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    other = upload(client, h, ctx_and_bytes[1] + b"\0")
    assert other.status_code == 409
    assert other.json()["error"]["code"] == "idempotency_key_reused"


def test_list_and_delete(client, auth, checkpoint):
    listing = client.get("/v1/checkpoints", headers=auth).json()
    assert [c["id"] for c in listing["data"]] == [checkpoint["id"]]
    assert listing["has_more"] is False and listing["next_cursor"] is None
    r = client.delete(f"/v1/checkpoints/{checkpoint['id']}", headers=auth)
    assert r.status_code == 200
    body = r.json()
    assert (body["id"], body["object"], body["deleted"]) == (checkpoint["id"], "checkpoint", True)
    assert body["freed_bytes"] > 0 and body["freed_files"] >= 2  # the upload and its tensors
    assert client.get(f"/v1/checkpoints/{checkpoint['id']}", headers=auth).status_code == 404
    assert client.get("/v1/checkpoints", headers=auth).json()["data"] == []


def test_an_upload_is_stored_as_torch_reads_it_or_refused(client, auth, settings):
    """The review's decoy (a Counter state dict beside a top-level ctx) is stored with the ctx torch's
    users see; a parameter whose Python state torch would set on it is refused, naming the file."""
    import io

    import torch

    from mergetune.common.db import session_scope
    from mergetune.common.models import Checkpoint

    torch.set_num_threads(1)
    a, b = torch.full((4, 512), 0.25), torch.full((2, 512), -3.0)
    buf = io.BytesIO()
    torch.save({"state_dict": Counter({"ctx": a}), "ctx": b, "epoch": 3}, buf)
    r = upload(client, auth, buf.getvalue(), filename="decoy.pth.tar")
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["status"], body["format"], body["n_ctx"]) == ("ready", "dassl", 4), body
    with session_scope(settings.DATABASE_URL) as s:
        row = s.get(Checkpoint, body["id"])
        assert row is not None
        tensors_key = row.tensors_key
    stored = load_file(str(get_store(settings).local_path(tensors_key)))
    np.testing.assert_array_equal(stored["ctx"], a.numpy())

    p = torch.nn.Parameter(torch.full((4, 512), 0.5))
    p.note = "csc"  # pickled as a state torch applies with setattr when loading
    buf = io.BytesIO()
    torch.save({"state_dict": {"ctx": p}}, buf)
    r = upload(client, auth, buf.getvalue(), filename="state.pth.tar")
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "rejected"
    assert r.json()["error"]["code"] == "unsupported_torch_object"
    assert r.json()["error"]["param"] == "file"
