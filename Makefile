# The two commands a newcomer runs: `make demo` and `make test`. Both create .venv when it is missing
# (and refresh it when pyproject.toml or the pinned ML requirements change).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: demo test lint format venv services browser-deps bench clean compose-test

$(STAMP): pyproject.toml requirements/ml.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned, from the local wheel cache; nothing later may pull another torch.
	$(PIP) install -q -r requirements/ml.txt
	$(PIP) install -q -e '.[ml,dev,test]'
	@touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) scripts/demo.py

services:
	@scripts/ensure-services.sh

browser-deps:
	@scripts/ensure-chromium.sh || true

test: $(STAMP) services browser-deps
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	VENV=$(VENV) scripts/lint-tree.sh

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The compose stack for real (scripts/compose-test.sh): images built, stack started, one job end to end
# with the worker container SIGKILLed mid-job, everything torn down. podman-compose comes from a tool venv
# (not .venv); docker/containers.conf carries this host's podman settings (runc, ulimits).
COMPOSE_TOOLS := docker/.tools/venv
$(COMPOSE_TOOLS)/.installed:
	$(PYTHON) -m venv $(COMPOSE_TOOLS)
	$(COMPOSE_TOOLS)/bin/pip install -q 'podman-compose>=1.6,<2'
	@touch $@

compose-test: $(STAMP) $(COMPOSE_TOOLS)/.installed
	CONTAINERS_CONF=$${CONTAINERS_CONF:-$(CURDIR)/docker/containers.conf} \
	PODMAN_COMPOSE=$(CURDIR)/$(COMPOSE_TOOLS)/bin/podman-compose \
	scripts/compose-test.sh

bench: $(STAMP)
	$(PY) bench/step.py
	$(PY) bench/job.py

clean:
	rm -rf demo-output .mergetune test-artifacts
