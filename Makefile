# Every target bootstraps .venv on a fresh machine; nothing else is needed by hand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The PostgreSQL half of the suite; set it empty to run SQLite only on a machine without PostgreSQL.
TETHER_TEST_POSTGRES_URL ?= postgresql+psycopg://postgres@127.0.0.1:5432/test
export TETHER_TEST_POSTGRES_URL
# Some machines set PYTHONDONTWRITEBYTECODE=1: every process (each `tether` call the tests run,
# each server, pytest's own assertion rewriting) then compiles Tether from source again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: run test lint bench clean

$(BIN)/tether: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.dev: $(BIN)/tether
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

run: $(BIN)/tether
	$(BIN)/tether serve

# Two test processes: every test has its own SQLite file or PostgreSQL schema. The suite
# is now CPU-bound on 2 CPUs (~14 min of CPU, 8.6-9.9 min here); worksteal lets an idle
# worker take queued tests from a busy one (the schemathesis runs are a minute each).
test: $(VENV)/.dev
	$(BIN)/pytest -q -n 2 --dist worksteal

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tether
