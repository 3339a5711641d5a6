"""host_threads: independent calls two at a time give the one-by-one results, in order."""

import os
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from girl_jax import host_threads
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod


def test_ordered_map_keeps_the_input_order_and_runs_calls_side_by_side():
    in_flight, peak, lock = [0], [0], threading.Lock()

    def slow_square(x):
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
        time.sleep(0.02 * (x % 3))  # later items may finish first
        with lock:
            in_flight[0] -= 1
        return x * x

    items = list(range(12))
    assert host_threads.ordered_map(slow_square, items, num_workers=3) == [x * x for x in items]
    assert peak[0] >= 2  # the calls did overlap
    peak[0] = 0
    assert host_threads.ordered_map(slow_square, items, num_workers=1) == [x * x for x in items]
    assert peak[0] == 1


def test_the_first_item_of_each_key_runs_alone_and_consume_sees_the_input_order():
    events, lock = [], threading.Lock()

    def fn(x):
        with lock:
            events.append(("start", x))
        time.sleep(0.01)
        with lock:
            events.append(("end", x))
        return -x

    key = lambda x: x // 4  # noqa: E731 - three "shapes": 0-3, 4-7, 8-11
    seen = []
    host_threads.for_each(fn, range(12), lambda x, r: seen.append((x, r)), key=key, num_workers=2)
    assert seen == [(x, -x) for x in range(12)]
    for first in (0, 4, 8):  # nothing of its key starts before the first one has ended
        end = events.index(("end", first))
        later = [
            i for i, (kind, x) in enumerate(events) if kind == "start" and key(x) == key(first)
        ]
        assert all(i > end for i in later if events[i][1] != first)


def test_an_exception_in_a_call_is_raised_and_the_rest_cancelled():
    calls = []

    def fn(x):
        calls.append(x)
        if x == 3:
            raise RuntimeError("bad item 3")
        time.sleep(0.01)
        return x

    with pytest.raises(RuntimeError, match="bad item 3"):
        host_threads.ordered_map(fn, range(200), num_workers=2)
    assert len(calls) < 200


def test_workers_reads_the_environment(monkeypatch):
    monkeypatch.setenv(host_threads.ENV, "3")
    assert host_threads.workers() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(host_threads.ENV, bad)
        with pytest.raises(ValueError, match=host_threads.ENV):
            host_threads.workers()
    monkeypatch.delenv(host_threads.ENV)
    # default: 2 on a one-device CPU process with >= 2 cores, else 1 (the suite runs 8
    # simulated CPU devices: a program may span several, so one at a time)
    one_cpu = jax.device_count() == 1 and jax.default_backend() == "cpu"
    assert host_threads.workers() == (2 if one_cpu and (os.cpu_count() or 1) >= 2 else 1)


def test_workers_see_the_callers_mesh_and_rules():
    mesh = mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    rules = (("batch", "data"), ("embed", None))
    with rules_mod.activate(mesh, rules):
        want = rules_mod.activated()
        got = host_threads.ordered_map(lambda _: rules_mod.activated(), range(6), num_workers=2)
    assert all(g == want for g in got)
    assert rules_mod.activated() != want  # and the caller's context is restored after


def test_jitted_calls_from_two_threads_equal_one_thread():
    """The same compiled program on the same inputs: bit-identical from either thread."""
    f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum(1))
    xs = [np.random.default_rng(i).normal(size=(64, 32)).astype(np.float32) for i in range(8)]
    one = [np.asarray(f(x)) for x in xs]
    two = host_threads.ordered_map(lambda x: np.asarray(f(x)), xs, num_workers=2)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)
