# All set-up lives here: `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
CACHE := $(CURDIR)/.cache
export MPLCONFIGDIR := $(CACHE)/matplotlib
export SCIKIT_LEARN_DATA := $(CACHE)/sklearn
export TORCHINDUCTOR_CACHE_DIR := $(CACHE)/torchinductor
export PIP_CACHE_DIR := $(CACHE)/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
ARGS ?=

.PHONY: demo test lint docs bench clean chromium fashion-mnist

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime: $(BIN)/python requirements.txt pyproject.toml
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps --no-build-isolation -e . || $(BIN)/pip install -q --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.txt requirements-peers.txt
	$(BIN)/pip install -q -r requirements-dev.txt
	$(BIN)/pip install -q --no-deps -r requirements-peers.txt
	touch $@

# Debian's chromium for the browser test of the report (skipped where it cannot be installed).
chromium:
	@command -v chromium >/dev/null 2>&1 || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "note: could not install chromium; the browser test will be skipped"; }

# Debian's Fashion-MNIST (/usr/share/datasets/fashion-mnist) for the studies, experiments and
# benchmarks that take --data fashion-mnist (skipped, with a note, where apt cannot install it).
fashion-mnist:
	@test -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz || { \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	  >/dev/null 2>&1 || echo "note: could not install dataset-fashion-mnist; its rows are skipped"; }

demo: $(VENV)/.runtime
	$(BIN)/memspace demo $(ARGS)

# Tests on one worker per core (pytest-xdist; each worker and the commands it starts use one
# thread; the demo run the CLI and report tests share is made once): on 2 cores the suite took
# 3 min 51 s against 5 min 43 s in one process. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
test: $(VENV)/.dev chromium fashion-mnist lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS) $(ARGS)

# The style the project declares, checked: pycodestyle, pyflakes, isort, pydocstyle (Google), the format.
lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The API reference from the docstrings, offline, into .cache/site (warnings are errors).
docs: $(VENV)/.dev
	$(BIN)/mkdocs build --strict

bench: $(VENV)/.dev fashion-mnist
	$(BIN)/python benchmarks/fisher_benchmark.py $(ARGS)
	$(BIN)/python benchmarks/population_benchmark.py

clean:
	rm -rf $(VENV) $(CACHE)
