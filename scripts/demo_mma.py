"""MMA forgetting and recovery on the built-in tiny CLIP (core only, CPU, deterministic).

    .venv/bin/python scripts/demo_mma.py

1. MMA stage 1 (``core.mma.train_mma_stage1``, CE only, MMA's init) on the built-in base classes
   (48 classes x 16 shots); the adapters are written as MMA's Dassl file
   ``demo-output/mma/adapter_learner/model.pth.tar-<epochs>``;
2. that file is read back through the service's safe ingestion (``core.ingest``: no torch.load),
   detected as method ``mma``;
3. MergeTune for MMA (``core.mma.recover_mma``, the reference's settings: W_LMC 10, K 5, 5 epochs,
   batch 16, SGD lr 0.0015, cosine, no warm-up) and the evaluation on base and novel test classes.

tiny-clip has 4 blocks per tower: the adapters sit on blocks 2..4 (``core.mma_layout.default_span``: the
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
    p.add_argument("--stage1-epochs", type=int, default=20)
    p.add_argument("--stage1-lr", type=float, default=0.0015)
    p.add_argument("--domain", default="downstream")
    p.add_argument("--feature-mode", default="none", choices=["none", "exact"])
    p.add_argument(
        "--normalise-endpoints", action="store_true", help="not the reference: see ALGORITHM.md 6c"
    )
    p.add_argument("--w-lmc", type=float, default=10.0, help="W_LMC of the recovery (reference: 10)")
    p.add_argument(
        "--lr", type=float, default=0.0015, help="learning rate of the recovery (reference: 0.0015)"
    )
    p.add_argument("--curve-step", type=float, default=0.1, help="alpha step of the report's curves")
    p.add_argument("--out", type=Path, default=ROOT / "demo-output" / "mma")
    p.add_argument("--data", type=Path, default=ROOT / ".mergetune-demo" / "data")
    args = p.parse_args(argv)

    import torch

    from core.backbone import load_backbone
    from core.config import BackboneSpec, DatasetKind, MMAHyperparameters
    from core.datasets import base_to_novel, open_dataset
    from core.export import write_mma_dassl
    from core.ingest import ingest_checkpoint
    from core.mma import mma_buffers, recover_mma, train_mma_stage1
    from core.mma_layout import AdapterLayout

    torch.set_num_threads(1)
    t0 = time.monotonic()
    backbone = load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"))
    dataset = open_dataset(DatasetKind.builtin, args.data, "", options={"domain": args.domain})
    task = base_to_novel(dataset, shots=16, seed=1)
    hp1 = MMAHyperparameters(epochs=args.stage1_epochs, lr=args.stage1_lr, feature_mode=args.feature_mode)
    print(
        f"==> MMA stage 1: {args.stage1_epochs} epochs, lr {args.stage1_lr}, {len(task.base_classnames)} base classes"
    )
    ft, layout, hist = train_mma_stage1(backbone, task, hp1)
    print(
        f"    adapters on blocks {layout.start}..{layout.end}; losses {[round(h['loss'], 3) for h in hist]}"
    )
    path = write_mma_dassl(
        args.out, ft, epoch=args.stage1_epochs, buffers=mma_buffers(backbone, task.base_classnames)
    )
    ing = ingest_checkpoint(path)
    assert ing.method.value == "mma" and ing.adapters is not None and ing.mma_layout is not None
    print(
        f"==> {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: read back as method {ing.method.value}"
    )
    hp = MMAHyperparameters(
        feature_mode=args.feature_mode,
        normalise_endpoints=args.normalise_endpoints,
        curve_step=args.curve_step,
        w_lmc=args.w_lmc,
        lr=args.lr,
    )
    print(f"==> MergeTune for MMA (W_LMC {hp.w_lmc:g}, K 5, 5 epochs, batch 16, lr {hp.lr:g}, cosine)")
    out = recover_mma(backbone, task, ing.adapters, AdapterLayout.from_json(ing.mma_layout), hp)
    m, b = out.result.metrics, out.result.baselines
    rows: list[tuple[str, Any]] = [
        ("zero-shot CLIP", m.zero_shot),
        ("fine-tuned (MMA)", m.fine_tuned),
        ("recovered (MergeTune)", m.recovered),
        (f"feature interp. a={b.feature_interpolation.alpha:.1f}", b.feature_interpolation),
        ("zs + ft ensemble", b.ensemble),
    ]
    print(f"\n    {'':28s} {'base':>6s} {'novel':>6s} {'HM':>6s}")
    for name, r in rows:
        print(f"    {name:28s} {r.base:6.1f} {r.novel:6.1f} {r.hm:6.1f}")
    print(f"    (top-1 %, built-in test split, {args.domain} domain; {time.monotonic() - t0:.0f} s)")
    print(f"    verdict: {out.result.verdict.text if out.result.verdict else ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
