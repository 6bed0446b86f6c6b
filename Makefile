# gpufleet — see README.md
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?=

OFFLINE ?=
SCENARIO ?= default
COMPOSE := docker compose -f compose/compose.yaml $(if $(OFFLINE),-f compose/compose.offline.yaml)

.PHONY: install test test-unit test-e2e lint up down up-local offline-images scale-test simulate bench clean

install:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test,report]'

test:
	$(PY) -m pytest

test-unit:
	$(PY) -m pytest tests/unit

lint:
	$(VENV)/bin/ruff check .

test-e2e:
	$(PY) -m pytest tests/e2e

# The compose stack. OFFLINE=1: the images `make offline-images` built, no Grafana.
up:
	$(COMPOSE) up -d $(if $(OFFLINE),,--build)
	@echo "gateway http://localhost:8080  admin http://127.0.0.1:8181/status  prometheus http://localhost:9090" \
	  "$(if $(OFFLINE),,grafana http://localhost:3000)"

down:
	$(COMPOSE) down --remove-orphans

offline-images:
	PYTHON=$(PY) docker/offline/build.sh

scale-test:
	$(VENV)/bin/gpufleet scale-test $(SCENARIO)

# The same scenario through the simulator, next to the baselines (CONFIG= for your fleet).
simulate:
	$(VENV)/bin/gpufleet simulate $(SCENARIO) $(if $(CONFIG),--config $(CONFIG)) --compare

up-local:
	$(VENV)/bin/gpufleet up --local $(if $(CONFIG),--config $(CONFIG))

bench:
	$(PY) -m benchmarks.gateway
	$(PY) -m benchmarks.allocator_churn

clean:
	rm -rf run reports .pytest_cache
