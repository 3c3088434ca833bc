"""Backbone weights uploaded once (POST /v1/weights): checked (a safetensors file or a torch state dict of
tensors), stored once per project under their sha256 in the artifact store (here S3, moto's server mode),
named by jobs as ``weights:<id>`` or ``sha256:<hex>`` and checked at creation; DELETE is refused while a
queued job names them."""

from __future__ import annotations

import hashlib
import io
import os
from typing import Any

import pytest
import s3_support as s3
from sqlalchemy import update

BUCKET = "mt-weights"


def _clip_state_dict(width: int, *, fmt: str = "pt") -> bytes:
    """A small state dict in CLIP's layout whose text tower is ``width`` wide (tiny vocabulary)."""
    import torch

    g = torch.Generator().manual_seed(width)
    sd = {
        "positional_embedding": torch.randn(77, width, generator=g),
        "text_projection": torch.randn(width, 32, generator=g),
        "token_embedding.weight": torch.randn(10, width, generator=g),
        "ln_final.weight": torch.ones(width),
        "ln_final.bias": torch.zeros(width),
        "visual.proj": torch.randn(16, 32, generator=g),
    }
    if fmt == "safetensors":
        from safetensors.torch import save

        return save(sd)
    buf = io.BytesIO()
    torch.save(sd, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def endpoint():
    with s3.moto_server() as url:
        s3.client(url).create_bucket(Bucket=BUCKET)
        yield url


@pytest.fixture
def wclient(make_client, endpoint):
    return make_client(ARTIFACT_URL=f"s3://{BUCKET}/artifacts", S3_ENDPOINT_URL=endpoint, **s3.CREDENTIALS)


def _upload(client: Any, auth: dict[str, str], data: bytes, filename: str = "clip.pt", **form: str) -> Any:
    return client.post("/v1/weights", headers=auth, files={"file": (filename, data)}, data=form)


def test_upload_once_by_content_list_read_and_delete(wclient, auth, endpoint):
    data = _clip_state_dict(512)
    sha = hashlib.sha256(data).hexdigest()
    r = _upload(wclient, auth, data, name="ViT-B-16 fine")
    assert r.status_code == 201, r.text
    w = r.json()
    assert w["object"] == "weights" and w["sha256"] == sha and w["bytes"] == len(data)
    assert w["name"] == "ViT-B-16 fine" and w["filename"] == "clip.pt" and w["format"] == "state_dict"
    assert w["pretrained"] == f"weights:{w['id']}"
    assert w["summary"]["layout"] == "clip" and w["summary"]["text_width"] == 512
    assert w["summary"]["tensors"] == 6 and w["summary"]["dtypes"] == {"float32": 6}

    # the same bytes again (another name): the same record, not a second copy
    again = _upload(wclient, auth, data, filename="copy.pt", name="other")
    assert again.status_code == 200, again.text
    assert again.json()["id"] == w["id"] and again.json()["name"] == "ViT-B-16 fine"
    keys = [o["Key"] for o in s3.client(endpoint).list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    project_keys = [k for k in keys if k.endswith(f"{sha}.pt")]
    assert len(project_keys) == 1 and project_keys[0].startswith("artifacts/weights/"), keys
    stored = s3.client(endpoint).get_object(Bucket=BUCKET, Key=project_keys[0])["Body"].read()
    assert stored == data

    # a safetensors file of other bytes is a second record
    st = _upload(wclient, auth, _clip_state_dict(384, fmt="safetensors"), filename="clip.safetensors")
    assert st.status_code == 201 and st.json()["format"] == "safetensors", st.text
    assert st.json()["summary"]["text_width"] == 384

    page = wclient.get("/v1/weights", headers=auth, params={"limit": 1}).json()
    assert [x["id"] for x in page["data"]] == [st.json()["id"]] and page["has_more"] is True
    rest = wclient.get("/v1/weights", headers=auth, params={"after": page["next_cursor"]}).json()
    assert [x["id"] for x in rest["data"]] == [w["id"]] and rest["has_more"] is False
    assert wclient.get(f"/v1/weights/{w['id']}", headers=auth).json()["sha256"] == sha
    usage = wclient.get("/v1/usage", headers=auth).json()["stored_bytes"]
    assert usage["weights"] == len(data) + st.json()["bytes"] == usage["total"]

    gone = wclient.delete(f"/v1/weights/{w['id']}", headers=auth)
    assert gone.status_code == 200, gone.text
    assert gone.json() == {
        "id": w["id"],
        "object": "weights",
        "deleted": True,
        "freed_bytes": len(data),
        "freed_files": 1,
    }
    assert wclient.get(f"/v1/weights/{w['id']}", headers=auth).status_code == 404
    keys = [o["Key"] for o in s3.client(endpoint).list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert project_keys[0] not in keys


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch /tmp/mergetune-weights-pwned",))


@pytest.mark.parametrize(
    ("data", "filename", "says", "code"),
    [
        (
            b"just some text, not weights\n" * 10,
            "notes.pt",
            "neither safetensors nor a torch.save",
            "not_weights",
        ),
        ("mixed", "mixed.pt", "entry 'epoch' is a int, not a tensor", "not_weights"),
        ("torchscript", "ViT-B-16.pt", "TorchScript archive", "not_weights"),
        ("code", "evil.pt", "which can run code", "unsafe_pickle"),
    ],
)
def test_a_file_that_is_not_weights_is_refused_naming_file(wclient, auth, data, filename, says, code):
    import pickle

    import torch

    buf = io.BytesIO()
    if data == "code":
        data = pickle.dumps(_RunsCode())
    if data == "mixed":
        torch.save({"w": torch.zeros(3), "epoch": 3}, buf)
        data = buf.getvalue()
    elif data == "torchscript":  # what OpenAI published: the service never runs such an archive's code
        torch.jit.save(torch.jit.script(torch.nn.Linear(3, 2)), buf)
        data = buf.getvalue()
    r = _upload(wclient, auth, data, filename=filename)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["param"] == "file" and err["code"] == code and says in err["message"], err
    assert not os.path.exists("/tmp/mergetune-weights-pwned")  # nothing in the file ran
    assert wclient.get("/v1/weights", headers=auth).json()["data"] == []


def test_jobs_name_uploaded_weights_checked_at_creation(wclient, auth, other_auth, job_body, settings):
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job

    w = _upload(wclient, auth, _clip_state_dict(512)).json()
    narrow = _upload(wclient, auth, _clip_state_dict(64)).json()

    def create(pretrained: str, headers: dict[str, str] = auth) -> Any:
        body = {**job_body, "backbone": {"model": "ViT-B-16", "pretrained": pretrained}}
        return wclient.post("/v1/jobs", headers=headers, json=body)

    by_id = create(f"weights:{w['id']}")
    assert by_id.status_code == 202, by_id.text
    assert by_id.json()["backbone"]["pretrained"] == f"weights:{w['id']}"
    by_sha = create(f"sha256:{w['sha256']}")
    assert by_sha.status_code == 202, by_sha.text

    # the file's text tower (64 wide) is not ViT-B-16's (512)
    r = create(f"weights:{narrow['id']}")
    assert r.status_code == 422 and r.json()["error"]["param"] == "backbone.pretrained", r.text
    assert r.json()["error"]["code"] == "weights_mismatch" and "64" in r.json()["error"]["message"]
    # malformed and missing references
    r = create("weights:nope")
    assert r.status_code == 422 and r.json()["error"]["param"] == "backbone.pretrained", r.text
    r = create("sha256:" + "0" * 64)
    assert r.status_code == 404 and r.json()["error"]["param"] == "backbone.pretrained", r.text
    # another project's weights read as missing, by id and by sha256
    other = _upload(wclient, other_auth, _clip_state_dict(512)).json()
    assert other["id"] != w["id"] and other["sha256"] == w["sha256"]  # its own record of the same bytes
    mine_only = wclient.get("/v1/weights", headers=other_auth).json()["data"]
    assert [x["id"] for x in mine_only] == [other["id"]]
    r = create(f"weights:{other['id']}")
    assert r.status_code == 404 and r.json()["error"]["param"] == "backbone.pretrained", r.text
    assert wclient.get(f"/v1/weights/{w['id']}", headers=other_auth).status_code == 404

    # DELETE waits for the jobs that name them (by id or by sha256)
    r = wclient.delete(f"/v1/weights/{w['id']}", headers=auth)
    assert r.status_code == 409 and r.json()["error"]["code"] == "in_use", r.text
    assert by_id.json()["id"] in r.json()["error"]["message"]
    with session_scope(settings.DATABASE_URL) as s:
        s.execute(update(Job).where(Job.id == by_id.json()["id"]).values(status="succeeded"))
    r = wclient.delete(f"/v1/weights/{w['id']}", headers=auth)
    assert r.status_code == 409 and by_sha.json()["id"] in r.json()["error"]["message"], r.text
    with session_scope(settings.DATABASE_URL) as s:
        s.execute(update(Job).where(Job.id == by_sha.json()["id"]).values(status="cancelled"))
    assert wclient.delete(f"/v1/weights/{w['id']}", headers=auth).status_code == 200
    # the other project's copy of the same bytes is untouched
    assert wclient.get(f"/v1/weights/{other['id']}", headers=other_auth).status_code == 200


def test_uploads_count_in_the_stored_bytes_quota(wclient, auth, settings):
    from mergetune.common.db import session_scope
    from mergetune.common.models import ApiToken, Project
    from mergetune.common.repositories import hash_token

    secret = auth["Authorization"].split()[1]
    with session_scope(settings.DATABASE_URL) as s:
        pid = s.query(ApiToken.project_id).filter(ApiToken.token_hash == hash_token(secret)).scalar()
        s.execute(update(Project).where(Project.id == pid).values(quota_stored_bytes=1000))
    r = _upload(wclient, auth, _clip_state_dict(512))
    assert r.status_code == 403 and r.json()["error"]["code"] == "quota_exceeded", r.text
    assert r.json()["error"]["param"] == "file"


def test_weights_have_their_own_size_limit(make_client, auth, endpoint):
    s3_settings = {"ARTIFACT_URL": f"s3://{BUCKET}/sized", "S3_ENDPOINT_URL": endpoint, **s3.CREDENTIALS}
    data = _clip_state_dict(512)
    # checkpoints capped far below the file: weights are not
    roomy = make_client(MAX_UPLOAD_BYTES=1024, MAX_WEIGHTS_BYTES=len(data), **s3_settings)
    assert _upload(roomy, auth, data).status_code == 201
    tight = make_client(MAX_WEIGHTS_BYTES=len(data) - 1, **s3_settings)
    r = _upload(tight, auth, _clip_state_dict(768))  # larger than the limit
    assert r.status_code == 413 and r.json()["error"]["param"] == "file", r.text
    assert [w["sha256"] for w in tight.get("/v1/weights", headers=auth).json()["data"]] == [
        hashlib.sha256(data).hexdigest()
    ]
