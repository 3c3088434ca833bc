"""The dashboard with an MMA checkpoint: the new-job form sends only what MMA jobs take, and the job
page names the method."""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi.testclient import TestClient
from test_dashboard_http import _csrf, _login, _project, _redis, app_client, settings  # noqa: F401

from common.db import session_scope
from common.models import Checkpoint, Dataset, Job
from core.config import MMAHyperparameters
from core.mma_layout import AdapterLayout


def test_new_job_form_with_an_mma_checkpoint(app_client: TestClient, settings: Any) -> None:  # noqa: F811
    url = settings.DATABASE_URL
    project, secret = _project(url)
    with session_scope(url) as s:
        ck = Checkpoint(
            project_id=project, name="mma-ckpt", filename="model.pth.tar-5", bytes=100, sha256="ab" * 32,
            format="dassl", method="mma", status="ready", ctx_dim=64, csc=False, n_cls=3,
            info={"mma_layout": AdapterLayout(64, 64, 1, 1).to_json()},
        )  # fmt: skip
        ds = Dataset(
            project_id=project, name=f"set-{uuid.uuid4().hex[:6]}", kind="builtin", path="",
            num_classes=6, classnames=list("abcdef"), base_classes=list("abc"), novel_classes=list("def"),
            split_sizes={"train": 24, "val": 12, "test": 24}, template="a photo of a {}.",
            sha256_of_split="cd" * 32,
        )  # fmt: skip
        s.add_all([ck, ds])
        s.flush()
        ck_id, ds_id = ck.id, ds.id
    _login(app_client, secret)
    page = app_client.get("/jobs/new").text
    assert "mma" in page  # the checkpoint picker names the method
    key = re.search(r'name="idempotency_key" value="([0-9a-f]+)"', page).group(1)
    form = {
        "csrf": _csrf(page), "idempotency_key": key, "checkpoint_id": ck_id, "dataset_id": ds_id,
        "backbone_model": "tiny-test", "backbone_pretrained": "random",
        "epochs": "3", "lr": "0.01", "loss_type": "l2", "w_zs": "5", "class_token_position": "middle",
    }  # fmt: skip
    r = app_client.post("/jobs", data=form, follow_redirects=False)
    assert r.status_code == 303, r.text
    job_id = r.headers["location"].removeprefix("/jobs/")
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        assert job.job_type == "mma" and job.prompt is None
        # prompt-only fields (loss_type, w_zs) are not sent; the rest takes MMA's defaults
        assert job.hyperparameters == MMAHyperparameters(epochs=3, lr=0.01).model_dump(mode="json")
    job_page = app_client.get(f"/jobs/{job_id}").text
    assert "mma" in job_page
