"""A sweep end to end: a CoOp output tree of 3 builtin dataset variants x 2 seeds, zipped the way CoOp
leaves it, through the real CLI (create --tree, wait, download) against uvicorn + two Celery worker
processes + Postgres + Redis, 1 epoch of the tiny model per cell. The report's numbers are checked
against the jobs' own metrics (seed means, HM of the means, the average over datasets)."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest
import worker_support as ws
from tree_writer import coop_tree, zip_bytes

pytestmark = pytest.mark.slow

VARIANTS = {"builtin_a": 0, "builtin_b": 1, "builtin_c": 2}  # tree name -> the builtin set's seed


def _hm(b: float, n: float) -> float:
    return 2 * b * n / (b + n)


def _cli(env, url, token, *args, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "mergetune.cli", *args, "--url", url, "--token", token],
        cwd=ws.REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_tree_sweep_runs_on_two_workers_and_reports_the_table(
    api, token, celery_worker, e2e_env, e2e_settings, tmp_path
):
    from mergetune.core.checkpoints.export import export_prompts

    second = ws.WorkerProcess(e2e_env, tmp_path / "worker2.log", nodename="e2e2@test").start(wait=False)
    try:
        client = httpx.Client(base_url=api.url, headers={"Authorization": f"Bearer {token}"}, timeout=60)
        ids = {}
        for name, seed in VARIANTS.items():
            opts = {**ws.TINY_DATASET_OPTIONS, "seed": seed}
            r = client.post(
                "/v1/datasets",
                json={"name": name if name != "builtin_c" else "third", "kind": "builtin", "options": opts},
            )
            assert r.status_code == 201, r.text
            ids[name] = r.json()["id"]
        runs = []
        for name in VARIANTS:
            for seed in (1, 2):
                out = tmp_path / f"{name}-{seed}"
                path = export_prompts(out, ws.tiny_ctx(seed=seed), token_prefix=None, token_suffix=None,
                                      metadata={"method": "coop"}, epoch=1)["prompts.pth.tar"]  # fmt: skip
                runs.append((name, seed, path.read_bytes()))
        tree = tmp_path / "output.zip"
        tree.write_bytes(zip_bytes(coop_tree(runs, epoch=1)))
        second.wait_ready(90)

        r = _cli(e2e_env, api.url, token, "sweep", "create", "--tree", str(tree), "--name", "b2n-e2e",
                 "--dataset-map", f"builtin_c={ids['builtin_c']}", "--model", "tiny-test", "--pretrained", "random",
                 "--hp", "epochs=1", "--hp", "batch_size=4", "--hp", "shots=4")  # fmt: skip
        assert r.returncode == 0, r.stderr
        sweep = json.loads(r.stdout)
        assert sweep["progress"]["jobs"] == 6 and sweep["source"]["runs"] == 6
        assert {c["dataset_id"] for c in sweep["cells"]} == set(ids.values())

        r = _cli(
            e2e_env,
            api.url,
            token,
            "sweep",
            "wait",
            sweep["id"],
            "--quiet",
            "--interval",
            "0.5",
            "--wait-timeout",
            "200",
        )
        print(r.stderr)  # the table (kept in the test log)
        print(
            "run seconds",
            [
                round(ws.job_row(e2e_settings.DATABASE_URL, j["id"])["run_seconds"], 1)
                for j in json.loads(r.stdout)["jobs"]
            ],
        )
        assert r.returncode == 0, r.stdout + r.stderr
        done = json.loads(r.stdout)
        assert done["status"] == "succeeded" and done["progress"]["succeeded"] == 6
        assert "Average" in r.stderr and "MergeTune (recovered)" in r.stderr

        # Cells ran in parallel across the two workers.
        hosts = {ws.job_row(e2e_settings.DATABASE_URL, j["id"])["worker_host"] for j in done["jobs"]}
        assert hosts == {"e2e@test", "e2e2@test"}, hosts

        rep = client.get(f"/v1/sweeps/{sweep['id']}/report.json").json()
        table = rep["table"]
        assert [d["dataset"] for d in table["datasets"]] == list(VARIANTS)
        metrics = {
            (j["dataset"], j["seed"]): client.get(f"/v1/jobs/{j['job_id']}").json()["metrics"]
            for j in rep["jobs"]
        }
        base_means, novel_means = [], []
        for d in table["datasets"]:
            assert d["seeds"] == [1, 2] and set(d["rows"]) == {
                "zero_shot",
                "fine_tuned",
                "feature_interpolation",
                "ensemble",
                "recovered",
            }
            rec = [metrics[(d["dataset"], s)]["recovered"] for s in (1, 2)]
            b, n = (rec[0]["base"] + rec[1]["base"]) / 2, (rec[0]["novel"] + rec[1]["novel"]) / 2
            assert d["rows"]["recovered"]["base"] == pytest.approx(b) and d["rows"]["recovered"][
                "novel"
            ] == pytest.approx(n)
            assert d["rows"]["recovered"]["hm"] == pytest.approx(_hm(b, n))
            assert d["rows"]["recovered"]["base_std"] == pytest.approx(
                abs(rec[0]["base"] - rec[1]["base"]) / 2
            )
            base_means.append(b)
            novel_means.append(n)
        avg = table["average"]["rows"]["recovered"]
        assert avg["hm"] == pytest.approx(_hm(sum(base_means) / 3, sum(novel_means) / 3))

        out = tmp_path / "report"
        r = _cli(e2e_env, api.url, token, "sweep", "download", sweep["id"], "--out", str(out))
        assert r.returncode == 0, r.stderr
        assert sorted(p.name for p in out.iterdir()) == sorted(
            f"{sweep['id']}-report.{f}" for f in ("csv", "html", "json", "tex", "txt")
        )
        assert "\\begin{tabular}" in (out / f"{sweep['id']}-report.tex").read_text()
        assert "MergeTune (recovered)" in (out / f"{sweep['id']}-report.txt").read_text()
        html = (out / f"{sweep['id']}-report.html").read_text()
        assert all(f"/jobs/{j['job_id']}" in html for j in rep["jobs"])
        client.close()
    finally:
        second.stop()
