# The two commands of README.md: `make run` and `make test`. Each sets itself up on a fresh clone.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
RUN_STAMP := $(VENV)/.installed-run
TEST_STAMP := $(VENV)/.installed-test

.PHONY: run test lint typecheck unit env system-deps clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# What running needs: the library, the service and Triton.
$(RUN_STAMP): pyproject.toml | $(PY)
	# torch first and pinned: this machine carries the CPU build of 2.13.0 on disk, and an
	# unpinned resolve would pull a multi-GB CUDA build instead.
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[service,triton]'
	@touch $(RUN_STAMP)

# What the tests need on top: linters, type checker, test runner, the clients they drive.
$(TEST_STAMP): $(RUN_STAMP)
	$(PY) -m pip install --quiet -e '.[service,triton,dev]'
	@touch $(TEST_STAMP)

env: $(TEST_STAMP)

# System packages the tests drive as real processes (Redis, Chromium, Prometheus, docker-compose, curl).
system-deps:
	@./scripts/ensure-system-deps.sh

lint: env
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: env
	$(VENV)/bin/mypy

# Test modules are spread over PYTEST_WORKERS processes, each module whole on one of them so
# that its module-scoped fixtures (servers, exported pipelines) are built once. One torch thread
# per process: torch's OpenMP threads spin-wait for one another, and with more of them than free
# cores (two workers of two threads, a busy core beside) CPU tests ran 10-30 times slower
# (test_pieces' fixture 182 s instead of 12 s, the shipped-model guard past its 600 s timeout).
PYTEST_WORKERS ?= 2

unit: env system-deps
	OMP_NUM_THREADS=1 TRITON_INTERPRET=1 $(VENV)/bin/pytest -q -n $(PYTEST_WORKERS) --dist loadscope

test: lint typecheck unit

# Only the system programs the service needs (Redis, curl), not the tests' browser or Prometheus.
run: $(RUN_STAMP)
	@./scripts/ensure-system-deps.sh run
	./scripts/run-local.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
