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

Deterministic: one thread (intra- and inter-op), torch's deterministic algorithms, every random draw
seeded from ``--seed`` (few-shot sample, adapter init, batch order, augmentations), and nothing read from
the clock goes into the table. Two runs on one machine and torch build print the same table; the run
time is printed after it, on its own line. docs/USAGE.md shows the table of the default run and of a
short run (``<!-- demo_mma.py ARGS -->`` above each), and tests/core/method/test_demo_mma_docs.py checks
that the documented tables are what the script prints.

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
    p.add_argument("--epochs", type=int, default=5, help="epochs of each MergeTune run (a job's default: 5)")
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
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process (main() called twice)
        pass
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(args.seed)
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
            feature_mode=args.feature_mode, seed=args.seed, curve_step=args.curve_step, epochs=args.epochs
        ),
        "MMA step": MMAHyperparameters(
            feature_mode=args.feature_mode,
            epochs=args.epochs,
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
            f"==> MergeTune for MMA, {name}: W_LMC {hp.w_lmc:g}, K {hp.num_samples}, "
            f"{hp.epochs} epoch{'s' if hp.epochs != 1 else ''}, "
            f"lr {hp.lr:g}, gradient scale {'on' if hp.gradient_scale else 'off'}, "
            f"endpoints {'normalised' if hp.normalise_endpoints else 'as the reference'}"
        )
        outs[name] = recover_mma(backbone, task, ing.adapters, AdapterLayout.from_json(ing.mma_layout), hp)
    first = next(iter(outs.values())).result
    m, b = first.metrics, first.baselines
    labels = {
        "reference": "MergeTune, reference settings (job defaults)",
        "MMA step": "MergeTune, MMA's step (`gradient_scale` true, `w_lmc` 1, `normalise_endpoints` true)",
    }
    rows: list[tuple[str, Any]] = [
        ("zero-shot CLIP", m.zero_shot),
        ("MMA stage 1 (uploaded)", m.fine_tuned),
        *[(labels[name], o.result.metrics.recovered) for name, o in outs.items()],
        (
            f"feature interpolation (alpha {b.feature_interpolation.alpha:.1f}, chosen on validation)",
            b.feature_interpolation,
        ),
        ("zero-shot + fine-tuned ensemble", b.ensemble),
    ]
    print(f"\nTop-1 % on the built-in test split, {args.domain} domain, seed {args.seed}:\n")
    print("| | base | novel | HM |\n|---|---|---|---|")
    for name, r in rows:
        print(f"| {name} | {r.base:.1f} | {r.novel:.1f} | {r.hm:.1f} |")
    print()
    for name, o in outs.items():
        moved = o.result.config.get("adapter_change")
        if moved is not None:
            print(f"adapters moved, {name}: {moved:.2%} (relative L2)")
    for name, o in outs.items():
        if o.result.verdict is not None:  # the text names every warning
            print(f"verdict, {name}: {o.result.verdict.text}")
    print(f"run time: {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
