"""Linear-head MergeTune on the built-in data: the robust fine-tuning story.

Backbone: the bundled tiny CLIP (``tiny-clip`` / ``builtin``). A linear head over all 96 classes is
fine-tuned (plain CE, SGD on cached features, from the zero-shot head) on ``--shots`` images per class
of the downstream domain (hue 0.6); MergeTune continues it (CE + lam |W - W_zs|^2 + path term).
In-distribution = the downstream test split; shift = the built-in "shift" domain (hue 1.2).
The WiSE-FT alpha is chosen on the downstream validation split, never on test.

    .venv/bin/python scripts/head_demo.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mergetune.core.config import BackboneSpec, DatasetKind, HeadHyperparameters, Method  # noqa: E402
from mergetune.core.data import base_to_novel, open_dataset  # noqa: E402
from mergetune.core.method.recovery import recover, train_head  # noqa: E402
from mergetune.core.model.backbone import load_backbone  # noqa: E402

ROWS = (
    ("zero_shot", "zero-shot head"),
    ("fine_tuned", "fine-tuned head"),
    ("merged", "merged head (MergeTune)"),
    ("merged_zs_ensemble", "merged + zero-shot ensemble"),
    ("wise_ft", "WiSE-FT (alpha on val)"),
    ("endpoint_ensemble", "endpoint ensemble (zs + ft)"),
)


SHIFTS = {
    "shift": {"domain": "shift"},
    "source": {"domain": "source"},
    "blur": {"domain": "downstream", "blur": 1.5},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shots", type=int, default=16)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ft-epochs", type=int, default=30)
    ap.add_argument("--ft-lr", type=float, default=2.0)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.5)
    ap.add_argument("--lam", type=float, nargs="+", default=[1e-4, 1e-3], help="one MergeTune run per value")
    ap.add_argument("--w-lmc", type=float, default=1.0)
    ap.add_argument("--model", default="tiny-clip")
    ap.add_argument("--pretrained", default="builtin")
    ap.add_argument(
        "--shifts",
        nargs="+",
        default=["shift"],
        choices=sorted(SHIFTS),
        help="shifted test domains: shift (hue 1.2, the registered one), source (hue 0), blur (hue 0.6, blur 1.5)",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    t0 = time.perf_counter()

    backbone = load_backbone(BackboneSpec(model=args.model, pretrained=args.pretrained))
    ds = open_dataset(DatasetKind.builtin, None, "", options={"domain": "downstream"})
    task = base_to_novel(ds, shots=args.shots, seed=args.seed)
    ft_hp = HeadHyperparameters(epochs=args.ft_epochs, lr=args.ft_lr, shots=args.shots, seed=args.seed)
    head_ft = train_head(backbone, task, ft_hp, init="zero_shot")
    extra = [
        (name, open_dataset(DatasetKind.builtin, None, "", options=SHIFTS[name])) for name in args.shifts
    ]
    runs = {}
    for lam in args.lam:
        hp = HeadHyperparameters(
            lam=lam, w_lmc=args.w_lmc, epochs=args.epochs, lr=args.lr, shots=args.shots, seed=args.seed
        )
        runs[lam] = recover(backbone, task, head_ft, hp, method=Method.linear_head, extra_datasets=extra)

    print(
        f"{args.model} ({args.pretrained}), {ds.num_classes} classes, {args.shots} shots/class (downstream hue 0.6)"
    )
    print(f"fine-tune: plain CE from the zero-shot head, {ft_hp.epochs} epochs lr {ft_hp.lr}")
    print(
        f"MergeTune: w_lmc {args.w_lmc} K {hp.num_samples} {hp.epochs} epochs lr {hp.lr}; lam in {args.lam}"
    )
    table: dict[str, dict[str, float]] = {}
    cols = ["test", *args.shifts]
    for i, (lam, out) in enumerate(runs.items()):
        head = out.result.head
        assert head is not None
        by_name = {s.name: s for s in head.splits}
        if i == 0:
            sizes = ", ".join(f"{c} {by_name[c].images}" for c in cols)
            print(f"in-dist = downstream test (hue 0.6); images: {sizes}")
            print(f"{'model':40s} " + " ".join(f"{c:>8s}" for c in ["in-dist", *args.shifts]))
        for key, label in ROWS:
            if i > 0 and key not in ("merged", "merged_zs_ensemble"):
                continue
            name = f"{label} lam={lam:g}" if key.startswith("merged") else label
            table[name] = {c: by_name[c].accuracy[key] for c in cols}
            extra_note = f"  (alpha {head.wise_ft.best_alpha} on val)" if key == "wise_ft" else ""
            print(f"{name:40s} " + " ".join(f"{table[name][c]:8.2f}" for c in cols) + extra_note)
    sw = next(iter(runs.values())).result.head.wise_ft
    print("WiSE-FT sweep (alpha: " + " / ".join(["in-dist", *args.shifts]) + "):")
    for j, a in enumerate(sw.alphas):
        print(f"  {a:.1f}: " + " / ".join(f"{sw.accuracy[c][j]:.1f}" for c in cols))
    print(f"elapsed {time.perf_counter() - t0:.1f} s")
    if args.json:
        args.json.write_text(
            json.dumps({"args": vars(args) | {"json": str(args.json)}, "table": table,
                        "results": {str(k): o.result.model_dump(mode="json") for k, o in runs.items()}},
                       indent=1)
        )  # fmt: skip


if __name__ == "__main__":
    main()
