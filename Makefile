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

# Three test processes on 2 CPUs: every test has its own SQLite file or PostgreSQL schema. Two
# left ~20 % of the CPU idle while tests wait on the servers, CLI children and PostgreSQL they
# drive; a third fills it (2026-12-06, this machine, back to back: -n 2 3:38-3:52, -n 3
# 3:23-3:40). Worksteal lets an idle worker take queued tests from a busy one (the schemathesis
# runs are 30-100 s each). The whole suite, 3,165 tests on both backends: 7:03 on 2026-12-07
# at 19:30 UTC (this 2-CPU machine, nothing else running); 14:14 the day's first run, before
# shared per-module worlds, a precomputed sign-in dummy hash and right-sizing compiled once.
test: $(VENV)/.dev
	$(BIN)/pytest -q -n 3 --dist worksteal

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: $(VENV)/.dev
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .tether
