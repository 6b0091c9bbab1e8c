# The two commands of the README: `make run` and `make test`. Each sets up what it needs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
HOST   ?= 127.0.0.1
PORT   ?= 8000
DATA   ?= ./.modelport

.PHONY: run test lint typecheck unit install clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/modelport serve --host $(HOST) --port $(PORT) --data-dir $(DATA)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	./scripts/ensure-postgres.sh
	$(BIN)/pytest

bench: $(STAMP)
	./scripts/ensure-wrk.sh
	$(BIN)/python -m benchmarks.w1_overhead
	$(BIN)/python -m benchmarks.w2_compute
	$(BIN)/python -m benchmarks.w1_metering
	$(BIN)/python -m benchmarks.training_overhead

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
