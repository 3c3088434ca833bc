"""Differential sweep: our checkpoint reader against ``torch.load(weights_only=True)`` on N generated files.

Generates ``--n`` files (default 10,000; seeded) with tests/differential_corpus.py: ``torch.save`` of
random objects (zip and legacy layouts), zip members renamed or doubled in another case, tensors with
Python state, every global torch's weights_only reader allows, and a quarter of them damaged
afterwards. Each file is read by both readers and counted as one of: same / refused by both / only we
refuse / only torch refuses / read differently. "read differently" (both read, different keys,
types, dtypes, shapes or values) must be 0: the script exits 1 otherwise and prints the files.

    .venv/bin/python bench/differential.py                 # 10,000 files, seed 23
    .venv/bin/python bench/differential.py --n 2000 --seed 5 --keep /tmp/diff   # keep the files
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="files to generate (default 10,000)")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument(
        "--keep", type=Path, help="write the files here and keep them (default: a temporary folder)"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(REPO / "tests"))
    import torch

    torch.set_num_threads(1)
    import differential_corpus as dc

    folder = args.keep or Path(tempfile.mkdtemp(prefix="differential-"))
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    totals: Counter[str] = Counter()
    by_family: Counter[tuple[str, str]] = Counter()
    our_codes: Counter[str] = Counter()
    different: list[str] = []
    t_gen = t_cmp = 0.0
    start = time.perf_counter()
    try:
        for n in range(args.n):
            t0 = time.perf_counter()
            family, path = dc.generate(rng, folder, n)
            t1 = time.perf_counter()
            outcome, detail = dc.compare(path)
            t2 = time.perf_counter()
            t_gen, t_cmp = t_gen + t1 - t0, t_cmp + t2 - t1
            totals[outcome] += 1
            by_family[(family, outcome)] += 1
            if outcome == dc.ONLY_WE_REFUSE:
                our_codes[detail] += 1
            if outcome == dc.DIFFERENT:
                different.append(f"{path.name}: {detail}")
            if args.keep is None:
                path.unlink()
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)
    wall = time.perf_counter() - start
    print(f"differential sweep: {args.n} files, seed {args.seed}, torch {torch.__version__}")
    for outcome in dc.OUTCOMES:
        print(f"  {outcome:<20} {totals[outcome]:>7}")
    print(f"  only we refuse, by our code: {dict(our_codes.most_common())}")
    families = sorted({f for f, _ in by_family})
    print(f"\n  {'family':<18}" + "".join(f"{o:>20}" for o in dc.OUTCOMES))
    for family in families:
        print(f"  {family:<18}" + "".join(f"{by_family[(family, o)]:>20}" for o in dc.OUTCOMES))
    print(
        f"\ntime: {wall:.1f} s in all ({t_gen:.1f} s generating, {t_cmp:.1f} s reading with both readers; "
        f"{1000 * t_cmp / max(args.n, 1):.2f} ms per file)"
    )
    for line in different[:50]:
        print("READ DIFFERENTLY", line)
    return 1 if different else 0


if __name__ == "__main__":
    raise SystemExit(main())
