# syntax=docker/dockerfile:1
# The worker image: torch, open_clip and the worker. Build from the repository root:
#   docker build -f docker/worker.Dockerfile -t mergetune-worker .
# The torch source is a build argument:
# - GPU (default): TORCH_INDEX=https://download.pytorch.org/whl/cu130, CUDA 13.0 wheels that bundle the
#   CUDA runtime, cuBLAS and cuDNN as pip packages (the host supplies only the NVIDIA driver through the
#   NVIDIA Container Toolkit); another CUDA: e.g. https://download.pytorch.org/whl/cu128.
# - CPU: TORCH_INDEX=https://download.pytorch.org/whl/cpu (no CUDA libraries), run with MERGETUNE_DEVICE=cpu.
# - No index reachable: TORCH_WHEELS=1 installs the pinned wheels (and their dependencies) from
#   docker/wheels/ without any index; docker/local-wheels.sh fills it from this machine's pip sources.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ARG TORCH_INDEX=https://download.pytorch.org/whl/cu130
ARG TORCH_WHEELS=

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MERGETUNE_HOME=/var/lib/mergetune \
    MERGETUNE_DEVICE=auto

WORKDIR /app

# torch first, pinned (requirements/ml.txt), from TORCH_INDEX or docker/wheels/: nothing later may replace
# it. The wheel folder is bind-mounted for this step only (no copy of several GB in a layer).
COPY requirements/ml.txt requirements/ml.txt
RUN --mount=type=bind,source=docker/wheels,target=/wheels \
    if [ -n "${TORCH_WHEELS}" ]; then \
        pip install --no-index --find-links /wheels -r requirements/ml.txt; \
    else \
        pip install --index-url "${TORCH_INDEX}" -r requirements/ml.txt; \
    fi \
    && python -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"

# The dependencies first, read from pyproject.toml (a layer that changes only with it), then the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\\n'.join(p['dependencies'] + [d for g in ('ml', 's3',) for d in p['optional-dependencies'][g]]))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && pip check
COPY alembic.ini ./
COPY client ./client
COPY ops ./ops
COPY common ./common
COPY core ./core
COPY api ./api
COPY worker ./worker
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
