# gpufleet — see README.md
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?=

.PHONY: install test test-unit lint up-local bench clean

install:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q -e '.[test,report]'

test:
	$(PY) -m pytest

test-unit:
	$(PY) -m pytest tests/unit

lint:
	$(VENV)/bin/ruff check .

up-local:
	$(VENV)/bin/gpufleet up --local $(if $(CONFIG),--config $(CONFIG))

bench:
	$(PY) -m benchmarks.gateway
	$(PY) -m benchmarks.allocator_churn

clean:
	rm -rf run reports .pytest_cache
