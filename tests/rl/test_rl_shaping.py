"""Reward assembly, missing-EOS penalty, clipping and score normalisation."""

import jax
import numpy as np

from girl_jax.rl import shaping

B, T = 7, 5
TOL = dict(rtol=1e-5, atol=1e-5)


def prefix_mask(rng):
    lengths = rng.integers(0, T + 1, size=B)
    lengths[0], lengths[1] = 0, T
    return (np.arange(T)[None, :] < lengths[:, None]).astype(np.int32)


def test_token_rewards_score_at_last_valid_token():
    rng = np.random.default_rng(0)
    mask = prefix_mask(rng)
    score = rng.normal(size=B).astype(np.float32)
    kl_r = rng.normal(size=(B, T)).astype(np.float32)
    ref = np.zeros((B, T))
    for b in range(B):
        n = int(mask[b].sum())
        for t in range(n):
            ref[b, t] = kl_r[b, t] + (score[b] if t == n - 1 else 0.0)
    out = jax.jit(shaping.token_rewards)(score, kl_r, mask)
    np.testing.assert_allclose(out, ref, **TOL)
    assert np.all(np.asarray(out)[0] == 0)  # empty row: nothing, not even the score


def test_missing_eos_penalty_and_clip():
    score = np.array([0.5, -2.0, 3.0, 1.0], np.float32)
    has_eos = np.array([True, False, True, False])
    out = shaping.apply_missing_eos_penalty(score, has_eos, -1.0)
    np.testing.assert_allclose(out, [0.5, -1.0, 3.0, -1.0])
    np.testing.assert_allclose(shaping.apply_missing_eos_penalty(score, has_eos, None), score)
    np.testing.assert_allclose(shaping.clip_scores(score, 1.0), [0.5, -1.0, 1.0, 1.0])
    np.testing.assert_allclose(shaping.clip_scores(score, None), score)


def test_running_moments_match_concatenated_batches():
    rng = np.random.default_rng(1)
    batches = [rng.normal(3.0, 2.0, size=n).astype(np.float32) for n in (5, 17, 1, 40)]
    state = shaping.init_running_moments()
    update = jax.jit(shaping.update_running_moments)
    seen = []
    for x in batches:
        state = update(state, x)
        seen.append(x)
        allx = np.concatenate(seen).astype(np.float64)
        np.testing.assert_allclose(state.count, len(allx))
        np.testing.assert_allclose(state.mean, allx.mean(), **TOL)
        np.testing.assert_allclose(state.var, allx.var(), rtol=1e-4)
    s = batches[0]
    allx = np.concatenate(batches)
    ref = (s - allx.mean()) / np.sqrt(allx.var() + 1e-8)
    np.testing.assert_allclose(shaping.normalize_scores(s, state), ref, rtol=1e-4, atol=1e-5)


def test_whiten_scores():
    x = np.random.default_rng(2).normal(4, 3, size=64).astype(np.float32)
    w = np.asarray(shaping.whiten_scores(x))
    np.testing.assert_allclose(w, (x - x.mean()) / np.sqrt(x.var() + 1e-8), rtol=1e-4, atol=1e-5)
