"""Per-step time: reference-style MergeTune step vs ours (exact mode) vs ours (cached feature bank).

    .venv/bin/python bench/step.py                       # tiny-test and ViT-B-16 (random), 5/50/500 classes
    .venv/bin/python bench/step.py --quick --models tiny-test --n-cls 5,50
    .venv/bin/python bench/step.py --device cuda --amp   # what bench/gpu.sh runs

One batch (random pixels, ``--batch`` images) and one parameter state are shared by the three variants:

- reference: ``bench/reference.py`` (image encoder 1+K times, constant fine-tuned prompt features
  recomputed, learned prompt features encoded twice, all 77 tokens);
- ours exact: ``mergetune.core.method.train.train_prompts`` fed by a batch source that runs the image encoder once per
  step (what ``FeatureMode.exact`` does, minus the augmentation that both variants would pay alike);
  EOT-trimmed text path, G_ft and G_zs computed once;
- ours bank: the same loop fed from cached features (``FeatureMode.bank`` / ``none``): no image pass.

The learned context starts at the fine-tuned one plus a small perturbation so every loss term is
non-trivial; the three step-0 losses are printed with their max absolute difference.
Where the reference step would not fit (time or memory), it is estimated from components measured in
the same case: (1+K) x the measured image pass + the reference's text work (two 77-token passes with
backward, one without) measured on 50 of the C classes and scaled by C/50 (text work is linear in C);
the output says EXTRAPOLATED.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/step.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.benchlib import classnames, fmt_ms, machine, median_time, pick_threads, sync  # noqa: E402
from bench.reference import ReferenceModel, reference_step
from mergetune.core.config import BackboneSpec, Hyperparameters, PromptLearnerSpec
from mergetune.core.method.objectives import LossWeights
from mergetune.core.method.schedule import build_optimizer
from mergetune.core.method.train import train_prompts, use_amp
from mergetune.core.model.backbone import load_backbone
from mergetune.core.model.prompts import PromptLearner, encode_template, init_ctx


class _Source:
    """BatchSource of ``steps`` identical batches; ``encode`` runs the image encoder per step."""

    def __init__(self, backbone, pixels, feats, labels, steps: int, encode: bool) -> None:
        self.backbone, self.pixels, self.feats, self.labels = backbone, pixels, feats, labels
        self.steps_per_epoch = steps
        self.encode = encode
        self.t_start = 0.0

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sync(self.backbone.device)
        self.t_start = time.perf_counter()
        for _ in range(self.steps_per_epoch):
            if self.encode:
                yield self.backbone.encode_images(self.pixels), self.labels
            else:
                yield self.feats, self.labels


def run_ours(learner, source, hp, anchor, ft_feats, tau) -> tuple[list[float], float]:
    """Per-step seconds (timestamps of on_progress, which syncs via float(loss)) and the step-0 loss."""
    stamps: list[float] = []
    losses: list[float] = []

    def on_progress(epoch, step, loss, **_):
        stamps.append(time.perf_counter())
        losses.append(loss)

    train_prompts(
        learner,
        source,
        hp.model_copy(update={"epochs": 1}),
        LossWeights.mergetune(hp),
        tau=tau,
        anchor=anchor,
        ft_feats=ft_feats,
        on_progress=on_progress,
    )
    times = [b - a for a, b in zip([source.t_start, *stamps[:-1]], stamps, strict=True)]
    return times, losses[0]


def bench_case(backbone, n_cls, args, reps, hp, spec) -> dict:
    dev = backbone.device
    amp = use_amp(hp.precision, dev)
    names = classnames(n_cls)
    g = torch.Generator().manual_seed(n_cls)
    pixels = torch.randn(args.batch, 3, backbone.image_size, backbone.image_size, generator=g).to(dev)
    labels = (torch.arange(args.batch) % n_cls).to(dev)
    ctx_ft = init_ctx(backbone, spec) + 0.02 * torch.randn(spec.n_ctx, backbone.text_width, generator=g)
    ctx0 = ctx_ft + 0.01 * torch.randn(ctx_ft.shape, generator=g)
    anchor = encode_template(backbone, names, "a photo of a {}.")
    tau = backbone.logit_scale
    row: dict = {"model": backbone.name, "n_cls": n_cls, "batch": args.batch}

    # ours, cached bank (no image pass): features of this batch computed once
    feats = backbone.encode_images(pixels)
    learner = PromptLearner(backbone, names, ctx0, spec)
    row["trim_len"] = learner.trim_len
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
        ft_feats = learner.text_features(ctx_ft.to(dev)).float()  # G_ft, once per job
    w_bank, r_bank = reps["bank"]
    t, loss_bank = run_ours(learner, _Source(backbone, pixels, feats, labels, w_bank + r_bank, False), hp,
                            anchor, ft_feats, tau)  # fmt: skip
    row["bank_s"] = statistics.median(t[w_bank:])
    row["loss_bank"] = loss_bank

    # ours, exact mode: one image pass per step
    learner = PromptLearner(backbone, names, ctx0, spec)
    w_ex, r_ex = reps["exact"]
    t, loss_exact = run_ours(learner, _Source(backbone, pixels, None, labels, w_ex + r_ex, True), hp,
                             anchor, ft_feats, tau)  # fmt: skip
    row["exact_s"] = statistics.median(t[w_ex:])
    row["loss_exact"] = loss_exact
    row["image_pass_s"] = median_time(
        lambda: backbone.encode_images(pixels), dev, repeats=max(1, r_ex), warmup=min(1, w_ex)
    )

    # reference style
    w_ref, r_ref = reps["ref"]
    if r_ref > 0:
        learner = PromptLearner(backbone, names, ctx0, spec)
        ref = ReferenceModel(learner, ctx_ft, anchor, amp)
        opt = build_optimizer([learner.ctx], hp)
        scaler = torch.amp.GradScaler("cuda", enabled=amp)
        times, losses = [], []
        for _ in range(w_ref + r_ref):
            sync(dev)
            t0 = time.perf_counter()
            losses.append(reference_step(ref, opt, scaler, pixels, labels, hp))
            sync(dev)
            times.append(time.perf_counter() - t0)
        row["ref_s"] = statistics.median(times[w_ref:])
        row["loss_ref"] = losses[0]
        row["ref_measured"] = True
        trio = (losses[0], loss_exact, loss_bank)
        row["max_loss_diff"] = max(trio) - min(trio)
    else:
        row["ref_measured"] = False
        row["max_loss_diff"] = abs(loss_exact - loss_bank)
        # Component estimate, measured now: 6 image passes + the reference's text work (two 77-token
        # passes with backward, one without) timed on the first ``sub`` classes and scaled to C.
        sub = min(n_cls, 50)
        sub_learner = PromptLearner(backbone, names[:sub], ctx0, spec)
        ref = ReferenceModel(sub_learner, ctx_ft, anchor[:sub], amp)

        def text_work() -> None:
            a = ref.text_encoder().float()
            b = ref.text_encoder().float()
            with torch.no_grad():
                ref.text_encoder(ref.ctx_ft)
            (a.sum() + b.sum()).backward()

        text_s = median_time(text_work, dev, repeats=max(1, r_ex), warmup=0)
        k = Hyperparameters().num_samples
        row["ref_s"] = (1 + k) * row["image_pass_s"] + text_s * n_cls / sub
        row["ref_note"] = (
            f"EXTRAPOLATED: {1 + k} x the measured image pass + the reference's text work measured on "
            f"{sub} of the {n_cls} classes ({text_s * 1e3:,.0f} ms) x {n_cls}/{sub}"
        )
    row["reps"] = {k: list(v) for k, v in reps.items()}
    return row


def plan(model: str, n_cls: int, device: str, quick: bool, ref_max_cls: int) -> dict[str, tuple[int, int]]:
    """(warm-up, timed) steps per variant, sized for a ~10 minute CPU run."""
    big = model not in ("tiny-test", "tiny-clip")
    if device == "cuda":
        r = {"ref": (2, 10), "exact": (2, 10), "bank": (3, 30)}
        if n_cls >= 500:
            r = {"ref": (1, 3), "exact": (1, 5), "bank": (2, 10)}
    elif not big:
        r = {"ref": (2, 10), "exact": (2, 10), "bank": (3, 30)}
        if n_cls >= 500:
            r = {"ref": (1, 3), "exact": (1, 5), "bank": (1, 5)}
    elif n_cls <= 5:
        r = {"ref": (0, 2), "exact": (0, 2), "bank": (1, 5)}
    elif n_cls <= 50:
        r = {"ref": (0, 2), "exact": (0, 2), "bank": (1, 3)}
    else:
        r = {"ref": (0, 1), "exact": (0, 1), "bank": (0, 1)}
    if n_cls > ref_max_cls:
        r["ref"] = (0, 0)
    if quick:
        r = {k: (min(w, 1), max(1, t // 2) if t else 0) for k, (w, t) in r.items()}
    return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny-test,ViT-B-16")
    ap.add_argument("--n-cls", default="5,50,500")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--amp", action="store_true", help="fp16 autocast (CUDA only; fp32 on CPU)")
    ap.add_argument("--threads", default="auto", help="torch intra-op threads: 1, 2 or auto (probe)")
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument(
        "--ref-max-cls",
        type=int,
        default=None,
        help="largest class count at which the reference step is run (default: 50 for big models on "
        "CPU, where 500 classes x 77 tokens needs ~20 GB for autograd; unlimited otherwise)",
    )
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    dev = torch.device(args.device)
    hp = Hyperparameters(precision="amp" if args.amp else "fp32", batch_size=args.batch)
    spec = PromptLearnerSpec()
    models = [m for m in args.models.split(",") if m]
    sizes = [int(n) for n in args.n_cls.split(",") if n]

    probe_bb = load_backbone(BackboneSpec(model="tiny-test", pretrained="random"), dev)
    probe_pix = torch.randn(64, 3, 32, 32, device=dev)
    threads, why = pick_threads(args.threads, lambda: probe_bb.encode_images(probe_pix))
    print(f"machine: {machine(dev)}")
    print(f"torch threads: {why}; AMP: {use_amp(hp.precision, dev)}; batch {args.batch}")
    print("times are medians of the timed steps (warm-up steps excluded); see --quick / the plan in the code")

    rows: list[dict] = []
    for model in models:
        t0 = time.perf_counter()
        backbone = load_backbone(BackboneSpec(model=model, pretrained="random"), dev)
        print(f"\n== {model} (random weights; loaded in {time.perf_counter() - t0:.1f} s)")
        big = model not in ("tiny-test", "tiny-clip")
        ref_max = args.ref_max_cls or (50 if big and dev.type == "cpu" else 10**9)
        model_rows: list[dict] = []
        for n in sizes:
            reps = plan(model, n, dev.type, args.quick, ref_max)
            row = bench_case(backbone, n, args, reps, hp, spec)
            if row["ref_measured"]:
                row["ref_note"] = "measured"
            model_rows.append(row)
            ref = row["ref_s"]

            def ratio(x: float, ref: float | None = ref) -> str:
                return f"{ref / x:6.1f}x" if ref else "   n/a"

            print(
                f"C={n:4d} (trim {row['trim_len']}/77)  reference {fmt_ms(ref) if ref else 'n/a':>12} "
                f"| ours exact {fmt_ms(row['exact_s']):>11} ({ratio(row['exact_s'])}) "
                f"| ours bank {fmt_ms(row['bank_s']):>10} ({ratio(row['bank_s'])}) "
                f"| one image pass {fmt_ms(row['image_pass_s'])}"
            )
            losses = f"ref {row['loss_ref']:.6f} " if row["ref_measured"] else ""
            print(
                f"        step-0 loss {losses}exact {row['loss_exact']:.6f} bank {row['loss_bank']:.6f} "
                f"-> max |diff| {row['max_loss_diff']:.2e}; reference: {row['ref_note']}; "
                f"steps timed {row['reps']}"
            )
        rows.extend(model_rows)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(dev), "threads": threads, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
