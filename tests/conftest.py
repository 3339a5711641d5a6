"""Test setup: 8 simulated CPU devices, set before JAX initialises; a shared compilation cache;
under pytest-xdist, the files that take minutes are handed out first."""

import os

# XLA's CPU backend at optimisation level 0: the suite's programs are tiny, so compiling them is
# most of its time; level 0 compiles ~30% faster (tests/stages/test_stages_ppo.py + tests/rl: 130 s
# -> 87 s) and computes the same functions (numerics are checked against references, with
# tolerances, either way). Subprocesses keep these flags (tests/xla_env.py). Set XLA_FLAGS
# yourself to run the suite at another level.
TEST_XLA_FLAGS = "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
os.environ.setdefault("XLA_FLAGS", TEST_XLA_FLAGS)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The persistent compilation cache (girl_jax/compile_cache.py) in the repository's .pytest_cache:
# the xdist workers and the `girl` subprocesses of the tests (which inherit the variable) share
# it, so a program that many tests compile (the tiny runs' steps, the resumed runs after a kill
# or SIGTERM) is compiled once per run of the suite. GIRL_COMPILE_CACHE=off: no cache.
os.environ.setdefault("GIRL_COMPILE_CACHE", os.path.join(ROOT, ".pytest_cache", "jax"))

# `tiny_run`: one whole tiny `girl run` a session, shared by the xdist workers (tests/tiny_run.py)
from tiny_run import tiny_run  # noqa: E402, F401


def pytest_configure(config):
    if getattr(config.option, "numprocesses", None) and not hasattr(config, "workerinput"):
        return  # the xdist controller: it runs no tests
    from girl_jax import compile_cache

    compile_cache.enable()  # before any test module is imported (and compiles anything)


# Under pytest-xdist (`make test`: -n 3 --dist loadfile --no-loadscope-reorder) whole files go to
# the workers in collection order. The files that take minutes go first, so that the run ends on
# many short files that even out the workers rather than on one worker finishing a long file
# alone (xdist's own order, most tests first, left kill_resume, the notebook and preemption for
# last). The files that share the tiny run (tests/tiny_run.py) are spread
# out so that the worker not making it has other long work meanwhile. Files not listed follow:
# those with `slow` tests, then the others, most tests first. Seconds: one process on a loaded
# 2-core machine, the compilation cache starting empty.
LONG_FIRST = (
    "tests/test_scale_configs.py",  # three :smoke girl runs (gpt2_xl, llama2_7b, llama2_70b), 300 s
    "tests/reliability/test_rel_kill_resume.py",  # makes the tiny run (120-160 s), then 90 s
    "tests/stages/test_stages_sharded.py",  # 150 s
    "tests/stages/test_stages_ppo.py",  # 110 s
    "tests/stages/test_ppo_rewards.py",  # 90 s
    "tests/stages/test_stages_reward.py",  # 120 s
    "tests/test_notebook.py",  # 120 s
    "tests/reliability/test_rel_numerics.py",  # 50 s
    "tests/test_sweep.py",  # 105 s, + the --vmap sweep of the same cells
    "tests/test_sweep_vmap.py",
    "tests/test_benchmarks_smoke.py",  # 55 s
    "tests/test_observability.py",  # 40 s on the tiny run (after kill_resume has made it)
    "tests/reliability/test_rel_reward_sources.py",
    "tests/parallel/test_parallel_multihost.py",  # 40 s
    "tests/stages/test_reward_ensemble.py",  # 40 s
    "tests/reliability/test_rel_preemption.py",  # 30 s
)


def pytest_collection_modifyitems(config, items):
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return  # one process: the order changes nothing
    rank = {path: i for i, path in enumerate(LONG_FIRST)}
    files, count, slow = {}, {}, set()
    for item in items:
        path = item.nodeid.split("::")[0]
        files.setdefault(path, len(files))
        count[path] = count.get(path, 0) + 1
        if item.get_closest_marker("slow"):
            slow.add(path)

    def key(item):
        path = item.nodeid.split("::")[0]
        if path in rank:
            return (0, rank[path], 0)
        return (1 if path in slow else 2, -count[path], files[path])

    items.sort(key=key)  # stable: a file's tests keep their order
