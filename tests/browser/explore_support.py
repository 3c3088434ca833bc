"""Rows for the exploring pages' tests (job list columns, compare, sweep): jobs with chosen datasets,
backbones and hyperparameters, and a finished sweep over a grid, written straight to the database."""

from __future__ import annotations

from typing import Any

from browser_support import dataset_row


def make_rows(url: str, project_id: str, *, jobs: list[dict[str, Any]], datasets: int = 1) -> dict[str, Any]:
    """A ready checkpoint, ``datasets`` datasets and jobs in ``project_id``: each job a dict of Job column
    overrides (``dataset`` picks a dataset by index, 0 by default)."""
    from mergetune.common.db import session_scope
    from mergetune.common.models import Checkpoint, Job, new_id

    with session_scope(url) as s:
        ck = Checkpoint(
            project_id=project_id, name="coop-ckpt", filename="m.pth.tar", bytes=100, sha256="ab" * 32,
            format="dassl", method="coop", status="ready", n_ctx=4, ctx_dim=64, csc=False,
        )  # fmt: skip
        sets = [dataset_row(project_id) for _ in range(datasets)]
        s.add_all([ck, *sets])
        s.flush()
        ids = []
        for i, overrides in enumerate(jobs):
            values: dict[str, Any] = {
                "job_type": "prompt",
                "backbone": {"model": "tiny-test", "pretrained": "random"},
                "hyperparameters": {"epochs": 2},
                **overrides,
            }
            ds = sets[values.pop("dataset", 0)]
            job = Job(
                id=new_id("job")[:-2] + f"{i:02x}", project_id=project_id, checkpoint_id=ck.id,
                dataset_id=ds.id, **values,
            )  # fmt: skip
            s.add(job)
            s.flush()
            ids.append(job.id)
        return {"job_ids": ids, "dataset_names": [d.name for d in sets]}


def metrics(zs: float, ft: float, rec: float) -> dict[str, Any]:
    return {
        "zero_shot": {"base": zs + 10, "novel": zs, "hm": zs + 4},
        "fine_tuned": {"base": ft + 20, "novel": ft - 10, "hm": ft},
        "recovered": {"base": rec + 5, "novel": rec - 5, "hm": rec},
    }


def make_sweep(url: str, project_id: str, *, lrs: list[float], w_lmcs: list[float]) -> dict[str, Any]:
    """A finished sweep of one cell (a dataset, seed 1) over the grid lr x w_lmc, each job succeeded
    with a recovered HM that grows with lr and shrinks with w_lmc."""
    from datetime import timedelta

    from mergetune.common.db import session_scope
    from mergetune.common.models import Sweep, utcnow

    points = [{"lr": lr, "w_lmc": w} for lr in lrs for w in w_lmcs]
    jobs = [
        {"status": "succeeded", "metrics": metrics(60, 50, 50 + 1000 * p["lr"] - p["w_lmc"]),
         "hyperparameters": {"epochs": 2, **p}, "metadata_": {"sweep_point": i, "sweep_cell": 0}}
        for i, p in enumerate(points)
    ]  # fmt: skip
    rows = make_rows(url, project_id, jobs=jobs)
    with session_scope(url) as s:
        from mergetune.common.models import Job

        first = s.get(Job, rows["job_ids"][0])
        created = utcnow() - timedelta(minutes=7)
        sweep = Sweep(
            project_id=project_id, name="lr-by-wlmc", created_at=created, finished_at=created + timedelta(minutes=3),
            spec={"backbone": {"model": "tiny-test", "pretrained": "random"}, "protocol": "base2novel",
                  "prompt": None, "hyperparameters": {"epochs": 2}, "grid": {"lr": lrs, "w_lmc": w_lmcs},
                  "points": points, "selection": "val_acc", "metadata": {}},
            cells=[{"checkpoint_id": first.checkpoint_id, "dataset_id": first.dataset_id, "dataset": "builtin",
                    "seed": 1, "source": None}],
        )  # fmt: skip
        s.add(sweep)
        s.flush()
        for job_id in rows["job_ids"]:
            s.get(Job, job_id).sweep_id = sweep.id
        return {"sweep_id": sweep.id, "job_ids": rows["job_ids"], "points": points}
