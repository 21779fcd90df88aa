# Every target sets itself up from a fresh clone: the venv is created and the package
# installed (editable, with the dev extras, at the versions pinned in requirements-dev.lock)
# on first use and whenever pyproject.toml or the lock changes.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LOCK := requirements-dev.lock
UV_VERSION ?= 0.13.8
PYTEST_ARGS ?=
# pytest-xdist: every test has databases of its own, so tests run side by side; the many
# waits (TTL expiry, heartbeats, worker processes) overlap. Each module goes whole to one
# worker (one Spark JVM, one Dask cluster; the slow modules are started first, see
# tests/conftest.py). `make test XDIST=` runs in one process.
XDIST ?= -n 2 --dist loadfile
# The unit tests and the contract suite on SQLite: no server needed.
FAST := tests/unit tests/contract tests/test_plumbing.py -m "not postgres and not mysql"
# The other interpreter and the lowest SQLAlchemy the package allows, each in a venv of its own.
PY313 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3.13) \
	$(wildcard /root/.pyenv/versions/3.13*/bin/python3.13) python3.13)
SA_MIN := $(shell sed -n 's/.*"sqlalchemy\[asyncio\]>=\([0-9.]*\).*/\1/p' pyproject.toml)
SEED ?= 1
SECONDS ?= 600
BACKEND ?= sqlite

.PHONY: venv venv-bergtalzug lock demo test test-fast test-sa-min test-py313 test-matrix lint \
	format bench bench-quick bench-cluster soak docs clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(LOCK)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $(STAMP)

# Re-resolve the dev tools to the newest versions pyproject.toml allows (every Python from
# 3.11 on, one universal lock); commit the changed requirements-dev.lock.
lock: $(STAMP)
	$(BIN)/python -m pip install --quiet uv==$(UV_VERSION)
	$(BIN)/uv pip compile pyproject.toml --extra dev --universal --python-version 3.11 \
		--no-header --annotation-style line --upgrade -o $(LOCK)

# bergtalzug 0.2.0 declares Python >= 3.14 and imports InterpreterPoolExecutor; its tests run
# the real pipeline on Python 3.13 from this second venv (tests/integration/bergtalzug_env.py).
BZ_VENV := .venv-bergtalzug
BZ_STAMP := $(BZ_VENV)/.installed

venv-bergtalzug: $(BZ_STAMP)

$(BZ_STAMP): pyproject.toml $(LOCK)
	test -x $(BZ_VENV)/bin/python || $(PY313) -m venv $(BZ_VENV)
	$(BZ_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BZ_VENV)/bin/python -m pip install --quiet --ignore-requires-python 'bergtalzug==0.2.0'
	$(BZ_VENV)/bin/python -m pip install --quiet -c $(LOCK) -e '.[postgres,mysql]'
	touch $(BZ_STAMP)

demo: $(STAMP)
	$(BIN)/python -m pybatchintory.demo

test: $(STAMP)
	$(BIN)/python -m pytest -m "not soak" $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest $(FAST) $(XDIST) $(PYTEST_ARGS)

# The lock without SQLAlchemy, which is pinned to the lowest allowed version instead.
.venv-sa-min/.installed: pyproject.toml $(LOCK)
	test -x .venv-sa-min/bin/python || $(PY) -m venv .venv-sa-min
	grep -iv '^sqlalchemy==' $(LOCK) > .venv-sa-min/constraints.txt
	.venv-sa-min/bin/python -m pip install --quiet --upgrade pip
	.venv-sa-min/bin/python -m pip install --quiet -c .venv-sa-min/constraints.txt \
		-e '.[dev]' 'sqlalchemy[asyncio]==$(SA_MIN)'
	touch $@

.venv-py313/.installed: pyproject.toml $(LOCK)
	test -x .venv-py313/bin/python || $(PY313) -m venv .venv-py313
	.venv-py313/bin/python -m pip install --quiet --upgrade pip
	.venv-py313/bin/python -m pip install --quiet -c $(LOCK) -e '.[dev]'
	touch $@

# At the lowest SQLAlchemy and on Python 3.13: the fast subset, then the adapters' own tests
# (query plans, statement cache, the compatibility module) on every server.
test-sa-min: .venv-sa-min/.installed
	.venv-sa-min/bin/python -c 'import sqlalchemy; assert sqlalchemy.__version__ == "$(SA_MIN)"'
	.venv-sa-min/bin/python -m pytest $(FAST) $(XDIST) $(PYTEST_ARGS)
	.venv-sa-min/bin/python -m pytest tests/adapters $(XDIST) $(PYTEST_ARGS)

test-py313: .venv-py313/.installed
	.venv-py313/bin/python -m pytest $(FAST) $(XDIST) $(PYTEST_ARGS)
	.venv-py313/bin/python -m pytest tests/adapters $(XDIST) $(PYTEST_ARGS)

test-matrix: test test-sa-min test-py313

format: $(STAMP)
	$(BIN)/ruff format src adapters tests examples benchmarks
	$(BIN)/ruff check --fix src adapters tests examples benchmarks

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
	rm -rf $(VENV) $(BZ_VENV) .venv-sa-min .venv-py313 build dist .pytest_cache .mypy_cache \
		.ruff_cache site

bench-cluster: $(STAMP)
	$(BIN)/python -m benchmarks.cluster
