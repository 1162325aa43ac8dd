# Fresh machine: `make demo` (the app on the shipped models) or `make test` (the test suite).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench

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

bench: setup
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/bench_caption.py
