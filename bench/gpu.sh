#!/usr/bin/env bash
# GPU benchmark in one call (< 8 minutes on one H100/H200), from the repo root of a fresh copy:
#     bench/gpu.sh                 # ViT-B-16 random weights, AMP, synthetic images
#     bench/gpu.sh --cpu-smoke     # tiny model on the CPU: checks that every part runs
#     BENCH_PARTS=mma bench/gpu.sh # only the MMA step comparison (bench/mma_step.py, ~1 minute)
#     BENCH_PARTS=sweep bench/gpu.sh # only the small sweep through the service (bench/sweep.py)
# Runs bench/gpu.py (prompt jobs), bench/sweep.py (a small sweep), then bench/mma_step.py (MMA steps).
# Uses the first Python that already imports torch (.venv, then python3); only when none does, it
# creates .bench-venv and pip-installs torch + the few libraries the core needs.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=""
for cand in "${MERGETUNE_BENCH_PYTHON:-}" .venv/bin/python python3 python; do
  [ -n "$cand" ] || continue
  if command -v "$cand" >/dev/null 2>&1 && "$cand" -c "import torch" >/dev/null 2>&1; then
    PY="$cand"
    break
  fi
done
if [ -z "$PY" ]; then
  echo "no Python with torch found: creating .bench-venv (pip install torch torchvision)" >&2
  python3 -m venv .bench-venv
  .bench-venv/bin/pip install --quiet torch torchvision
  PY=.bench-venv/bin/python
fi
# The core's other imports; torch is already there, so pip keeps it.
if ! "$PY" -c "import open_clip, pydantic, PIL, safetensors, numpy" >/dev/null 2>&1; then
  "$PY" -m pip install --quiet "open_clip_torch==3.3.0" "pydantic>=2.6,<3" safetensors numpy pillow
fi
echo "python: $PY ($("$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'))"
if command -v nvidia-smi >/dev/null 2>&1; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
PARTS="${BENCH_PARTS:-all}"
if [ "$PARTS" = "all" ]; then
  "$PY" bench/gpu.py "$@"
fi
# A small sweep through the whole service (uvicorn + Celery workers; SQLite + a filesystem queue unless
# Postgres and redis-server are there): 3 builtin datasets x 2 seeds, 1 vs 2 workers (~2-3 minutes).
if [ "$PARTS" = "all" ] || [ "$PARTS" = "sweep" ]; then
  if "$PY" -c "import fastapi, sqlalchemy, celery, uvicorn, httpx" >/dev/null 2>&1; then
    if [ "${1:-}" = "--cpu-smoke" ]; then
      "$PY" bench/sweep.py --workers 1 2 --datasets 2 --seeds 1 --epochs 1 --device cpu || echo "sweep part failed" >&2
    else
      "$PY" bench/sweep.py --workers 1 2 --model tiny-clip --pretrained builtin --epochs 10 --device cuda \
        || echo "sweep part failed" >&2
    fi
  else
    echo "sweep part skipped: the service's packages (fastapi, sqlalchemy, celery, uvicorn) are not installed" >&2
  fi
fi
[ "$PARTS" = "sweep" ] && exit 0
if [ "${1:-}" = "--cpu-smoke" ]; then
  exec "$PY" bench/mma_step.py --models tiny-clip --n-cls 10 --repeats 1
fi
exec "$PY" bench/mma_step.py --models tiny-clip ViT-B-16 --n-cls 10 50 500 --repeats 10
