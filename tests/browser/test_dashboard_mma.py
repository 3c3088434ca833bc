"""The dashboard with an MMA checkpoint: the new-job form sends only what MMA jobs take (its MMA-only
settings included), shows MMA's own defaults, and the job page names the method."""

from __future__ import annotations

import re
from typing import Any

from browser_support import csrf_token, dataset_row, login, new_project
from fastapi.testclient import TestClient

from mergetune.common.db import session_scope
from mergetune.common.models import Checkpoint, Job
from mergetune.core.checkpoints.mma_layout import AdapterLayout
from mergetune.core.config import MMAHyperparameters


def test_new_job_form_with_an_mma_checkpoint(app_client: TestClient, settings: Any) -> None:
    url = settings.DATABASE_URL
    project, secret = new_project(url)
    with session_scope(url) as s:
        ck = Checkpoint(
            project_id=project, name="mma-ckpt", filename="model.pth.tar-5", bytes=100, sha256="ab" * 32,
            format="dassl", method="mma", status="ready", ctx_dim=64, csc=False, n_cls=3,
            info={"mma_layout": AdapterLayout(64, 64, 1, 1).to_json()},
        )  # fmt: skip
        ds = dataset_row(project)
        s.add_all([ck, ds])
        s.flush()
        ck_id, ds_id = ck.id, ds.id
    login(app_client, secret)
    page = app_client.get("/jobs/new").text
    assert "mma" in page  # the checkpoint picker names the method
    # MMA-only settings have fields; shared ones show MMA's default next to the prompt jobs' one
    for name in ("gradient_scale", "normalise_endpoints", "adapter_scale"):
        assert f'name="{name}"' in page, name
    assert re.search(r'<option value="">false \(default; MMA jobs only\)</option>', page)
    assert 'placeholder="0.002 (heads: 0.01) (MMA: 0.0015)"' in page
    key = re.search(r'name="idempotency_key" value="([0-9a-f]+)"', page).group(1)
    form = {
        "csrf": csrf_token(page), "idempotency_key": key, "checkpoint_id": ck_id, "dataset_id": ds_id,
        "backbone_model": "tiny-test", "backbone_pretrained": "random",
        "epochs": "3", "lr": "0.01", "loss_type": "l2", "w_zs": "5", "class_token_position": "middle",
        "gradient_scale": "true", "normalise_endpoints": "true", "adapter_scale": "0.002",
    }  # fmt: skip
    r = app_client.post("/jobs", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    job_id = r.headers["location"].removeprefix("/jobs/")
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job.job_type == "mma" and job.prompt is None
        # prompt-only fields (loss_type, w_zs) are not sent; the rest takes MMA's defaults
        want = MMAHyperparameters(
            epochs=3, lr=0.01, gradient_scale=True, normalise_endpoints=True, adapter_scale=0.002
        )
        assert job.hyperparameters == want.model_dump(mode="json")
    job_page = app_client.get(f"/jobs/{job_id}").text
    assert "mma" in job_page
