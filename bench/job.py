"""A whole MergeTune job, reference-style vs ours: wall time and peak memory, each in its own process.

    .venv/bin/python bench/job.py                      # built-in dataset, EuroSAT-size (5 base x 16 shots)
    .venv/bin/python bench/job.py --ref-epochs 2 --variants reference,ours-bank

Backbone: the bundled tiny CLIP (``tiny-clip``/``builtin``) when its weights file exists, else
``tiny-test``/``random`` (printed). Task: ``open_dataset(builtin, num_classes=2 * base)`` ->
``base_to_novel(shots)``; the fine-tuned context is the "a photo of a" init plus noise (speed does not
depend on how it was trained). Variants, each run in a fresh subprocess so that
``resource.getrusage(RUSAGE_SELF).ru_maxrss`` is that variant's own peak (torch allocations included):

- ``ours-bank``: ``mergetune.core.method.recovery.recover`` with the default hyperparameters but ``feature_mode=bank``
  (``Hyperparameters().bank_views`` augmented views, 100 epochs), including the full evaluation
  (metrics, baselines, curves);
- ``ours-exact``: the same with ``feature_mode=exact`` (the default: fresh augmentation, one image pass per step);
- ``reference``: a Dassl-style loop (images loaded and augmented per step, ``bench/reference.py``
  step: 1+K image passes, 3 text passes at 77 tokens) for ``--ref-epochs`` epochs, EXTRAPOLATED to
  the full epoch count, plus its test loop (prompts re-encoded per test batch) on both test splits.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/job.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.benchlib import machine  # noqa: E402


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _backbone_spec(model: str = "auto"):
    from mergetune.core.builtin import model as builtin_model
    from mergetune.core.config import BackboneSpec

    if model != "auto":
        return BackboneSpec(model=model, pretrained="random"), f"{model}/random (--model)"
    if Path(builtin_model.WEIGHTS_PATH).is_file():
        return BackboneSpec(model="tiny-clip", pretrained="builtin"), "tiny-clip/builtin (bundled weights)"
    return BackboneSpec(model="tiny-test", pretrained="random"), (
        "tiny-test/random (core/builtin/tiny_clip.safetensors not present)"
    )


def run_variant(variant: str, args: argparse.Namespace) -> dict:
    """Runs inside the child process; returns the measurements as a dict."""
    t_all = time.perf_counter()
    torch.set_num_threads(args.threads)
    from mergetune.core.config import DatasetKind, Hyperparameters, PromptLearnerSpec
    from mergetune.core.data import base_to_novel, open_dataset
    from mergetune.core.model.backbone import load_backbone
    from mergetune.core.model.prompts import init_ctx

    spec_bb, bb_note = _backbone_spec(args.model)
    backbone = load_backbone(spec_bb, "cpu")
    ds = open_dataset(DatasetKind.builtin, None, "", options={"num_classes": 2 * args.base})
    task = base_to_novel(ds, shots=args.shots, seed=1)
    spec = PromptLearnerSpec()
    g = torch.Generator().manual_seed(0)
    ctx_ft = init_ctx(backbone, spec) + 0.02 * torch.randn(spec.n_ctx, backbone.text_width, generator=g)
    hp = Hyperparameters(epochs=args.epochs)
    out: dict = {
        "variant": variant,
        "backbone": bb_note,
        "n_train": len(task.train),
        "n_base": len(task.base_classnames),
        "n_test": len(task.test_base) + len(task.test_novel),
        "setup_rss_mb": _maxrss_mb(),
    }
    t0 = time.perf_counter()
    if variant.startswith("ours"):
        from mergetune.core.method.recovery import recover

        hp = hp.model_copy(update={"feature_mode": "exact" if variant == "ours-exact" else "bank"})
        res = recover(backbone, task, ctx_ft, hp)
        out["job_s"] = time.perf_counter() - t0
        out["timings"] = res.result.timings
        out["train_s"] = res.result.timings.get("train_features", 0.0) + res.result.timings.get(
            "training", 0.0
        )
        out["hm"] = res.result.metrics.recovered.hm
        out["note"] = "measured: full job incl. evaluation, baselines and curves"
    else:
        out.update(_reference_job(backbone, task, ctx_ft, hp, spec, args.ref_epochs))
    out["peak_rss_mb"] = _maxrss_mb()
    out["process_s"] = time.perf_counter() - t_all
    return out


def _reference_job(backbone, task, ctx_ft, hp, spec, ref_epochs: int, *, test_batch: int = 100) -> dict:
    """Reference-style job: Dassl train loop for ``ref_epochs`` epochs (extrapolated to ``hp.epochs``),
    then Dassl's test loop on both test splits."""
    from bench.reference import ReferenceModel, dassl_epoch, reference_test
    from mergetune.core.method.schedule import EpochSchedule, build_optimizer
    from mergetune.core.method.train import use_amp
    from mergetune.core.model.prompts import PromptLearner, encode_template

    amp = use_amp(hp.precision, backbone.device)
    t0 = time.perf_counter()
    learner = PromptLearner(backbone, task.base_classnames, ctx_ft, spec)
    anchor = encode_template(backbone, task.base_classnames, task.template)
    ref = ReferenceModel(learner, ctx_ft, anchor, amp=amp)
    opt = build_optimizer([learner.ctx], hp)
    sched = EpochSchedule(opt, hp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    records = list(task.train)
    setup_s = time.perf_counter() - t0

    epoch_times = []
    for epoch in range(ref_epochs):
        sched.set_epoch(epoch)
        epoch_times.append(dassl_epoch(ref, opt, scaler, backbone, task.dataset, records, hp, epoch)[1])

    te = time.perf_counter()
    accs = {}
    for split, names in (("test_base", task.base_classnames), ("test_novel", task.novel_classnames)):
        recs = list(getattr(task, split))
        test_learner = PromptLearner(backbone, names, learner.ctx.detach(), spec)
        test_ref = ReferenceModel(test_learner, ctx_ft, anchor, amp)

        def batches(recs=recs):
            for s in range(0, len(recs), test_batch):  # Dassl test batch size 100
                chunk = recs[s : s + test_batch]
                img = torch.stack([backbone.test_transform(task.dataset.load_image(r.key)) for r in chunk])
                yield img, torch.tensor([r.label for r in chunk])

        accs[split] = reference_test(test_ref, batches())
    test_s = time.perf_counter() - te
    per_epoch = sorted(epoch_times)[len(epoch_times) // 2]
    return {
        "setup_s": setup_s,
        "epoch_s_measured": epoch_times,
        "test_s": test_s,
        "train_s": per_epoch * hp.epochs,
        "job_s": setup_s + per_epoch * hp.epochs + test_s,
        "note": f"EXTRAPOLATED: {ref_epochs} epoch(s) measured (median {per_epoch:.2f} s/epoch) x "
        f"{hp.epochs} epochs + setup + test (reference evaluation = plain test accuracy only)",
        "acc": accs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--variants", default="reference,ours-bank,ours-exact")
    ap.add_argument("--base", type=int, default=5, help="base classes (EuroSAT-size: 5)")
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--ref-epochs", type=int, default=3, help="reference epochs measured, then extrapolated")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in each child (1 on a shared box)")
    ap.add_argument(
        "--model", default="auto", help="auto (tiny-clip builtin, else tiny-test) or e.g. ViT-B-16"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(run_variant(args.child, args)))
        return

    print(f"machine: {machine(torch.device('cpu'))}")
    print(f"torch threads per child process: {args.threads}; each variant runs in its own subprocess")
    results = {}
    for variant in [v for v in args.variants.split(",") if v]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", variant]
        for k in ("base", "shots", "epochs", "ref_epochs", "threads", "model"):
            cmd += [f"--{k.replace('_', '-')}", str(getattr(args, k))]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            print(f"{variant}: FAILED (rc {proc.returncode})\n{proc.stderr[-3000:]}")
            continue
        r = json.loads(line[len("RESULT ") :])
        results[variant] = r
        print(
            f"{variant:>10}: job {r['job_s']:8.1f} s  (training incl. feature extraction {r['train_s']:7.1f} s)  "
            f"peak RSS {r['peak_rss_mb']:6.0f} MB (after setup {r['setup_rss_mb']:5.0f} MB)  -- {r['note']}"
        )
    if results:
        any_r = next(iter(results.values()))
        print(
            f"backbone: {any_r['backbone']}; task: {any_r['n_base']} base classes, {any_r['n_train']} "
            f"train images, {any_r['n_test']} test images, {args.epochs} epochs"
        )
    if "reference" in results:
        ref = results["reference"]
        for v in ("ours-bank", "ours-exact"):
            if v in results:
                r = results[v]
                print(
                    f"reference / {v}: whole job {ref['job_s'] / r['job_s']:.1f}x, training "
                    f"{ref['train_s'] / r['train_s']:.1f}x, peak RSS {ref['peak_rss_mb']:.0f} vs "
                    f"{r['peak_rss_mb']:.0f} MB"
                )
        if "ours-bank" in results:
            print(f"ours-bank timings: {results['ours-bank']['timings']}")


if __name__ == "__main__":
    main()
