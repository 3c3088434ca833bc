"""The dashboard shows a viewer only their own project's jobs; the shared worker panel says a worker is
busy with another project's job without naming that job."""

from __future__ import annotations

from api_support import TINY_DATASET, upload

from mergetune.common import repositories as repo
from mergetune.common.db import session_scope


def _job(client, headers, ctx_bytes) -> str:
    ck = upload(client, headers, ctx_bytes)
    ds = client.post("/v1/datasets", headers=headers, json=TINY_DATASET)
    r = client.post(
        "/v1/jobs", headers=headers, json={"checkpoint_id": ck.json()["id"], "dataset_id": ds.json()["id"]}
    )
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


def test_dashboard_shows_only_the_viewers_jobs_and_no_other_projects_job_ids(
    client, auth, other_auth, settings, ctx_and_bytes
):
    mine = _job(client, auth, ctx_and_bytes[1])
    theirs = _job(client, other_auth, ctx_and_bytes[1])
    with session_scope(settings.DATABASE_URL) as s:
        repo.heartbeat(s, "gpu-a", current_job_id=mine)
        repo.heartbeat(s, "gpu-b", current_job_id=theirs)
        repo.heartbeat(s, "gpu-c", current_job_id=None)

    secret = auth["Authorization"].split(" ", 1)[1]
    assert (
        client.post("/login", data={"token": secret, "next": "/"}, follow_redirects=False).status_code == 303
    )

    page = client.get("/")
    assert page.status_code == 200
    assert mine in page.text
    assert theirs not in page.text
    assert "busy (another project)" in page.text

    overview = client.get("/ui/overview", params={"ids": f"{mine},{theirs}"})
    assert overview.status_code == 200
    assert theirs not in overview.text
    workers = {w["hostname"]: w for w in overview.json()["health"]["workers"]}
    assert workers["gpu-a"]["current_job_id"] == mine and workers["gpu-a"]["busy"] is True
    assert workers["gpu-b"]["current_job_id"] is None and workers["gpu-b"]["busy"] is True
    assert workers["gpu-c"]["current_job_id"] is None and workers["gpu-c"]["busy"] is False
    assert set(overview.json()["jobs"]) == {mine}  # statuses only of the viewer's jobs
    # Queue counts cover every project (one queue serves them all).
    assert overview.json()["health"]["queued"] >= 2

    # The other project's job page reads as missing.
    assert client.get(f"/jobs/{theirs}").status_code == 404
    assert client.get(f"/ui/jobs/{theirs}/live").status_code == 404
