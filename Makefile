# Fresh machine: `make demo` (the app on the shipped models) or `make test` (the test suite);
# `make docs` builds the documentation site into site/; `make dist` the wheel and sdist into
# dist/; `make smoke` installs that wheel with [app] into a fresh venv outside the checkout and
# runs .ci/smoke.py there from an empty folder.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench docs dist smoke

$(BIN)/mmcam: pyproject.toml setup.py
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

dist: setup
	rm -rf dist
	$(BIN)/python -m build --outdir dist .
	$(BIN)/twine check --strict dist/*

smoke: dist
	d=$$(mktemp -d) && $(PY) -m venv $$d/venv \
	  && $$d/venv/bin/pip install -q "$$(ls dist/mmcam-*.whl)[app]" \
	  && mkdir $$d/empty && cd $$d/empty \
	  && $$d/venv/bin/python $(CURDIR)/.ci/smoke.py --workdir . && rm -rf $$d
