# Two commands do all set-up on a fresh machine (see README):
#   make demo   — install, then enrich examples/alerts.ndjson offline with the local mapper
#   make test   — install (with dev tools), then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SHARED ?= ../shared/data

.PHONY: setup demo test lint bench clean

$(BIN)/attackmap: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $@

setup: $(BIN)/attackmap

demo: setup
	mkdir -p out
	$(BIN)/attackmap enrich examples/alerts.ndjson -o out/enriched.ndjson --dead-letter out/dead-letter.ndjson

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/throughput.py --alerts 100000

clean:
	rm -rf out .pytest_cache .mypy_cache .ruff_cache
