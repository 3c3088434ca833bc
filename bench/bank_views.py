"""Bank size V vs accuracy and time: how many augmented views per image the feature bank needs.

    .venv/bin/python bench/bank_views.py                       # V = 1,2,4,8,16 and exact, 100 epochs
    .venv/bin/python bench/bank_views.py --exact-epochs 50     # exact mode shortened (printed)
    .venv/bin/python bench/bank_views.py --views 2,8 --seed 2 --exact-epochs 0 --with-none   # seed noise

Setup (the default V is chosen by this measurement): the bundled tiny CLIP
(``tiny-clip``/``builtin``), the built-in dataset with its default options (96 classes) ->
``base_to_novel(shots=16, seed=1)``; a CoOp start trained by ``mergetune.core.method.recovery.train_coop``
(``feature_mode=none``, ``--coop-epochs`` epochs, seed 1); then ``mergetune.core.method.recovery.recover`` (MergeTune,
default hyperparameters otherwise) once per bank size V and once in exact mode (fresh augmentation every
step, what the reference does). Prints per run: bank build time (``train_features``; in exact mode the
augmentation and image passes are inside training), training time, the whole ``recover`` wall time
(incl. evaluation and curves), its ratio to the exact run, and base / novel / HM of the recovered
prompts. All runs share one process, one backbone and one CoOp start; torch threads 1.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/bank_views.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.benchlib import machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--views", default="1,2,4,8,16", help="bank sizes V to measure")
    ap.add_argument("--epochs", type=int, default=100, help="MergeTune epochs of each bank run")
    ap.add_argument(
        "--exact-epochs", type=int, default=100, help="MergeTune epochs of the exact run (0: skip)"
    )
    ap.add_argument("--coop-epochs", type=int, default=50, help="epochs of the CoOp fine-tuning start")
    ap.add_argument(
        "--seed", type=int, default=1, help="MergeTune seed (bank views, epoch order, augmentation)"
    )
    ap.add_argument("--with-none", action="store_true", help="also run feature_mode none (no augmentation)")
    ap.add_argument("--noise", type=float, default=0.5, help="HM points treated as noise when choosing V")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from mergetune.core.config import BackboneSpec, DatasetKind, FeatureMode, Hyperparameters
    from mergetune.core.data import base_to_novel, open_dataset
    from mergetune.core.method.recovery import recover, train_coop
    from mergetune.core.model.backbone import load_backbone

    print(
        f"machine: {machine(torch.device('cpu'))}; torch threads {args.threads}; MergeTune seed {args.seed}"
    )
    backbone = load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"), "cpu")
    ds = open_dataset(DatasetKind.builtin, None, "")
    task = base_to_novel(ds, shots=16, seed=1)
    print(
        f"task: built-in dataset (default options), {len(task.base_classnames)} base / "
        f"{len(task.novel_classnames)} novel classes, {len(task.train)} train images, "
        f"{len(task.test_base)} + {len(task.test_novel)} test images"
    )
    t0 = time.perf_counter()
    ctx_ft = train_coop(
        backbone, task, Hyperparameters(epochs=args.coop_epochs, feature_mode=FeatureMode.none, seed=1)
    )
    print(
        f"CoOp start: {args.coop_epochs} epochs, feature_mode none, seed 1: {time.perf_counter() - t0:.1f} s"
    )

    runs: list[tuple[str, Hyperparameters]] = [
        (
            f"bank V={v}",
            Hyperparameters(
                epochs=args.epochs, feature_mode=FeatureMode.bank, bank_views=int(v), seed=args.seed
            ),
        )
        for v in args.views.split(",")
        if v
    ]
    if args.with_none:
        runs.append(
            ("none", Hyperparameters(epochs=args.epochs, feature_mode=FeatureMode.none, seed=args.seed))
        )
    if args.exact_epochs:
        runs.append(
            (
                "exact",
                Hyperparameters(epochs=args.exact_epochs, feature_mode=FeatureMode.exact, seed=args.seed),
            )
        )

    rows = []
    first = True
    for name, hp in runs:
        t = time.perf_counter()
        res = recover(backbone, task, ctx_ft, hp).result
        wall = time.perf_counter() - t
        m = res.metrics
        if first:
            print(
                f"start points: zero-shot {m.zero_shot.base:.2f} / {m.zero_shot.novel:.2f} / {m.zero_shot.hm:.2f}, "
                f"fine-tuned {m.fine_tuned.base:.2f} / {m.fine_tuned.novel:.2f} / {m.fine_tuned.hm:.2f} "
                "(base / novel / HM)"
            )
            first = False
        row = {
            "name": name,
            "epochs": hp.epochs,
            "views": hp.bank_views if hp.feature_mode == FeatureMode.bank else None,
            "exact": hp.feature_mode == FeatureMode.exact,
            "bank_s": res.timings.get("train_features", 0.0),
            "train_s": res.timings.get("training", 0.0),
            "wall_s": wall,
            "base": m.recovered.base,
            "novel": m.recovered.novel,
            "hm": m.recovered.hm,
        }
        rows.append(row)
        print(
            f"{name:>10} ({hp.epochs} ep): bank {row['bank_s']:6.2f} s  training {row['train_s']:6.1f} s  "
            f"recover {wall:6.1f} s  base {row['base']:.2f}  novel {row['novel']:.2f}  HM {row['hm']:.2f}",
            flush=True,
        )

    exact = next((r for r in rows if r["exact"]), None)
    if exact is not None and exact["epochs"] != args.epochs:
        print(
            f"NOTE: exact ran {exact['epochs']} epochs, the bank runs {args.epochs}; the exact time ratio "
            f"below scales exact's training time to {args.epochs} epochs (EXTRAPOLATED), its HM is as measured"
        )
    print("\n| mode | bank build (s) | training (s) | recover wall (s) | time vs exact | base | novel | HM |")
    print("|---|---|---|---|---|---|---|---|")
    exact_wall = None
    if exact is not None:
        scale = args.epochs / exact["epochs"]
        exact_wall = exact["wall_s"] + exact["train_s"] * (scale - 1.0)
    for r in rows:
        ratio = f"{r['wall_s'] / exact_wall:.3f}" if exact_wall else "-"
        if r is exact and exact["epochs"] != args.epochs:
            ratio = f"1 ({exact_wall:.1f} s EXTRAPOLATED to {args.epochs} ep)"
        label = r["name"] + ("" if r["epochs"] == args.epochs else f" ({r['epochs']} ep)")
        print(
            f"| {label} | {r['bank_s']:.2f} | {r['train_s']:.1f} | {r['wall_s']:.1f} | {ratio} | "
            f"{r['base']:.2f} | {r['novel']:.2f} | {r['hm']:.2f} |"
        )
    banks = [r for r in rows if r["views"] is not None]
    if banks:
        best = max(r["hm"] for r in rows if r["views"] is not None or r["exact"])  # augmented runs only
        chosen = min(
            (r for r in banks if r["hm"] >= best - args.noise), key=lambda r: r["views"], default=None
        )
        if chosen is None:
            print(f"no bank size is within {args.noise} HM points of the best ({best:.2f})")
        else:
            print(
                f"smallest V within {args.noise} HM points of the best ({best:.2f}, all runs incl. exact): "
                f"V={chosen['views']} (HM {chosen['hm']:.2f}, recover {chosen['wall_s']:.1f} s)"
            )
    print(f"machine after: {machine(torch.device('cpu'))}")


if __name__ == "__main__":
    main()
