# One-command entry points: `make run` (pipeline on the built-in data) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of PyTorch; override for a CUDA machine, e.g. TORCH_SPEC="torch==2.13.0+cu128".
TORCH_SPEC ?= torch==2.13.0
PRESET ?= default
ARGS ?=
PYTEST_ARGS ?=

# Metaflow refuses to run without a user name and ignores root: give it one.
export METAFLOW_USER ?= recmodel
export PYTHONHASHSEED := 0

.PHONY: setup run test test-fast lint format bench bench-peer clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

run: setup
	$(PY) flows/two_stage.py run --preset $(PRESET) $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -m "not slow and not flow" $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

# The self-contained benchmarks; the peer comparison has its own environment (bench-peer).
BENCHES := bench_synthetic bench_extract bench_topk bench_train

bench: setup
	for name in $(BENCHES); do echo "== $$name"; $(PY) benchmarks/$$name.py || exit 1; done

# RecTools in .venv-peer, never in the project's environment (benchmarks/README.md).
.venv-peer/.installed: benchmarks/requirements.txt
	$(PYTHON) -m venv .venv-peer
	.venv-peer/bin/pip install --quiet "$(TORCH_SPEC)"
	.venv-peer/bin/pip install --quiet -r benchmarks/requirements.txt
	touch $@

bench-peer: setup .venv-peer/.installed
	$(PY) benchmarks/bench_peer.py

clean:
	rm -rf .metaflow .pytest_cache .ruff_cache
