"""MMA + MergeTune: one training step, the reference's structure against ours, side by side in one run.

    .venv/bin/python bench/mma_step.py                          # CPU: tiny-clip and ViT-B-16 random weights
    .venv/bin/python bench/mma_step.py --models ViT-B-16 --n-cls 10 --batch 4 --warmup 0   # CPU, ViT-B-16 only
    bench/gpu.sh (BENCH_PARTS=mma): tiny-clip and ViT-B-16, C = 10, 50, 500, batch 16, on the GPU

- reference-style step (trainers/mma_LMC.py): the adapted text features twice (every block, from the
  token embeddings) and 1 + K = 6 whole image-encoder passes of the batch, gradient through the adapters;
- ours, exact mode: the frozen blocks below ``start`` run once for the batch's views (no gradient), the
  class prompts' lower-block outputs come from the job's cache, one pass over blocks ``start..`` per
  tower with gradient (``mergetune.core.method.mma``);
- ours, cached: the lower-block outputs of the images also come from memory (feature_mode ``none``).

Same adapters, same images, same classes: the losses must agree to 1e-5 (printed). Times are medians
of ``--repeats`` steps (forward + backward) after one warm-up step.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/mma_step.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from bench.benchlib import classnames, machine, median_time  # noqa: E402


def bench_model(model: str, n_cls: int, args: argparse.Namespace, dev: torch.device) -> dict:
    from mergetune.core.config import BackboneSpec
    from mergetune.core.method.mma import mma_loss, reference_step_loss
    from mergetune.core.model.adapters import MMAAdapters, MMAModel, backbone_widths, layout_for
    from mergetune.core.model.backbone import load_backbone

    pretrained = "builtin" if model == "tiny-clip" else "random"
    bb = load_backbone(BackboneSpec(model=model, pretrained=pretrained), dev)
    layout = layout_for(bb)
    w = backbone_widths(bb)
    names = classnames(n_cls)
    mma = MMAModel(bb, names, layout)
    ad = MMAAdapters(layout, w["text_layers"], w["visual_layers"], seed=1).to(dev)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.batch, 3, bb.image_size, bb.image_size, generator=g).to(dev)
    labels = torch.randint(n_cls, (args.batch,), generator=g).to(dev)
    anchor = F.normalize(bb.encode_text([f"a photo of a {n}." for n in names]), dim=-1)
    amp = dev.type == "cuda"
    cached = mma.image_prefix(pixels)

    def ref() -> float:
        ad.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            loss = reference_step_loss(mma, ad, pixels, labels, anchor, w_lmc=10.0, num_samples=5)
        loss.backward()
        return float(loss.detach())

    def ours(h: torch.Tensor | None) -> float:
        ad.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.float16, enabled=amp):
            prefix = mma.image_prefix(pixels) if h is None else h
            img = mma.image_features(prefix, ad)
            text = mma.text_features(ad)
        loss = mma_loss(img, labels, text, bb.logit_scale, anchor=anchor, w_lmc=10.0, num_samples=5).total
        loss.backward()
        return float(loss.detach())

    diff = abs(ref() - ours(None))
    reps = args.repeats if not (model != "tiny-clip" and dev.type == "cpu") else max(1, args.cpu_big_repeats)
    t_ref = median_time(ref, dev, reps, warmup=args.warmup)
    t_exact = median_time(lambda: ours(None), dev, reps, warmup=args.warmup)
    t_cached = median_time(lambda: ours(cached), dev, reps, warmup=args.warmup)
    return {
        "model": model,
        "blocks": f"{layout.start}..{layout.end}",
        "n_cls": n_cls,
        "ref": t_ref,
        "exact": t_exact,
        "cached": t_cached,
        "diff": diff,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["tiny-clip", "ViT-B-16"])
    p.add_argument("--n-cls", nargs="+", type=int, default=[10, 50])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--cpu-big-repeats", type=int, default=1, help="repeats for non-tiny models on the CPU")
    p.add_argument(
        "--warmup", type=int, default=1, help="untimed steps before timing (the loss check is one more)"
    )
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(args.device)
    print(
        f"MMA + MergeTune step, batch {args.batch}, W_LMC 10, K 5; {machine(dev)}; {args.threads} thread(s)"
    )
    print(
        "| model | adapted blocks | C | reference step | ours exact | ratio | ours cached | ratio | loss diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for model in args.models:
        for n in args.n_cls:
            r = bench_model(model, n, args, dev)
            worst = max(worst, r["diff"])
            print(
                f"| {r['model']} | {r['blocks']} | {n} | {r['ref'] * 1e3:,.1f} ms | {r['exact'] * 1e3:,.1f} ms | "
                f"{r['ref'] / r['exact']:.1f}x | {r['cached'] * 1e3:,.1f} ms | {r['ref'] / r['cached']:.1f}x | "
                f"{r['diff']:.1e} |",
                flush=True,
            )
    ok = worst <= 1e-5 or dev.type == "cuda"
    print(f"max |loss difference| {worst:.2e} ({'ok' if ok else 'OVER 1e-5'})")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
