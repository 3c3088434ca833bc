"""GPU benchmark (one device call, < 8 minutes): ViT-B-16 random weights, AMP, synthetic random images.

    bench/gpu.sh                      # on the device machine, from the repo root
    bench/gpu.sh --cpu-smoke          # tiny model on the CPU: checks that every part runs (seconds)

Parts (each prints absolute times and ratios; everything goes through the same core code paths as a job):

1. per-step: ``bench/step.py``'s comparison (reference-style step vs ours exact vs ours cached bank),
   C = 5, 50, 500, batch 32, with the max loss difference;
2. EuroSAT-size job (5 base classes x 16 shots, 100 epochs): ``mergetune.core.method.recovery.recover`` end to end
   in each feature mode side by side (exact, the default; bank of ``epochs`` views; bank of 2 views),
   training and evaluation with curves (``--test-per-class`` test images per class), vs the
   reference-style Dassl loop (``--ref-epochs`` epochs measured, EXTRAPOLATED to 100, + its test loop);
3. ImageNet-size (500 base classes x 16 shots = 8000 images): ours = feature bank build (measured on
   ``--bank-sample`` images, EXTRAPOLATED to 8000) + ``train_prompts`` for ``--in-epochs`` epochs on
   bank-shaped features (EXTRAPOLATED to 100 epochs); reference = ``--ref-steps`` Dassl-style steps
   (EXTRAPOLATED to 62 steps/epoch x 100 epochs). Evaluation is not included in this part.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/gpu.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.benchlib import machine, pick_threads, synthetic_task  # noqa: E402


def _hm(s: float) -> str:
    return f"{s:,.1f} s" if s < 600 else f"{s:,.0f} s ({s / 3600:.2f} h)"


def part_steps(args, dev) -> None:
    from bench.step import bench_case, plan
    from mergetune.core.config import BackboneSpec, Hyperparameters, PromptLearnerSpec
    from mergetune.core.model.backbone import load_backbone

    print(f"\n== 1. per-step, {args.model} random weights, batch {args.batch}, AMP {dev.type == 'cuda'}")
    backbone = load_backbone(BackboneSpec(model=args.model, pretrained="random"), dev)
    hp = Hyperparameters(precision="amp", batch_size=args.batch)
    spec = PromptLearnerSpec()
    step_args = argparse.Namespace(batch=args.batch)
    rows: list[dict] = []
    for n in args.n_cls:
        reps = plan(args.model, n, dev.type, args.cpu_smoke, 10**9)
        row = bench_case(backbone, n, step_args, reps, hp, spec)
        if row["ref_measured"]:
            row["ref_note"] = "measured"
        rows.append(row)
        ref = row["ref_s"]
        print(
            f"C={n:4d} (trim {row['trim_len']}/77): reference {ref * 1e3:9.2f} ms | ours exact "
            f"{row['exact_s'] * 1e3:8.2f} ms ({ref / row['exact_s']:6.1f}x) | ours bank {row['bank_s'] * 1e3:7.2f} "
            f"ms ({ref / row['bank_s']:6.1f}x) | max |loss diff| {row['max_loss_diff']:.2e} ({row['ref_note']})"
        )
    del backbone
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def part_eurosat(args, dev) -> None:
    from bench.job import _reference_job
    from mergetune.core.config import BackboneSpec, Hyperparameters, PromptLearnerSpec
    from mergetune.core.method.recovery import recover
    from mergetune.core.model.backbone import load_backbone
    from mergetune.core.model.prompts import init_ctx

    backbone = load_backbone(BackboneSpec(model=args.model, pretrained="random"), dev)
    task = synthetic_task(args.eurosat_base, 16, backbone.image_size, test_per_class=args.test_per_class)
    print(
        f"\n== 2. EuroSAT-size job: {len(task.base_classnames)} base x 16 shots = {len(task.train)} images, "
        f"{args.epochs} epochs, test {len(task.test_base)} + {len(task.test_novel)} images"
    )
    spec = PromptLearnerSpec()
    g = torch.Generator().manual_seed(0)
    ctx_ft = init_ctx(backbone, spec) + 0.02 * torch.randn(spec.n_ctx, backbone.text_width, generator=g)
    runs = {
        "exact": Hyperparameters(epochs=args.epochs, precision="amp", feature_mode="exact"),
        f"bank V={args.epochs}": Hyperparameters(
            epochs=args.epochs, precision="amp", feature_mode="bank", bank_views=args.epochs
        ),
        "bank V=2": Hyperparameters(epochs=args.epochs, precision="amp", feature_mode="bank", bank_views=2),
    }
    whole: dict[str, tuple[float, float]] = {}
    for label, hp in runs.items():
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        t0 = time.perf_counter()
        res = recover(backbone, task, ctx_ft, hp)
        took = time.perf_counter() - t0
        tm = res.result.timings
        train = (
            tm.get("train_features", 0.0) + tm.get("constant_text_features", 0.0) + tm.get("training", 0.0)
        )
        whole[label] = (took, train)
        mem = (
            f", peak GPU memory {torch.cuda.max_memory_allocated(dev) / 2**30:.2f} GiB"
            if dev.type == "cuda"
            else ""
        )
        print(
            f"ours ({label}): whole job {_hm(took)}, of which features+training {_hm(train)} "
            f"({train / args.epochs * 1e3:.1f} ms/epoch){mem}"
        )
        print("  timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in tm.items()))
    ex = whole["exact"][1]
    print(
        "features+training per epoch vs exact: "
        + ", ".join(f"{k} {v[1] / ex:.2f}x" for k, v in whole.items())
        + " (the default is exact; bank V=epochs is the same distribution)"
    )
    ours, train = whole["exact"]
    hp = runs["exact"]
    ref = _reference_job(backbone, task, ctx_ft, hp, spec, args.ref_epochs)
    print(f"reference: whole job {_hm(ref['job_s'])}, training {_hm(ref['train_s'])} -- {ref['note']}")
    print(
        f"ratio reference / ours: whole job {ref['job_s'] / ours:.1f}x, training {ref['train_s'] / train:.1f}x"
        f" (ours: exact); target: ours EuroSAT-size job <= 30 s on one H100: "
        f"{'MET' if ours <= 30 else 'MISSED'} ({_hm(ours)})"
    )
    del backbone
    if dev.type == "cuda":
        torch.cuda.empty_cache()


class _FakeBank:
    """Bank-shaped batches (random normalised features) for timing the training loop alone."""

    def __init__(self, n: int, n_cls: int, dim: int, batch: int, dev) -> None:
        from mergetune.core.model.features import batch_plan

        g = torch.Generator().manual_seed(0)
        self.feats = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=-1).to(dev)
        self.labels = (torch.arange(n) % n_cls).to(dev)
        self.batch = batch
        self.steps_per_epoch, _ = batch_plan(n, batch)

    def epoch(self, epoch: int):
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(epoch))
        for s in range(self.steps_per_epoch):
            idx = order[s * self.batch : (s + 1) * self.batch].to(self.feats.device)
            yield self.feats[idx], self.labels[idx]


def part_imagenet(args, dev) -> None:
    from bench.reference import ReferenceModel, dassl_epoch
    from mergetune.core.config import BackboneSpec, Hyperparameters, PromptLearnerSpec
    from mergetune.core.method.objectives import LossWeights
    from mergetune.core.method.schedule import build_optimizer
    from mergetune.core.method.train import train_prompts
    from mergetune.core.model.backbone import load_backbone
    from mergetune.core.model.features import batch_plan, encode_bank
    from mergetune.core.model.prompts import PromptLearner, encode_template, init_ctx

    backbone = load_backbone(BackboneSpec(model=args.model, pretrained="random"), dev)
    n_base = args.imagenet_base
    task = synthetic_task(n_base, 16, backbone.image_size, test_per_class=1)
    n = len(task.train)
    hp = Hyperparameters(epochs=args.epochs, precision="amp")
    steps, _ = batch_plan(n, hp.batch_size)
    print(
        f"\n== 3. ImageNet-size: {n_base} base x 16 shots = {n} images, batch {hp.batch_size} "
        f"({steps} steps/epoch), {args.epochs} epochs (training only, no evaluation)"
    )
    spec = PromptLearnerSpec()
    g = torch.Generator().manual_seed(0)
    ctx_ft = init_ctx(backbone, spec) + 0.02 * torch.randn(spec.n_ctx, backbone.text_width, generator=g)

    # ours: bank build, measured on a sample and scaled to all images
    sample = task.train[: min(n, args.bank_sample)]
    t0 = time.perf_counter()
    encode_bank(backbone, task.dataset, sample, hp.bank_views, hp.seed)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    bank_s = (time.perf_counter() - t0) * n / len(sample)
    learner = PromptLearner(backbone, task.base_classnames, ctx_ft, spec)
    anchor = encode_template(backbone, task.base_classnames, task.template)
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=dev.type == "cuda"):
        ft = learner.text_features().float()
    src = _FakeBank(n, n_base, backbone.embed_dim, hp.batch_size, dev)
    stamps: list[float] = []
    t0 = time.perf_counter()
    train_prompts(
        learner,
        src,
        hp.model_copy(update={"epochs": args.in_epochs}),
        LossWeights.mergetune(hp),
        tau=backbone.logit_scale,
        anchor=anchor,
        ft_feats=ft,
        on_epoch_end=lambda _s: stamps.append(time.perf_counter()),
    )
    epoch_times = [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)]
    per_epoch = sorted(epoch_times[1:] or epoch_times)[len(epoch_times[1:] or epoch_times) // 2]
    ours = bank_s + per_epoch * args.epochs
    per_view = bank_s / hp.bank_views  # one augmentation + one image pass of every image
    exact = (per_view + per_epoch) * args.epochs
    print(
        f"ours (bank V={hp.bank_views}, an approximation): bank build {_hm(bank_s)} (EXTRAPOLATED from "
        f"{len(sample)} images x {hp.bank_views} views) + {per_epoch:.2f} s/epoch (median of "
        f"{len(epoch_times)} measured epochs) x {args.epochs} = {_hm(ours)} (EXTRAPOLATED)"
    )
    print(
        f"ours (exact, default; bank V={args.epochs} costs the same images x views): ({per_view:.2f} s of "
        f"image passes + {per_epoch:.2f} s) per epoch x {args.epochs} = {_hm(exact)} (EXTRAPOLATED)"
    )

    # reference: a few Dassl-style steps
    ref_learner = PromptLearner(backbone, task.base_classnames, ctx_ft, spec)
    ref = ReferenceModel(ref_learner, ctx_ft, anchor, amp=dev.type == "cuda")
    opt = build_optimizer([ref_learner.ctx], hp)
    scaler = torch.amp.GradScaler("cuda", enabled=dev.type == "cuda")
    dassl_epoch(ref, opt, scaler, backbone, task.dataset, list(task.train), hp, 0, max_steps=1)  # warm-up
    k, sec = dassl_epoch(
        ref, opt, scaler, backbone, task.dataset, list(task.train), hp, 1, max_steps=args.ref_steps
    )
    ref_total = sec / k * steps * args.epochs
    print(
        f"reference: {sec / k:.2f} s/step (mean of {k} Dassl-style steps incl. loading+augmentation) x {steps} "
        f"steps x {args.epochs} epochs = {_hm(ref_total)} (EXTRAPOLATED)"
    )
    print(
        f"ratio reference / ours (training): exact {ref_total / exact:.1f}x, bank V={hp.bank_views} {ref_total / ours:.1f}x"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true", help="tiny model on the CPU, tiny sizes: a run check")
    ap.add_argument("--parts", default="steps,eurosat,imagenet")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--batch", type=int, default=32, help="batch of the per-step comparison")
    ap.add_argument("--n-cls", default="5,50,500")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--eurosat-base", type=int, default=5)
    ap.add_argument("--test-per-class", type=int, default=100, help="EuroSAT-size test images per class")
    ap.add_argument("--ref-epochs", type=int, default=5)
    ap.add_argument("--imagenet-base", type=int, default=500)
    ap.add_argument("--bank-sample", type=int, default=1024, help="images whose bank is built, then scaled")
    ap.add_argument("--in-epochs", type=int, default=3, help="ImageNet-size epochs measured")
    ap.add_argument("--ref-steps", type=int, default=5, help="ImageNet-size reference steps measured")
    args = ap.parse_args()
    if args.cpu_smoke:
        args.model, args.n_cls, args.epochs = "tiny-test", "5,50", 3
        args.test_per_class, args.ref_epochs, args.imagenet_base = 4, 1, 20
        args.bank_sample, args.in_epochs, args.ref_steps = 64, 2, 1
        dev = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device (use --cpu-smoke to check the script on a CPU)")
        dev = torch.device("cuda")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    args.n_cls = [int(x) for x in str(args.n_cls).split(",") if x]
    if dev.type == "cpu":
        _, why = pick_threads("1")
    else:
        why = f"{torch.get_num_threads()} (torch default; the GPU does the work)"
    print(f"machine: {machine(dev)}; torch threads {why}")
    t_all = time.perf_counter()
    for part in [p for p in args.parts.split(",") if p]:
        t0 = time.perf_counter()
        {"steps": part_steps, "eurosat": part_eurosat, "imagenet": part_imagenet}[part](args, dev)
        print(f"   (part {part} took {time.perf_counter() - t0:.1f} s)")
    print(f"\ntotal {time.perf_counter() - t_all:.1f} s")


if __name__ == "__main__":
    main()
