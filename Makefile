# Every target sets itself up from a fresh clone: the venv is created and the package
# installed (editable, with the dev extras) on first use and whenever pyproject.toml changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
SEED ?= 1
SECONDS ?= 600
BACKEND ?= sqlite

.PHONY: venv venv-bergtalzug demo test lint bench bench-quick bench-cluster soak docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# bergtalzug 0.2.0 declares Python >= 3.14 and imports InterpreterPoolExecutor; its tests run
# the real pipeline on Python 3.13 from this second venv (tests/integration/bergtalzug_env.py).
PY313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python) \
	$(wildcard /root/.pyenv/versions/3.13*/bin/python) python3.13)
BZ_VENV := .venv-bergtalzug
BZ_STAMP := $(BZ_VENV)/.installed

venv-bergtalzug: $(BZ_STAMP)

$(BZ_STAMP): pyproject.toml
	test -x $(BZ_VENV)/bin/python || $(PY313) -m venv $(BZ_VENV)
	$(BZ_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BZ_VENV)/bin/python -m pip install --quiet --ignore-requires-python 'bergtalzug==0.2.0'
	$(BZ_VENV)/bin/python -m pip install --quiet -e '.[postgres,mysql]'
	touch $(BZ_STAMP)

demo: $(STAMP)
	$(BIN)/python -m pybatchintory.demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not soak" $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src adapters tests examples benchmarks
	$(BIN)/ruff format --check src adapters tests examples benchmarks
	$(BIN)/mypy
	$(BIN)/mypy --strict tests
	$(BIN)/lint-imports

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

soak: $(STAMP)
	PYBATCHINTORY_SOAK_SEED=$(SEED) PYBATCHINTORY_SOAK_SECONDS=$(SECONDS) \
	PYBATCHINTORY_SOAK_BACKEND=$(BACKEND) \
	$(BIN)/python -m pytest tests/soak -m soak -s $(PYTEST_ARGS)

docs: $(STAMP)
	$(BIN)/python -m pip install --quiet 'mkdocs-material>=9' 'mkdocstrings[python]>=0.24'
	$(BIN)/mkdocs build --strict

clean:
	rm -rf $(VENV) $(BZ_VENV) build dist .pytest_cache .mypy_cache .ruff_cache site

bench-cluster: $(STAMP)
	$(BIN)/python -m benchmarks.cluster
