"""DELETE /v1/sweeps/{id}: refused (409) while its jobs may still run; then the sweep, its jobs and
their files go, and the answer counts the bytes the store held."""

from __future__ import annotations

from mergetune.common.storage import get_store


def test_a_sweep_is_deleted_with_its_jobs_and_files(client, auth, checkpoint, dataset, settings):
    body = {
        "cells": [{"checkpoint_id": checkpoint["id"], "dataset_id": dataset["id"], "seed": s} for s in (1, 2)]
    }
    sw = client.post("/v1/sweeps", headers=auth, json=body).json()
    jobs = [j["id"] for j in sw["jobs"]]
    r = client.delete(f"/v1/sweeps/{sw['id']}", headers=auth)
    assert (
        r.status_code == 409
        and r.json()["error"]["code"] == "in_use"
        and "cancel" in r.json()["error"]["message"]
    )
    r = client.delete(f"/v1/jobs/{jobs[0]}", headers=auth)  # a cell alone: not while its sweep stands
    assert r.status_code == 409
    store = get_store(settings)
    store.put_bytes(f"jobs/{jobs[0]}/state/epoch.pt", b"x" * 1000)  # what a cell cancelled mid-run keeps
    store.put_bytes(f"jobs/{jobs[1]}/report.json", b"y" * 24)
    assert client.post(f"/v1/sweeps/{sw['id']}/cancel", headers=auth).status_code == 200
    assert client.delete(f"/v1/jobs/{jobs[0]}", headers=auth).status_code == 409  # still the sweep's

    r = client.delete(f"/v1/sweeps/{sw['id']}", headers=auth)
    assert r.status_code == 200, r.text
    assert (r.json()["freed_bytes"], r.json()["freed_files"]) == (1024, 2)
    assert store.list(f"jobs/{jobs[0]}/") == [] and store.list(f"jobs/{jobs[1]}/") == []
    assert client.get(f"/v1/sweeps/{sw['id']}", headers=auth).status_code == 404
    assert all(client.get(f"/v1/jobs/{j}", headers=auth).status_code == 404 for j in jobs)
    assert client.get(f"/v1/checkpoints/{checkpoint['id']}", headers=auth).status_code == 200  # inputs stay
