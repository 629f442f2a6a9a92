# Quick start: `make demo` and `make test` on a fresh clone. Both set up .venv when needed.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
OUT ?= runs/demo

.PHONY: setup demo test test-all lint bench clean

setup: $(STAMP)

# torch is pinned and installed first: an unpinned resolve would pull a CUDA build.
$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[all,dev]'
	touch $(STAMP)

demo: setup
	$(BIN)/torchslim demo --out $(OUT) --overwrite

test: setup
	$(BIN)/python -m pytest

test-all: setup
	$(BIN)/python -m pytest -m ''

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

bench: setup
	$(BIN)/python -m benchmarks.run

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
