"""A full disk, for real: the upload scratch folder and the artifact store on small tmpfs mounts
(mounted for the test; skipped where mounting is not allowed). Uploads get 507 ``storage_full`` with
Retry-After (never 400 or 500) and leave nothing behind; ``/readyz`` reports low storage; once space
returns the same request succeeds."""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from api_support import new_token, upload

from mergetune.common.db import session_scope
from mergetune.common.models import Checkpoint

BOUNDARY = "diskfullboundary"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Any]:
    """Mount a 2 MiB tmpfs at a new folder on demand; unmounted at the end."""
    mounted: list[Path] = []

    def mount(name: str, size: str = "2m") -> Path:
        folder = tmp_path / name
        folder.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path, leave: int) -> Path:
    """Fill the filesystem of ``folder`` until ``leave`` bytes or fewer are free."""
    filler = folder / f"filler-{uuid.uuid4().hex[:6]}"
    with open(filler, "wb") as out:
        while (free := os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize) > leave:
            try:
                out.write(b"\0" * min(free - leave, 1 << 16) or b"\0")
                out.flush()
            except OSError:
                break
    return filler


def _multipart(data: bytes, filename: str = "model.pth.tar") -> Iterator[bytes]:
    yield (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    for i in range(0, len(data), 64 * 1024):
        yield data[i : i + 64 * 1024]
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def _checkpoint_rows(settings: Any) -> int:
    from sqlalchemy import func, select

    with session_scope(settings.DATABASE_URL) as s:
        return int(s.scalar(select(func.count()).select_from(Checkpoint)) or 0)


def _assert_full(r: Any) -> None:
    assert r.status_code == 507, r.text
    assert r.json()["error"]["code"] == "storage_full"
    assert int(r.headers["Retry-After"]) > 0


def test_full_scratch_folder_gets_507_streamed_and_declared(
    make_client, settings, auth, small_disk, ctx_and_bytes
):
    scratch = small_disk("scratch")
    client = make_client(HOME=scratch)  # the scratch folder (HOME/tmp) on a 2 MiB disk
    data = ctx_and_bytes[1] * 6  # ~2.8 MB: more than the disk holds
    before = _checkpoint_rows(settings)

    declared = upload(client, auth, data)  # Content-Length known: refused before a byte is written
    _assert_full(declared)

    streamed = client.post(  # chunked, no Content-Length: the disk fills while the body streams in
        "/v1/checkpoints",
        headers={**auth, "Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        content=_multipart(data),
    )
    assert "content-length" not in {k.lower() for k in streamed.request.headers}
    _assert_full(streamed)
    assert list((scratch / "tmp").iterdir()) == []  # the partial spool file is gone
    assert _checkpoint_rows(settings) == before


def test_full_scratch_folder_gets_507_for_a_sweep_archive(make_client, auth, small_disk, ctx_and_bytes):
    from tree_writer import coop_tree, zip_bytes

    client = make_client(HOME=small_disk("sweepscratch"))
    noise = os.urandom(3 << 20)  # incompressible: the archive is larger than the disk
    archive = zip_bytes({**coop_tree([("tiny_a", 1, ctx_and_bytes[1])]), "output/noise.bin": noise})
    assert len(archive) > 2 << 20
    r = client.post("/v1/sweeps", headers=auth, files={"file": ("output.zip", archive)})
    _assert_full(r)
    assert client.get("/v1/sweeps", headers=auth).json()["data"] == []


def test_full_store_gets_507_and_keeps_nothing_then_succeeds(
    make_client, settings, auth, small_disk, ctx_and_bytes
):
    store_disk = small_disk("store")
    client = make_client(ARTIFACT_URL=str(store_disk / "artifacts"))  # scratch folder has room
    filler = fill(store_disk, leave=100 * 1024)
    data = ctx_and_bytes[1]  # ~460 KB: the spool takes it, the store cannot
    before = _checkpoint_rows(settings)

    r = upload(client, auth, data)
    _assert_full(r)
    assert [p.name for p in store_disk.iterdir()] == [filler.name, "artifacts"]
    assert [p for p in (store_disk / "artifacts").rglob("*") if p.is_file()] == []
    assert list(settings.tmp_dir.iterdir()) == []
    assert _checkpoint_rows(settings) == before

    filler.unlink()  # space returns: the same request succeeds
    again = upload(client, auth, data)
    assert again.status_code == 201, again.text
    assert again.json()["status"] == "ready"


def test_readyz_reports_low_storage(make_client, settings, small_disk):
    store_disk = small_disk("ready")
    client = make_client(ARTIFACT_URL=str(store_disk / "artifacts"), STORAGE_MIN_FREE_BYTES=512 * 1024)
    assert client.get("/readyz").status_code == 200
    filler = fill(store_disk, leave=100 * 1024)
    r = client.get("/readyz")
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "not_ready"
    assert "storage" in r.json()["error"]["message"]
    assert "artifact store" in r.json()["error"]["message"]
    assert client.get("/healthz").status_code == 200
    filler.unlink()
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["checks"]["storage"] == "ok"


def test_embedded_database_on_a_full_disk_gets_507(make_client, small_disk, caplog):
    """The embedded mode keeps SQLite under HOME: a write its disk refuses is 507 too, not a 500."""
    from mergetune.common.db import upgrade_head
    from mergetune.common.models import new_id

    home = small_disk("embedded", size="4m")
    db = f"sqlite:///{home / 'mergetune.db'}"
    upgrade_head(db)
    client = make_client(HOME=home, DATABASE_URL=db)
    auth = {"Authorization": f"Bearer {new_token(db)}"}
    body = {"name": "d", "kind": "builtin", "options": {"num_classes": 4}}
    assert client.post("/v1/datasets", headers=auth, json=body).status_code == 201
    fill(home, leave=0)
    caplog.set_level("WARNING", logger="mergetune.api.errors")
    r = client.post("/v1/datasets", headers=auth, json={**body, "name": new_id("d")})
    _assert_full(r)
    assert "database disk full" in caplog.text
