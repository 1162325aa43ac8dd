# Fresh machine: `make demo` (the app on the shipped models) or `make test` (the test suite);
# `make docs` builds the documentation site into site/.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench docs

$(BIN)/mmcam: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[app,hf,test]"
	touch $(BIN)/mmcam

setup: $(BIN)/mmcam

demo: setup
	$(BIN)/mmcam demo

test: setup
	$(BIN)/ruff check mmcam tests benchmarks demos
	$(BIN)/python -m pytest -q

docs: setup
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

bench: setup
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/bench_caption.py
