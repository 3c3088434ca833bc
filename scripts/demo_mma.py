"""MMA forgetting and recovery on the built-in tiny CLIP (core only, CPU, deterministic).

    .venv/bin/python scripts/demo_mma.py

1. MMA stage 1 (``mergetune.core.method.mma.train_mma_stage1``: CE only, MMA's init and MMA's update, gradient-scale
   layers included) on the built-in base classes (48 classes x 16 shots), on the domain the tiny CLIP
   was pretrained on. It trains long and hot (40 epochs at lr 0.005) and overfits the base classes: it
   forgets, and novel accuracy falls well below zero-shot. The adapters are written as MMA's Dassl
   file ``demo-output/mma/adapter_learner/model.pth.tar-<epochs>``;
2. that file is read back through the service's safe ingestion (``mergetune.core.checkpoints.ingest``: no torch.load),
   detected as method ``mma``;
3. MergeTune for MMA (``mergetune.core.method.mma.recover_mma``), twice from the same file:
   - **reference**: the defaults of an ``mma`` job, the reference's MMA_LMC as it runs (W_LMC 10, K 5,
     5 epochs, batch 16, SGD lr 0.0015, cosine, no warm-up, no gradient-scale layers). Its steps are
     1000x smaller than MMA's own, so it barely moves MMA's adapters;
   - **MMA step**: ``gradient_scale`` true (MMA's update), W_LMC 1, normalised path endpoints (both
     departures from the reference, ALGORITHM.md 6c);
   each evaluated on the base and novel test classes, with the verdict a job would show.

tiny-clip has 4 blocks per tower: the adapters sit on blocks 2..4 (``mergetune.core.checkpoints.mma_layout.default_span``: the
upper two thirds of the tower, as 5..12 is of a 12-block ViT-B/16); block 1 is frozen and cached.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage1-epochs", type=int, default=40, help="epochs of MMA stage 1")
    p.add_argument("--stage1-lr", type=float, default=0.005, help="learning rate of MMA stage 1")
    p.add_argument("--domain", default="source", help="built-in domain: source (default) or downstream")
    p.add_argument("--feature-mode", default="none", choices=["none", "exact"])
    p.add_argument("--seed", type=int, default=1, help="few-shot sample and training seed")
    p.add_argument("--curve-step", type=float, default=0.1, help="alpha step of the report's curves")
    p.add_argument("--out", type=Path, default=ROOT / "demo-output" / "mma")
    p.add_argument("--data", type=Path, default=ROOT / ".mergetune-demo" / "data")
    args = p.parse_args(argv)

    import torch

    from mergetune.core.checkpoints.export import write_mma_dassl
    from mergetune.core.checkpoints.ingest import ingest_checkpoint
    from mergetune.core.checkpoints.mma_layout import AdapterLayout
    from mergetune.core.config import BackboneSpec, DatasetKind, MMAHyperparameters
    from mergetune.core.data import base_to_novel, open_dataset
    from mergetune.core.method.mma import recover_mma, train_mma_stage1
    from mergetune.core.model.adapters import mma_buffers
    from mergetune.core.model.backbone import load_backbone

    torch.set_num_threads(1)
    t0 = time.monotonic()
    backbone = load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"))
    dataset = open_dataset(DatasetKind.builtin, args.data, "", options={"domain": args.domain})
    task = base_to_novel(dataset, shots=16, seed=args.seed)
    hp1 = MMAHyperparameters(
        epochs=args.stage1_epochs, lr=args.stage1_lr, feature_mode=args.feature_mode, seed=args.seed
    )
    print(
        f"==> MMA stage 1: {args.stage1_epochs} epochs, lr {args.stage1_lr:g}, "
        f"{len(task.base_classnames)} base classes, {args.domain} domain"
    )
    ft, layout, hist = train_mma_stage1(backbone, task, hp1)
    print(f"    adapters on blocks {layout.start}..{layout.end}; last loss {hist[-1]['loss']:.3f}")
    path = write_mma_dassl(
        args.out, ft, epoch=args.stage1_epochs, buffers=mma_buffers(backbone, task.base_classnames)
    )
    ing = ingest_checkpoint(path)
    assert ing.method.value == "mma" and ing.adapters is not None and ing.mma_layout is not None
    shown = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    print(f"==> {shown}: read back as method {ing.method.value}")
    runs = {
        "reference": MMAHyperparameters(
            feature_mode=args.feature_mode, seed=args.seed, curve_step=args.curve_step
        ),
        "MMA step": MMAHyperparameters(
            feature_mode=args.feature_mode,
            seed=args.seed,
            curve_step=args.curve_step,
            gradient_scale=True,
            w_lmc=1.0,
            normalise_endpoints=True,
        ),
    }
    outs = {}
    for name, hp in runs.items():
        print(
            f"==> MergeTune for MMA, {name}: W_LMC {hp.w_lmc:g}, K {hp.num_samples}, {hp.epochs} epochs, "
            f"lr {hp.lr:g}, gradient scale {'on' if hp.gradient_scale else 'off'}, "
            f"endpoints {'normalised' if hp.normalise_endpoints else 'as the reference'}"
        )
        outs[name] = recover_mma(backbone, task, ing.adapters, AdapterLayout.from_json(ing.mma_layout), hp)
    first = next(iter(outs.values())).result
    m, b = first.metrics, first.baselines
    rows: list[tuple[str, Any]] = [
        ("zero-shot CLIP", m.zero_shot),
        ("MMA stage 1 (uploaded)", m.fine_tuned),
        *[(f"MergeTune, {name}", o.result.metrics.recovered) for name, o in outs.items()],
        (f"feature interp. a={b.feature_interpolation.alpha:.1f}", b.feature_interpolation),
        ("zs + ft ensemble", b.ensemble),
    ]
    print(f"\n    {'':30s} {'base':>6s} {'novel':>6s} {'HM':>6s}")
    for name, r in rows:
        print(f"    {name:30s} {r.base:6.1f} {r.novel:6.1f} {r.hm:6.1f}")
    print(f"    (top-1 %, built-in test split, {args.domain} domain; {time.monotonic() - t0:.0f} s)")
    for name, o in outs.items():
        if o.result.verdict is not None:  # the text names every warning
            print(f"    verdict, {name}: {o.result.verdict.text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
