# syntax=docker/dockerfile:1
# The API image: FastAPI + the numpy-only checkpoint validator. No torch, no CUDA (a few hundred MB,
# not several GB). Build from the repository root:  docker build -f docker/api.Dockerfile -t mergetune-api .
# PYTHON_IMAGE: another Python 3.11 base (scripts/compose-test.sh passes a local Debian stand-in when no
# registry is reachable).
ARG PYTHON_IMAGE=python:3.11-slim-bookworm
FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MERGETUNE_HOME=/var/lib/mergetune

WORKDIR /app

# The dependencies first, read from pyproject.toml (a layer that changes only with it), then the code.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; print('\\n'.join(p['dependencies'] + [d for g in ('s3',) for d in p['optional-dependencies'][g]]))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None, 'torch must not be in the API image'"
COPY alembic.ini ./
COPY client ./client
COPY ops ./ops
COPY common ./common
COPY core ./core
COPY api ./api
COPY worker ./worker
COPY migrations ./migrations
RUN pip install --no-deps . \
    && python -c "import importlib.util as u; assert u.find_spec('torch') is None" \
    && useradd --system --uid 10001 --home-dir /var/lib/mergetune mergetune \
    && mkdir -p /var/lib/mergetune /data \
    && chown -R mergetune /var/lib/mergetune

COPY --chmod=0755 docker/prestart.sh /usr/local/bin/prestart.sh

USER mergetune
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=5 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"

ENTRYPOINT ["/usr/local/bin/prestart.sh"]
CMD ["uvicorn", "--factory", "mergetune.api.main:create_app", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
