# syntax=docker/dockerfile:1
# The GPU worker image: torch (CUDA 13.0 wheels, which bundle the CUDA runtime, cuBLAS and cuDNN as pip
# packages; the host supplies only the NVIDIA driver through the NVIDIA Container Toolkit), open_clip and
# the worker. Build from the repository root:  docker build -f docker/worker.Dockerfile -t mergetune-worker .
# Override TORCH_INDEX for another CUDA (e.g. https://download.pytorch.org/whl/cu128) or the CPU.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MERGETUNE_HOME=/var/lib/mergetune \
    MERGETUNE_DEVICE=auto

WORKDIR /app

# torch first, pinned (requirements/ml.txt), from the CUDA wheel index: nothing later may replace it.
COPY requirements/ml.txt requirements/ml.txt
RUN pip install --index-url "${TORCH_INDEX}" -r requirements/ml.txt

COPY pyproject.toml ./
RUN mkdir -p core common api worker cli migrations \
    && for p in core common api worker cli migrations; do touch "$p/__init__.py"; done \
    && pip install ".[ml,s3]" \
    && pip uninstall -y mergetune-service \
    && pip check

COPY alembic.ini ./
COPY common ./common
COPY core ./core
COPY worker ./worker
COPY cli ./cli
COPY api ./api
COPY migrations ./migrations
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --home-dir /var/lib/mergetune mergetune \
    && mkdir -p /var/lib/mergetune/models /data \
    && chown -R mergetune /var/lib/mergetune

USER mergetune
# One worker process per GPU: the container is given one GPU (compose device reservation) and torch sees
# it as cuda:0. Node names must be unique per worker: set MERGETUNE_WORKER_NAME per service.
ENV MERGETUNE_WORKER_NAME=gpu0
CMD ["sh", "-c", "exec python -m worker -n \"${MERGETUNE_WORKER_NAME}@%h\""]
