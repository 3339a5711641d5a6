"""Batched scoring in length order: `score_dataset` runs a jitted per-row function (scores,
features, per-token outputs) over right-padded arrays, each batch cut to the columns it uses;
`trimmed_width` is the width those outputs come back at. `sequence_scores` is the reward
model's per-row score function. Shared by the reward stage, its probe, PPO (its step and
evaluation) and generation.
"""

from __future__ import annotations

import jax
import numpy as np
from flax import nnx

from girl_jax import host_threads
from girl_jax.models.heads import sequence_score


def sequence_scores(graphdef, params, ids, mask, response_mask=None):
    """The reward model's score per sequence [B] (`RewardModel`, or a `ScoreModel`'s last token)."""
    return sequence_score(nnx.merge(graphdef, params), ids, mask, response_mask)


def score_dataset(
    score_fn, params, arrays, batch_size, multiple: int = 32, on_batch=None, workers=None
):
    """Scores (or any per-row output, e.g. features [N, F]) for every row, in the input order.

    `score_fn(params, ids, mask, response_mask)`; `arrays` holds right-padded input_ids,
    attention_mask and response_mask [N, L]. Rows go through in order of length (the end of
    their last valid token, so left padding is never cut), each batch cut to its longest row
    rounded up to `multiple` (padding is ~1/3 of a [N, L] table here), the last batch padded:
    a few compiled shapes and no work on all-pad columns. The output may be a pytree of arrays;
    per-token outputs [B, T', D] come back zero-padded to `trimmed_width(arrays, multiple)`.
    `on_batch(rows)`, when given, is called after each batch with the rows it scored (progress).
    Up to `workers` batches are in flight at once (None: `host_threads.workers()`); the outputs
    are the same as one by one.
    """
    keys = ("input_ids", "attention_mask", "response_mask")
    n, width = arrays["input_ids"].shape
    mask = np.asarray(arrays["attention_mask"]).astype(bool)
    lengths = np.where(mask.any(1), width - np.argmax(mask[:, ::-1], 1), 0)  # last valid + 1
    order = np.argsort(lengths, kind="stable")
    full = trimmed_width(arrays, multiple)
    host = {k: np.asarray(arrays[k]) for k in keys}
    starts = list(range(0, n, batch_size))

    def keep(b):  # the batch's width: its longest row, rounded up to `multiple`
        idx = order[b : b + batch_size]
        return min(width, -(-max(int(lengths[idx].max()), 1) // multiple) * multiple)

    def score(b):
        idx, cols = order[b : b + batch_size], keep(b)
        rows = [host[k][idx, :cols] for k in keys]
        pad = batch_size - len(idx)
        if pad:
            rows = [np.concatenate([x, np.repeat(x[-1:], pad, 0)]) for x in rows]
        return jax.device_get(score_fn(params, *rows))

    out = None  # every output's rows in input order, filled batch by batch (no later copies)

    def put(b, o):
        nonlocal out
        idx = order[b : b + batch_size]
        if out is None:
            out = jax.tree.map(lambda a: _allocate(np.asarray(a), n, full), o)
        jax.tree.map(lambda dst, a: _put_rows(dst, np.asarray(a), idx), out, o)
        if on_batch is not None:
            on_batch(len(idx))

    # batches side by side on a CPU's cores (host_threads), each width compiled once
    host_threads.for_each(score, starts, put, key=keep, num_workers=workers)
    return np.zeros(0, np.float32) if out is None else out


def _allocate(a: np.ndarray, n: int, full: int) -> np.ndarray:
    """Zeros for `n` rows like a batch's output `a`; per-token outputs [B, T', D] at `full`."""
    shape = (n, full, *a.shape[2:]) if a.ndim == 3 else (n, *a.shape[1:])
    return np.zeros(shape, a.dtype)


def _put_rows(dst: np.ndarray, a: np.ndarray, idx: np.ndarray) -> None:
    """A batch's rows (the first len(idx); the rest pad the batch) into `dst` at rows idx."""
    if a.ndim == 3:  # per-token: the batch's width, the rest stays zero
        dst[idx, : a.shape[1]] = a[: len(idx)]
    else:
        dst[idx] = a[: len(idx)]


def trimmed_width(arrays, multiple: int = 32) -> int:
    """The columns any row of `arrays` uses, rounded up to `multiple` (at most the width)."""
    mask = np.asarray(arrays["attention_mask"]).astype(bool)
    width = mask.shape[1]
    used = width - int(np.argmax(mask.any(0)[::-1])) if mask.any() else 1
    return min(width, -(-used // multiple) * multiple)
