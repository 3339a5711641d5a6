"""Independent device calls side by side: both cores of a CPU for batched generation and scoring.

XLA:CPU runs one program's chain of small ops (a decode step at batch 128, a d = 128 trunk) mostly
on one core, and one Python thread dispatching batch after batch waits for each. Two programs in
flight at once, from two host threads, do use both: two 128-token sampler runs side by side take
~0.67 of the time they take one after the other (docs/benchmarks.md, "Two calls in flight"). Each
call is the same compiled program on the same inputs as before, so every output is bit-identical
to the one-thread loop; only the wall time changes.

`ordered_map(fn, items, key=...)` is that loop: results in the input order, the first item of
each `key` (a compiled shape) run alone so that no shape compiles twice, the rest on `workers()`
threads. `workers()` is 1 (the plain loop) unless this process drives one CPU device on a
machine with >= 2 cores: a program over several devices or hosts has collectives, and two of
them in flight could interleave differently on different devices; a GPU or TPU queues programs
anyway. GIRL_HOST_THREADS=N sets the count (1: off).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import jax

from girl_jax.parallel import rules as rules_mod

ENV = "GIRL_HOST_THREADS"
T = TypeVar("T")
R = TypeVar("R")


def workers() -> int:
    """Threads for independent device calls: GIRL_HOST_THREADS, else 2 on a 1-device CPU
    process with >= 2 cores, else 1."""
    value = os.environ.get(ENV, "").strip()
    if value:
        try:
            n = int(value)
        except ValueError:
            raise ValueError(f"{ENV}={value!r}: expected a whole number >= 1") from None
        if n < 1:
            raise ValueError(f"{ENV}={value!r}: expected a whole number >= 1")
        return n
    one_cpu_device = (
        jax.process_count() == 1 and jax.device_count() == 1 and jax.default_backend() == "cpu"
    )
    return 2 if one_cpu_device and (os.cpu_count() or 1) >= 2 else 1


def ordered_map(
    fn: Callable[[T], R],
    items: Iterable[T],
    *,
    key: Callable[[T], Any] | None = None,
    num_workers: int | None = None,
) -> list[R]:
    """[fn(item) for item in items] with up to `num_workers` calls in flight (`for_each`)."""
    out: list[R] = []
    for_each(fn, items, lambda _, r: out.append(r), key=key, num_workers=num_workers)
    return out


def for_each(
    fn: Callable[[T], R],
    items: Iterable[T],
    consume: Callable[[T, R], None],
    *,
    key: Callable[[T], Any] | None = None,
    num_workers: int | None = None,
) -> None:
    """consume(item, fn(item)) for every item, in the input order, with up to `num_workers`
    (default `workers()`) calls of `fn` in flight; `consume` runs on this thread and a result
    is dropped once consumed. The first item of each `key(item)` (default: one key for all)
    runs before any other item of that key starts, so each compiled shape compiles once. An
    exception in `fn` cancels the calls not yet started and is raised here. The workers run
    under this thread's `parallel.rules.activate` mesh and rules."""
    items = list(items)
    n = workers() if num_workers is None else int(num_workers)
    if n <= 1 or len(items) <= 1:
        for item in items:
            consume(item, fn(item))
        return
    key = key or (lambda _: None)
    context = rules_mod.activated()  # the caller's mesh + rules, per thread: re-entered below

    def call(item):
        with rules_mod.activate(*context):
            return fn(item)

    seen, first, rest = set(), [], []
    for i, item in enumerate(items):
        k = key(item)
        (rest if k in seen else first).append(i)
        seen.add(k)
    ready: dict[int, Any] = {}
    next_i = 0

    def put(i, result):
        nonlocal next_i
        ready[i] = result
        while next_i in ready:
            consume(items[next_i], ready.pop(next_i))
            next_i += 1

    for i in first:  # one call per new shape: it compiles (or loads) alone
        put(i, fn(items[i]))
    pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="girl-host")
    try:
        futures = [(i, pool.submit(call, items[i])) for i in rest]
        for i, fut in futures:
            put(i, fut.result())
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
