"""Every dashboard page passes axe-core (axe-playwright-python) with no serious or critical violation, at
1440x900 and 390x844, in the light and the dark colour scheme (``prefers-color-scheme``).

One stack, one browser: the empty pages are those of a fresh project; the others show the stack's
project with a real finished job (its page and its ``report.html`` artifact), a running, a failed and a
queued-then-cancelled job written as rows, a sweep, a webhook, the new-job form, compare, usage and a
404. The count of violations by impact for every page goes to stdout and test-artifacts/axe.json (with
each violation's rule and elements); full-page screenshots to
test-artifacts/screens/<page>-<1440|390>[-dark].png.

``ALLOWED`` lists, per page, the rules known to fail on pages kept by other parts of the dashboard (each
entry says where); every other rule must pass there too.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
from browser_support import Stack, new_project
from conftest import ARTIFACTS

pytestmark = [pytest.mark.browser, pytest.mark.slow]

SCREENS = ARTIFACTS / "screens"
VIEWPORTS = {"1440": (1440, 900), "390": (390, 844)}
SCHEMES = ("light", "dark")
IMPACTS = ("critical", "serious", "moderate", "minor")
#: page -> {rule id: where it fails}: serious/critical violations tolerated there, and only those.
ALLOWED: dict[str, dict[str, str]] = {}


def _rows(stack: Stack) -> dict[str, str]:
    """A running and a failed job of the stack's project (rows as the worker writes them) and a
    disabled webhook endpoint (disabled: nothing is delivered during the suite)."""
    from mergetune.common import repositories as repo
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job, WebhookEndpoint, WorkerHeartbeat, new_id, utcnow

    common = dict(project_id=stack.project_id, checkpoint_id=stack.checkpoint_id, dataset_id=stack.dataset_id,
                  job_type="prompt", backbone={"model": "tiny-test", "pretrained": "random"},
                  hyperparameters={"epochs": 4, "batch_size": 4, "shots": 4})  # fmt: skip
    with session_scope(stack.database_url) as s:
        running = Job(id=new_id("job"), status="running", started_at=utcnow(), worker_host="elsewhere@test",
                      progress={"epoch": 1, "epochs": 4, "step": 2, "steps": 6, "loss": 0.8123},
                      metadata_={"name": "a11y-running"}, **common)  # fmt: skip
        failed = Job(id=new_id("job"), status="failed", started_at=utcnow(), finished_at=utcnow(),
                     error={"code": "dataset_unreadable", "param": "dataset_id",
                            "message": "the split file lists an image that is not there: x/img.jpg"},
                     metadata_={"name": "a11y-failed"}, **common)  # fmt: skip
        hook = WebhookEndpoint(project_id=stack.project_id, url="https://ci.example.com/hooks/mergetune",
                               events=["job.succeeded", "job.failed"], description="CI", secret="whsec_" + "A" * 32,
                               enabled=False, disabled_at=utcnow(), disabled_reason="disabled by the a11y test",
                               created_at=utcnow())  # fmt: skip
        # the running job's worker stays alive for the test: else the stack's reconciler hands the job to
        # its own worker, which runs it to the end and the page reloads while axe reads it
        beat = s.get(WorkerHeartbeat, "elsewhere@test") or WorkerHeartbeat(hostname="elsewhere@test")
        beat.current_job_id, beat.last_seen = running.id, utcnow() + timedelta(hours=1)
        s.add_all([running, failed, hook, beat])
        s.flush()
        repo.add_event(s, running.id, "status", "Job started on elsewhere@test", data={"status": "running"})
        repo.add_event(s, failed.id, "status", "Job failed", level="error", data={"status": "failed"})
        return {"running": running.id, "failed": failed.id, "webhook": hook.id}


def _end_running(stack: Stack, job_id: str) -> None:
    """The running row is cancelled afterwards, so no worker of a later test takes it as orphaned."""
    from mergetune.common.db import session_scope
    from mergetune.common.models import Job, WorkerHeartbeat, utcnow

    with session_scope(stack.database_url) as s:
        job = s.get(Job, job_id)
        job.status, job.finished_at = "cancelled", utcnow()
        beat = s.get(WorkerHeartbeat, "elsewhere@test")
        if beat is not None:  # other tests count workers
            s.delete(beat)


def _sweep(stack: Stack) -> str:
    with stack.client() as c:  # a sweep of one cell, cancelled at once: its page is what is checked
        r = c.post("/v1/sweeps", json={"name": "a11y-check", "cells": [{"checkpoint_id": stack.checkpoint_id,
                   "dataset_id": stack.dataset_id}], "backbone": {"model": "tiny-test", "pretrained": "random"},
                   "hyperparameters": {"epochs": 1, "batch_size": 4, "shots": 4}})  # fmt: skip
        assert r.status_code in (200, 201, 202), r.text
        sweep_id = r.json()["id"]
        assert c.post(f"/v1/sweeps/{sweep_id}/cancel").status_code in (200, 202)
    return sweep_id


def _login(page: Any, url: str, token: str) -> None:
    page.context.clear_cookies()
    page.goto(f"{url}/login")
    page.fill("#token", token)
    page.click("#login-submit")
    page.wait_for_selector("#jobs")


def _check(page: Any, axe: Any, name: str, url: str, table: dict[str, Any]) -> None:
    """``url`` at each size and scheme: a screenshot and axe's violations into ``table``."""
    for size, (width, height) in VIEWPORTS.items():
        page.set_viewport_size({"width": width, "height": height})
        for scheme in SCHEMES:
            page.emulate_media(color_scheme=scheme)
            page.goto(url)
            page.wait_for_load_state("load")
            page.wait_for_timeout(150)  # charts drawn after load
            key = f"{name}-{size}" + ("-dark" if scheme == "dark" else "")
            page.screenshot(path=str(SCREENS / f"{key}.png"), full_page=True)
            violations = axe.run(page).response["violations"]
            counts = dict.fromkeys(IMPACTS, 0)
            for v in violations:
                counts[v.get("impact") or "minor"] += 1
            table[key] = {
                "page": name,
                "counts": counts,
                "violations": [
                    {
                        "rule": v["id"],
                        "impact": v.get("impact"),
                        "help": v["help"],
                        "nodes": [
                            " ".join(n["target"]) if isinstance(n["target"], list) else str(n["target"])
                            for n in v["nodes"]
                        ][:10],
                    }  # fmt: skip
                    for v in violations
                ],
            }


def test_every_page_passes_axe_in_both_schemes_and_sizes(
    page: Any, stack: Stack, finished_job: dict[str, Any]
) -> None:
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    SCREENS.mkdir(parents=True, exist_ok=True)
    table: dict[str, Any] = {}
    url = stack.url
    sweep_id = _sweep(stack)
    rows = _rows(stack)
    try:
        _check(page, axe, "login", f"{url}/login", table)
        _, empty_token = new_project(stack.database_url)
        _login(page, url, empty_token)
        for name, path in {
            "jobs-empty": "/",
            "new-job-empty": "/jobs/new",
            "checkpoints-empty": "/checkpoints",
            "datasets-empty": "/datasets",
            "sweeps-empty": "/sweeps",
            "webhooks-empty": "/webhooks",
        }.items():
            _check(page, axe, name, url + path, table)
        _login(page, url, stack.token)
        done = finished_job["id"]
        for name, path in {
            "jobs": "/",
            "job-running": f"/jobs/{rows['running']}",
            "job-succeeded": f"/jobs/{done}",
            "job-failed": f"/jobs/{rows['failed']}",
            "new-job": "/jobs/new",
            "checkpoints": "/checkpoints",
            "datasets": "/datasets",
            "sweeps": "/sweeps",
            "sweep": f"/sweeps/{sweep_id}",
            "compare": f"/compare?ids={done}&ids={rows['failed']}",
            "usage": "/usage",
            "webhooks": "/webhooks",
            "webhook": f"/webhooks/{rows['webhook']}",
            "not-found": "/jobs/job_doesnotexist",
            "report": f"/jobs/{done}/artifacts/report.html",
        }.items():
            _check(page, axe, name, url + path, table)
    finally:
        _end_running(stack, rows["running"])

    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "axe.json").write_text(json.dumps(table, indent=2) + "\n")
    print(f"\naxe-core violations by impact ({len(table)} page views)")
    print(f"{'page':<28}" + "".join(f"{i:>10}" for i in IMPACTS))
    for key, row in table.items():
        print(f"{key:<28}" + "".join(f"{row['counts'][i]:>10}" for i in IMPACTS))
    problems = [
        f"{key}: {v['rule']} ({v['impact']}) {v['help']}: {', '.join(v['nodes'])}"
        for key, row in table.items()
        for v in row["violations"]
        if v["impact"] in ("serious", "critical") and v["rule"] not in ALLOWED.get(row["page"], {})
    ]
    assert problems == [], "\n".join(problems)
