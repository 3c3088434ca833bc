"""Fine-tune CoOp prompts on the built-in data and write them the way Dassl does (``model.pth.tar-N``):
the "fine-tuned checkpoint a user brings", made offline, for the README's walk-through.

    .venv/bin/python scripts/coop_checkpoint.py --out output/builtin/model.pth.tar-2 \\
        --model tiny-test --pretrained random --epochs 2 --num-classes 6

Defaults: the built-in tiny CLIP (``tiny-clip``/``builtin``), the downstream domain, 16 shots, seed 1,
no augmentation (``feature_mode: none``), one torch thread, CPU.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, metavar="FILE", help="where to write the Dassl file")
    p.add_argument("--model", default="tiny-clip", help="open_clip model name (default tiny-clip)")
    p.add_argument("--pretrained", default="builtin", help="weights tag (default builtin)")
    p.add_argument("--epochs", type=int, default=100, help="CoOp epochs (default 100)")
    p.add_argument("--shots", type=int, default=16, help="images per base class (default 16)")
    p.add_argument("--num-classes", type=int, default=None, help="built-in classes (default all 96)")
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    args = p.parse_args(argv)

    import torch

    from mergetune.core.config import BackboneSpec, DatasetKind, Hyperparameters, PromptLearnerSpec
    from mergetune.core.data import base_to_novel, open_dataset
    from mergetune.core.method.recovery import train_coop
    from mergetune.core.model.backbone import load_backbone
    from mergetune.core.model.prompts import PromptLearner

    torch.set_num_threads(1)
    options: dict[str, object] = {"domain": "downstream"}
    if args.num_classes:
        options.update(
            num_classes=args.num_classes, train_per_class=args.shots, val_per_class=2, test_per_class=4
        )
    started = time.monotonic()
    backbone = load_backbone(BackboneSpec(model=args.model, pretrained=args.pretrained))
    with tempfile.TemporaryDirectory() as root:  # the built-in data is procedural: nothing is read
        dataset = open_dataset(DatasetKind.builtin, Path(root), "", options=options)
        task = base_to_novel(dataset, shots=args.shots, seed=args.seed)
        hp = Hyperparameters(epochs=args.epochs, seed=args.seed, feature_mode="none")
        spec = PromptLearnerSpec()
        ctx = train_coop(backbone, task, hp, spec)
        prefix, suffix = PromptLearner(backbone, task.base_classnames, ctx, spec).dassl_buffers()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "state_dict": {"ctx": ctx.detach().cpu(), "token_prefix": prefix, "token_suffix": suffix},
            "epoch": args.epochs,
            "optimizer": None,
            "scheduler": None,
        },
        args.out,
    )
    sys.stderr.write(
        f"CoOp on {len(task.base_classnames)} base classes in {time.monotonic() - started:.1f} s\n"
    )
    sys.stdout.write(f"{args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
