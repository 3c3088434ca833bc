"""How good is the finish estimate? Real jobs through a real service, their ETA polled every second.

    .venv/bin/python bench/eta.py                                # three jobs: 3, 8 and 16 epochs
    .venv/bin/python bench/eta.py --plan 2:4,6:8,12:16 --poll 1

A fresh ``mergetune serve --embedded`` (API + one worker, SQLite, filesystem queue; bench/api.py's
Service) runs the jobs of ``--plan`` (``epochs:shots``, one after the other, on the tiny backbone and the
builtin dataset) from an empty history: the first job's estimate at queue time has only the configured
default to go on, the later ones the jobs before them. While a job runs, ``GET /v1/jobs/{id}`` is polled
every ``--poll`` seconds. The table gives, per job, its epochs and training images, when it finished
(seconds after it was submitted), and the estimate at submission and at the first poll at or after 25%,
50% and 75% of its training: the range and likely finish (seconds after submission) and the error of
the likely finish relative to the time that was left then ((estimated - actual) / (actual - poll time)).
"max swing" is the largest move of the likely finish between two successive polls.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/eta.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import httpx  # noqa: E402

from bench.api import Service, small_checkpoint  # noqa: E402

TERMINAL = {"succeeded", "failed", "cancelled", "timed_out", "expired"}
MARKS = (0.25, 0.5, 0.75)


def _at(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _fraction(job: dict[str, Any]) -> float:
    p = job.get("progress") or {}
    if job["status"] in ("evaluating", *TERMINAL):
        return 1.0
    try:
        return (int(p["epoch"]) - 1 + int(p["step"]) / max(1, int(p["steps"]))) / max(1, int(p["epochs"]))
    except (KeyError, TypeError, ValueError):
        return 0.0


def run_job(client: httpx.Client, body: dict[str, Any], poll: float) -> dict[str, Any]:
    submitted = time.time()
    r = client.post("/v1/jobs", json=body)
    r.raise_for_status()
    job = r.json()
    samples: list[dict[str, Any]] = []
    while True:
        rng = job.get("estimated_finish_range")
        if job.get("estimated_finish") and rng:
            samples.append(
                {
                    "t": time.time(),
                    "status": job["status"],
                    "fraction": _fraction(job),
                    "likely": _at(job["estimated_finish"]),
                    "earliest": _at(rng["earliest"]),
                    "latest": _at(rng["latest"]),
                    "basis": rng["basis"],
                }
            )
        if job["status"] in TERMINAL:
            break
        time.sleep(poll)
        job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
    if job["status"] != "succeeded":
        raise RuntimeError(f"job {job['id']} ended {job['status']}: {job.get('error')}")
    return {"job": job, "submitted": submitted, "finished": _at(job["finished_at"]), "samples": samples}


def _cell(sample: dict[str, Any] | None, submitted: float, finished: float) -> str:
    if sample is None:
        return "—"
    left = finished - sample["t"]
    err = 100 * (sample["likely"] - finished) / left if left > 0 else float("nan")
    lo, mid, hi = (sample[k] - submitted for k in ("earliest", "likely", "latest"))
    return f"{lo:.0f}–{hi:.0f} ({mid:.0f}, {err:+.0f}%)"


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    samples, submitted, finished = result["samples"], result["submitted"], result["finished"]
    live = [s for s in samples if s["status"] != "succeeded"]
    cells = {"queued": _cell(live[0] if live else None, submitted, finished)}
    for mark in MARKS:
        first = next((s for s in live if s["fraction"] >= mark), None)
        cells[f"{round(mark * 100)}%"] = _cell(first, submitted, finished)
    swings = [abs(b["likely"] - a["likely"]) for a, b in zip(live, live[1:], strict=False)]
    hp = result["job"]["hyperparameters"]
    return {
        "id": result["job"]["id"],
        "epochs": hp["epochs"],
        "shots": hp["shots"],
        "actual": finished - submitted,
        **cells,
        "max_swing": max(swings) if swings else 0.0,
        "polls": len(live),
        "basis_queued": live[0]["basis"] if live else "",
        "basis_last": live[-1]["basis"] if live else "",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--plan", default="3:4,8:8,16:16", help="jobs as epochs:shots, comma-separated")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--train-per-class", type=int, default=256, help="builtin train images per class")
    ap.add_argument("--test-per-class", type=int, default=4, help="builtin test images per class")
    ap.add_argument("--poll", type=float, default=1.0, help="seconds between GETs")
    ap.add_argument("--log-level", default="WARNING")
    ap.add_argument("--json", type=Path, help="also write the samples and the table here")
    args = ap.parse_args()
    plan = [tuple(int(x) for x in item.split(":")) for item in args.plan.split(",")]

    with tempfile.TemporaryDirectory(prefix="mergetune-bench-eta-") as tmp:
        workdir = Path(tmp)
        (workdir / "home").mkdir()
        svc = Service("embedded", workdir / "home", args)
        svc.start()
        try:
            client = httpx.Client(
                base_url=svc.url, headers={"Authorization": f"Bearer {svc.token}"}, timeout=120
            )
            ck = workdir / "small.pth.tar"
            small_checkpoint(ck, 64)
            with open(ck, "rb") as f:
                r = client.post(
                    "/v1/checkpoints", files={"file": ("model.pth.tar-1", f)}, data={"method": "coop"}
                )
            ckpt = r.raise_for_status().json()["id"]
            options = {
                "num_classes": args.num_classes,
                "train_per_class": args.train_per_class,
                "val_per_class": 2,
                "test_per_class": args.test_per_class,
            }
            r = client.post(
                "/v1/datasets",
                json={"name": "eta", "kind": "builtin", "options": options},
            )
            ds = r.raise_for_status().json()["id"]
            rows, raw = [], []
            for epochs, shots in plan:
                body = {
                    "checkpoint_id": ckpt,
                    "dataset_id": ds,
                    "backbone": {"model": "tiny-test", "pretrained": "random"},
                    "hyperparameters": {"epochs": epochs, "shots": shots},
                }
                result = run_job(client, body, args.poll)
                raw.append(result)
                rows.append(summarise(result))
                print(
                    f"job {len(rows)}: {rows[-1]['epochs']} epochs done in {rows[-1]['actual']:.1f} s",
                    file=sys.stderr,
                )
        finally:
            svc.stop()

    print(
        "| job | epochs | shots | actual finish (s) | ETA at queue time | at 25% | at 50% | at 75% | max swing (s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        print(
            f"| {i} | {r['epochs']} | {r['shots']} | {r['actual']:.1f} | {r['queued']} | {r['25%']} | "
            f"{r['50%']} | {r['75%']} | {r['max_swing']:.1f} |"
        )
    print()
    for i, r in enumerate(rows, 1):
        print(f"job {i} basis at queue time: {r['basis_queued']}; last: {r['basis_last']}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "samples": [x["samples"] for x in raw]}, indent=1))


if __name__ == "__main__":
    main()
