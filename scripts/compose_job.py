"""One recovery job through a running compose stack (called by scripts/compose-test.sh).

1. fine-tunes CoOp prompts on the built-in data with the core (a few epochs; the checkpoint a user brings)
   and writes them in the Dassl layout;
2. through the REST API: uploads it, registers the built-in dataset, creates a job (tiny CLIP with its
   built-in weights, on the worker's CPU);
3. once the job is running and past its first epoch, SIGKILLs the worker container and starts it again;
4. waits for success, downloads the recovered prompts and checks them, prints the job's events.

``--checkpoint-only``: step 1 alone (the script runs it while the images build).
Environment: MERGETUNE_URL, MERGETUNE_TOKEN, CT_ENGINE (docker|podman), CT_WORKER (container id),
CT_OUT (a folder for the checkpoint and downloads), CT_EPOCHS (job epochs), CT_TIMEOUT (seconds).
Exit status 0 only when every step did what it should.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

URL = os.environ["MERGETUNE_URL"].rstrip("/")
TOKEN = os.environ["MERGETUNE_TOKEN"]
ENGINE = os.environ["CT_ENGINE"]
WORKER = os.environ["CT_WORKER"]
OUT = Path(os.environ["CT_OUT"])
EPOCHS = int(os.environ.get("CT_EPOCHS", "6"))
TIMEOUT = float(os.environ.get("CT_TIMEOUT", "480"))
# Small enough for a loaded 2-core CPU, long enough on a quiet one: batch size 1 makes an epoch 192 steps
# (about 1-2 s on the tiny model), so the poller sees epoch 1 saved and kills the worker mid-job.
JOB_HP = {"seed": 1, "epochs": EPOCHS, "shots": 4, "num_samples": 2, "feature_mode": "none", "batch_size": 1}
BACKBONE = {"model": "tiny-clip", "pretrained": "builtin"}
COOP_EPOCHS = 5
STARTED = time.monotonic()


def say(msg: str) -> None:
    sys.stdout.write(f"    [{time.monotonic() - STARTED:6.1f} s] {msg}\n")
    sys.stdout.flush()


def fail(msg: str) -> None:
    raise SystemExit(f"compose-test: FAILED: {msg}")


def finetuned_checkpoint(dest: Path) -> Path:
    """CoOp on the built-in base classes with the core, saved as Dassl's model.pth.tar-<epoch>."""
    import torch

    from mergetune.core.config import BackboneSpec, DatasetKind, Hyperparameters, PromptLearnerSpec
    from mergetune.core.data import base_to_novel, open_dataset
    from mergetune.core.method.recovery import train_coop
    from mergetune.core.model.backbone import load_backbone
    from mergetune.core.model.prompts import PromptLearner

    torch.set_num_threads(1)
    backbone = load_backbone(BackboneSpec(**BACKBONE))
    dataset = open_dataset(DatasetKind.builtin, OUT / "data", "", options={"domain": "downstream"})
    task = base_to_novel(dataset, shots=16, seed=1)
    hp = Hyperparameters(epochs=COOP_EPOCHS, seed=1, feature_mode="none")
    spec = PromptLearnerSpec()
    ctx = train_coop(backbone, task, hp, spec)
    prefix, suffix = PromptLearner(backbone, task.base_classnames, ctx, spec).dassl_buffers()
    dest.parent.mkdir(parents=True, exist_ok=True)
    state = {"ctx": ctx.detach().cpu(), "token_prefix": prefix, "token_suffix": suffix}
    torch.save({"state_dict": state, "epoch": COOP_EPOCHS, "optimizer": None, "scheduler": None}, dest)
    return dest


def check(r: httpx.Response, expect: int) -> dict[str, Any]:
    if r.status_code != expect:
        fail(f"{r.request.method} {r.request.url.path} answered {r.status_code}: {r.text[:500]}")
    body: dict[str, Any] = r.json()
    return body


def container_state() -> str:
    out = subprocess.run(
        [ENGINE, "inspect", "-f", "{{.State.Status}}", WORKER], capture_output=True, text=True, check=True
    )
    return out.stdout.strip()


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    ckpt = OUT / "coop" / "prompt_learner" / f"model.pth.tar-{COOP_EPOCHS}"
    if sys.argv[1:] == ["--checkpoint-only"]:  # made while the images build
        finetuned_checkpoint(ckpt)
        return 0
    if not ckpt.exists():
        finetuned_checkpoint(ckpt)
    say(f"fine-tuned CoOp checkpoint ({COOP_EPOCHS} epochs, tiny CLIP, built-in data): {ckpt.name}")

    client = httpx.Client(base_url=URL, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60.0)
    with ckpt.open("rb") as f:
        up = check(client.post("/v1/checkpoints", files={"file": (ckpt.name, f)}), 201)
    if up["status"] != "ready":
        fail(f"checkpoint not accepted: {up}")
    say(f"checkpoint {up['id']}: {up['status']}, method {up['method']}, n_ctx {up['n_ctx']}")
    ds = check(
        client.post(
            "/v1/datasets",
            json={"name": "builtin-hue", "kind": "builtin", "path": "", "options": {"domain": "downstream"}},
        ),
        201,
    )
    say(f"dataset {ds['id']}: {ds['num_classes']} classes")
    job = check(
        client.post(
            "/v1/jobs",
            json={
                "checkpoint_id": up["id"],
                "dataset_id": ds["id"],
                "backbone": BACKBONE,
                "hyperparameters": JOB_HP,
            },
            headers={"Idempotency-Key": f"compose-test-{int(time.time())}"},
        ),
        202,
    )
    job_id = job["id"]
    say(f"job {job_id}: {job['status']} ({EPOCHS} epochs)")

    killed_at_epoch: int | None = None
    restarted = False
    last = ""
    deadline = time.monotonic() + TIMEOUT
    while True:
        if time.monotonic() > deadline:
            fail(f"job {job_id} did not finish in {TIMEOUT:.0f} s (last: {last})")
        job = check(client.get(f"/v1/jobs/{job_id}"), 200)
        progress = job.get("progress") or {}
        epoch = int(progress.get("epoch") or 0)
        line = f"{job['status']} epoch {epoch}/{progress.get('epochs', EPOCHS)}"
        if line != last:
            say(line)
            last = line
        if job["status"] in ("failed", "cancelled"):
            fail(f"job {job_id} {job['status']}: {job.get('error')}")
        if job["status"] == "succeeded":
            break
        if killed_at_epoch is None and job["status"] == "running" and epoch >= 1:
            # SIGKILL: no warm shutdown, no chance to hand the job back.
            subprocess.run([ENGINE, "kill", "--signal", "KILL", WORKER], check=True, capture_output=True)
            killed_at_epoch = epoch
            say(f"worker container SIGKILLed at epoch {epoch}")
            for _ in range(60):
                if container_state() != "running":
                    break
                time.sleep(0.5)
            say(f"worker container: {container_state()}")
            time.sleep(3)
            mid = check(client.get(f"/v1/jobs/{job_id}"), 200)
            say(f"job while its worker is dead: {mid['status']}")
            if mid["status"] == "succeeded":
                fail("the job finished although its worker was killed")
        if killed_at_epoch is not None and not restarted:
            # Docker may already have restarted it (restart: unless-stopped); start is then a no-op.
            if container_state() != "running":
                subprocess.run([ENGINE, "start", WORKER], check=True, capture_output=True)
            restarted = True
            say(f"worker container started again: {container_state()}")
        time.sleep(0.5)

    if killed_at_epoch is None:
        fail(f"the job finished before the worker could be killed; raise CT_EPOCHS (now {EPOCHS})")
    events = check(client.get(f"/v1/jobs/{job_id}/events", params={"limit": 500}), 200)
    rows = events.get("data", events if isinstance(events, list) else [])
    notable = [
        e["message"]
        for e in rows
        if not str(e.get("type", "")).startswith("epoch") and e.get("type") not in ("progress", "metrics")
    ]
    for message in notable[-12:]:
        say(f"event: {message}")
    m = job["metrics"]
    say(
        "metrics (base/novel/HM): "
        + ", ".join(f"{k} {m[k]['base']:.1f}/{m[k]['novel']:.1f}/{m[k]['hm']:.1f}" for k in m)
    )
    say(f"verdict: {(job.get('verdict') or {}).get('text')}")

    r = client.get(f"/v1/jobs/{job_id}/artifacts/prompts.safetensors")
    if r.status_code != 200:
        fail(f"prompts download answered {r.status_code}: {r.text[:300]}")
    dest = OUT / "prompts.safetensors"
    dest.write_bytes(r.content)
    from safetensors.numpy import load_file

    tensors = load_file(str(dest))
    ctx = tensors.get("ctx")
    if ctx is None or ctx.shape != (up["n_ctx"], up["ctx_dim"]):
        shapes = {k: v.shape for k, v in tensors.items()}
        fail(f"downloaded prompts hold {shapes}, not ctx {up['n_ctx']}x{up['ctx_dim']}")
    say(f"downloaded prompts.safetensors ({len(r.content)} bytes): ctx {tuple(ctx.shape)}")
    summary = {
        "job": job_id,
        "status": job["status"],
        "killed_at_epoch": killed_at_epoch,
        "epochs": EPOCHS,
        "metrics": m,
        "events": notable[-12:],
    }
    (OUT / "summary.json").write_text(json.dumps(summary, indent=2))
    say(f"job {job_id} succeeded after the worker was SIGKILLed at epoch {killed_at_epoch} and restarted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
