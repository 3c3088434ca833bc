"""Per-epoch cost of each feature mode, side by side: exact, a bank of as many views as epochs, a bank of
2 views, none.

    .venv/bin/python bench/feature_modes.py                          # tiny-clip (built-in data) + ViT-B-16
    .venv/bin/python bench/feature_modes.py --models tiny-clip       # the tiny model only (~1 min)
    .venv/bin/python bench/feature_modes.py --accuracy --seeds 1,2,3 # + base/novel/HM of each mode (tiny)

What a job of E epochs (default 100, the reference's) pays per epoch, per mode:

- ``exact``: every epoch augments and encodes every image (one image pass per batch) + the text passes;
- ``bank V=E``: the bank (E views of every image, fp16) is built once up front, then each epoch is a
  lookup + the text passes: cost per epoch = build / E + epoch;
- ``bank V=2``: 2 views built up front (an approximation: each view comes back every 2 epochs);
- ``none``: one test-transform pass per image (no augmentation: an approximation).

Measured, not assumed: each mode's setup (``TrainFeatures``) and ``--epochs-measured`` epochs of
``mergetune.core.method.train.train_prompts`` (median epoch after the first; exact mode's first epoch reads and prepares
every image once, the excess is counted as its setup), in ``--rounds`` interleaved rounds (medians). The bank of E views is built with ``--bank-views-measured``
views and scaled to E linearly (the build is one augmentation + one image pass per view and image; the
output says EXTRAPOLATED). Models: ``tiny-clip`` (bundled weights) on the built-in data (48 base classes
x 16 shots = 768 images, its own small-image transform); ``ViT-B-16`` with random weights on synthetic
224-pixel images (``--vit-classes`` x ``--vit-shots``, the reference's random-resized crop) -- random
weights cost the same as trained ones. ``--accuracy``: a CoOp start (100 epochs, feature_mode none, as
the demo) on the built-in downstream domain, then ``recover`` with default hyperparameters in each mode
per seed: base / novel / HM and the mean over seeds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: python bench/feature_modes.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from bench.benchlib import machine, synthetic_task  # noqa: E402


def _modes(epochs: int, only: str = "") -> list[tuple[str, str, int]]:
    modes = _all_modes(epochs)
    wanted = [m.strip() for m in only.split(",") if m.strip()]
    return [m for m in modes if not wanted or m[0] in wanted or m[0].replace(str(epochs), "E") in wanted]


def _all_modes(epochs: int) -> list[tuple[str, str, int]]:
    return [
        ("exact", "exact", 0),
        (f"bank V={epochs}", "bank", epochs),
        ("bank V=2", "bank", 2),
        ("none", "none", 0),
    ]


def measure(model: str, args: argparse.Namespace) -> None:
    from mergetune.core.config import (
        BackboneSpec,
        DatasetKind,
        FeatureMode,
        Hyperparameters,
        PromptLearnerSpec,
    )
    from mergetune.core.data import base_to_novel, open_dataset
    from mergetune.core.method.objectives import LossWeights
    from mergetune.core.method.train import train_prompts
    from mergetune.core.model.backbone import load_backbone
    from mergetune.core.model.features import TrainFeatures
    from mergetune.core.model.prompts import PromptLearner, encode_template, init_ctx

    dev = torch.device("cpu")
    if model == "tiny-clip":
        backbone = load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"), dev)
        task = base_to_novel(
            open_dataset(DatasetKind.builtin, None, "", options={"domain": "downstream"}), 16, 1
        )
        what = "built-in data, downstream domain"
    else:
        backbone = load_backbone(BackboneSpec(model=model, pretrained="random"), dev)
        task = synthetic_task(args.vit_classes, args.vit_shots, backbone.image_size)  # type: ignore[assignment]
        what = "synthetic images, random weights"
    n = len(task.train)
    transform = getattr(task.dataset, "train_transform", None)
    print(
        f"\n== {model} ({what}): {len(task.base_classnames)} base classes, {n} train images, "
        f"{backbone.image_size} px, transform {transform.name if transform else 'coop_reference'}; "
        f"job of {args.epochs} epochs, {args.epochs_measured} epoch(s) measured per mode"
    )
    spec = PromptLearnerSpec()
    g = torch.Generator().manual_seed(0)
    ctx_ft = init_ctx(backbone, spec) + 0.02 * torch.randn(spec.n_ctx, backbone.text_width, generator=g)
    anchor = encode_template(backbone, task.base_classnames, task.template)

    def one(mode: str, views: int) -> tuple[float, float, str]:
        hp = Hyperparameters(
            epochs=args.epochs_measured, feature_mode=FeatureMode(mode), bank_views=max(views, 1)
        )
        built_views = min(views, args.bank_views_measured) if mode == "bank" else 0
        t0 = time.perf_counter()
        batches = TrainFeatures(
            backbone, task.dataset, task.train, mode=hp.feature_mode, batch_size=hp.batch_size, seed=1,
            views=built_views or 1,
        )  # fmt: skip
        setup = time.perf_counter() - t0
        note = "measured"
        if mode == "bank" and built_views < views:
            setup *= views / built_views
            batches.views = built_views  # epochs cycle through the views that were built
            note = f"build EXTRAPOLATED from {built_views} views"
        learner = PromptLearner(backbone, task.base_classnames, ctx_ft, spec)
        with torch.no_grad():
            ft = learner.text_features().float()
        stamps: list[float] = []
        t0 = time.perf_counter()
        train_prompts(
            learner, batches, hp, LossWeights.mergetune(hp), tau=backbone.logit_scale, anchor=anchor,
            ft_feats=ft, on_epoch_end=lambda _s, stamps=stamps: stamps.append(time.perf_counter()),
        )  # fmt: skip
        epoch_times = [b - a for a, b in zip([t0, *stamps[:-1]], stamps, strict=True)]
        epoch = statistics.median(epoch_times[1:] or epoch_times)
        if mode == "exact":  # the first epoch reads and prepares every image (cached after): a setup cost
            setup += max(0.0, epoch_times[0] - epoch)
        return setup, epoch, note

    modes = _modes(args.epochs, args.modes)
    runs: dict[str, list[tuple[float, float, str]]] = {label: [] for label, _, _ in modes}
    for r in range(args.rounds):  # interleaved rounds, alternating order: load drifts hit every mode
        for label, mode, views in modes if r % 2 == 0 else modes[::-1]:
            runs[label].append(one(mode, views))
    rows: list[tuple[str, float, float, float, str]] = []
    for label, _, _ in modes:
        setup = statistics.median(x[0] for x in runs[label])
        epoch = statistics.median(x[1] for x in runs[label])
        rows.append((label, setup, epoch, setup / args.epochs + epoch, runs[label][0][2]))
    exact = next((r[3] for r in rows if r[0] == "exact"), rows[0][3])
    print(
        f"{'mode':<12} {'setup s':>9} {'epoch s':>9} {'per epoch s':>12} {'vs exact':>9}  (per epoch = setup/{args.epochs} + epoch)"
    )
    for label, setup, epoch, per, note in rows:
        print(f"{label:<12} {setup:9.3f} {epoch:9.3f} {per:12.3f} {per / exact:8.2f}x  {note}")
    bank_mb = args.epochs * n * backbone.embed_dim * 2 / 2**20
    print(f"bank V={args.epochs} holds {args.epochs} x {n} x {backbone.embed_dim} fp16 = {bank_mb:.1f} MiB")


def accuracy(args: argparse.Namespace) -> None:
    from mergetune.core.config import BackboneSpec, DatasetKind, FeatureMode, Hyperparameters
    from mergetune.core.data import base_to_novel, open_dataset
    from mergetune.core.method.recovery import recover, train_coop
    from mergetune.core.model.backbone import load_backbone

    backbone = load_backbone(BackboneSpec(model="tiny-clip", pretrained="builtin"), "cpu")
    ds = open_dataset(DatasetKind.builtin, None, "", options={"domain": "downstream"})
    seeds = [int(s) for s in args.seeds.split(",") if s]
    print(
        f"\n== accuracy: tiny-clip, built-in downstream domain, default hyperparameters "
        f"({args.epochs} epochs), seeds {seeds}; CoOp start per seed: 100 epochs, feature_mode none"
    )
    table: dict[str, list[tuple[float, float, float]]] = {}
    for seed in seeds:
        task = base_to_novel(ds, shots=16, seed=seed)
        ctx_ft = train_coop(backbone, task, Hyperparameters(seed=seed, feature_mode=FeatureMode.none))
        for label, mode, views in _modes(args.epochs, args.modes):
            hp = Hyperparameters(
                seed=seed, epochs=args.epochs, feature_mode=FeatureMode(mode), bank_views=max(views, 1)
            )
            t0 = time.perf_counter()
            res = recover(backbone, task, ctx_ft, hp).result
            m = res.metrics
            if label == _modes(args.epochs, args.modes)[0][0]:  # the endpoints, once per seed
                for key, sm in (("zero-shot", m.zero_shot), ("fine-tuned", m.fine_tuned)):
                    table.setdefault(key, []).append((sm.base, sm.novel, sm.hm))
            table.setdefault(label, []).append((m.recovered.base, m.recovered.novel, m.recovered.hm))
            r = m.recovered
            print(
                f"seed {seed} {label:<12} base {r.base:5.1f} novel {r.novel:5.1f} HM {r.hm:5.1f} "
                f"(fine-tuned HM {m.fine_tuned.hm:5.1f}, zero-shot {m.zero_shot.hm:5.1f}) "
                f"{time.perf_counter() - t0:6.1f} s",
                flush=True,
            )
    print(f"\n{'':<12} {'base':>6} {'novel':>6} {'HM':>6}  (mean over seeds; HM of the mean base/novel)")
    for label, vals in table.items():
        b = statistics.mean(v[0] for v in vals)
        nv = statistics.mean(v[1] for v in vals)
        hm = 2 * b * nv / (b + nv) if b + nv else 0.0
        print(
            f"{label:<12} {b:6.1f} {nv:6.1f} {hm:6.1f}   per seed HM: "
            + " ".join(f"{v[2]:.1f}" for v in vals)
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="tiny-clip,ViT-B-16")
    ap.add_argument("--epochs", type=int, default=100, help="epochs of the job the cost is spread over")
    ap.add_argument(
        "--epochs-measured", type=int, default=4, help="epochs run per mode (median of all but the first)"
    )
    ap.add_argument("--bank-views-measured", type=int, default=4, help="views built for the V=epochs bank")
    ap.add_argument("--vit-classes", type=int, default=5)
    ap.add_argument("--vit-shots", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="interleaved measurement rounds (median)")
    ap.add_argument("--vit-epochs-measured", type=int, default=2)
    ap.add_argument("--vit-rounds", type=int, default=1)
    ap.add_argument(
        "--accuracy", action="store_true", help="also base/novel/HM per mode on the built-in data"
    )
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--modes", default="", help='subset, e.g. "exact,bank V=E" (E = --epochs); default all')
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"machine: {machine(torch.device('cpu'))}; torch threads {args.threads}")
    for model in [m for m in args.models.split(",") if m and m != "none"]:
        if model != "tiny-clip":
            args_m = argparse.Namespace(**{**vars(args), "epochs_measured": args.vit_epochs_measured,
                                           "bank_views_measured": 1, "rounds": args.vit_rounds})  # fmt: skip
            measure(model, args_m)
        else:
            measure(model, args)
    if args.accuracy:
        accuracy(args)


if __name__ == "__main__":
    main()
