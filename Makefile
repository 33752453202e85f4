# omnistream: every target installs what it needs, idempotently.
#   make demo   start the local stack and run the pipeline on it (SCALE=full: 6M history rows)
#   make test   unit + integration tests against the real local stack
#   make bench  benchmarks that print figures
#   make lint   ruff, mypy, sqlfluff
#   make compose-smoke  docker compose up, land, dbt, reconcile, down -v (needs a Docker engine; CI never runs it)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install system-packages demo test unit integration bench lint format stack-down clean compose-smoke

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

system-packages:
	@bash stack/install-system-packages.sh

install: system-packages $(STAMP)
	$(BIN)/omnistream stack install

SCALE ?= small

demo: install
	$(BIN)/omnistream demo --scale $(SCALE)

test: install
	$(BIN)/omnistream stack up
	$(BIN)/pytest -q --durations=15 tests

unit: $(STAMP)
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/omnistream stack up
	$(BIN)/pytest -q tests/integration

bench: install
	$(BIN)/omnistream stack up
	@for script in bench/bench_*.py; do echo "== $$script"; PYTHONPATH=. $(BIN)/python $$script || exit 1; done

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy omnistream simulators producers tests/support
	$(BIN)/sqlfluff lint dbt/models

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

stack-down:
	$(BIN)/omnistream stack down

clean: stack-down
	$(BIN)/omnistream stack down --purge

# The full stack under docker compose, end to end (stack/compose-smoke.sh): needs a Docker engine.
compose-smoke:
	bash stack/compose-smoke.sh
