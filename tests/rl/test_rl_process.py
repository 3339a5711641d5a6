"""GRPO's process supervision (`advantages.process_advantages`, estimator `grpo_process`)
against a NumPy loop."""

import jax.numpy as jnp
import numpy as np
import pytest

from girl_jax.errors import ConfigError
from girl_jax.rl import advantages as adv
from girl_jax.rl import registry


def _reference(steps, step_mask, mask, k, eps=1e-4):
    B, T = steps.shape
    out = np.zeros((B, T))
    for g in range(B // k):
        rows = range(g * k, (g + 1) * k)
        vals = [steps[b, t] for b in rows for t in range(T) if step_mask[b, t] and mask[b, t]]
        if len(vals) < 2 or np.std(vals) == 0:
            continue
        mu, sd = np.mean(vals), np.std(vals)
        for b in rows:
            for t in range(T):
                if not mask[b, t]:
                    continue
                out[b, t] = sum(
                    (steps[b, u] - mu) / (sd + eps)
                    for u in range(t, T)
                    if step_mask[b, u] and mask[b, u]
                )
    return out


def _case(seed=0, B=8, T=7, k=4):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, T + 1, B)
    mask = (np.arange(T)[None] < lengths[:, None]).astype(np.float32)
    steps = rng.normal(size=(B, T)).astype(np.float32)
    step_mask = (rng.random((B, T)) < 0.4).astype(np.float32)
    return steps, step_mask, mask, k


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_process_advantages_match_numpy(seed):
    steps, step_mask, mask, k = _case(seed)
    got = adv.process_advantages(jnp.asarray(steps), jnp.asarray(step_mask), jnp.asarray(mask), k)
    np.testing.assert_allclose(np.asarray(got), _reference(steps, step_mask, mask, k), atol=1e-5)


def test_a_group_with_one_step_or_equal_steps_gets_nothing():
    mask = np.ones((4, 3), np.float32)
    steps = np.zeros((4, 3), np.float32)
    one = np.zeros((4, 3), np.float32)
    one[0, 1] = 1.0  # group 0: one step; group 1: two equal steps
    one[2, 0] = one[3, 2] = 1.0
    steps[2, 0] = steps[3, 2] = 0.7
    got = adv.process_advantages(jnp.asarray(steps), jnp.asarray(one), jnp.asarray(mask), 2)
    np.testing.assert_array_equal(np.asarray(got), 0.0)


def test_credit_goes_to_tokens_at_or_before_the_step():
    """A good step late in a row credits that row's tokens up to it, not the ones after it."""
    mask = np.ones((2, 4), np.float32)
    steps = np.array([[0, 0, 1.0, 0], [0, 0, -1.0, 0]], np.float32)
    step_mask = np.array([[0, 0, 1, 0], [0, 0, 1, 0]], np.float32)
    got = np.asarray(adv.process_advantages(*map(jnp.asarray, (steps, step_mask, mask)), 2))
    assert (got[0, :3] > 0).all() and got[0, 3] == 0
    assert (got[1, :3] < 0).all() and got[1, 3] == 0


def test_grpo_process_is_grpo_plus_the_process_term():
    steps, step_mask, mask, k = _case(3)
    scores = jnp.asarray(np.random.default_rng(3).normal(size=steps.shape[0]), jnp.float32)
    config = {"group_size": k, "grpo_eps": 1e-4, "scale_by_std": True}
    fn = registry.get("advantage", "grpo_process")
    plain, ret = fn(mask=jnp.asarray(mask), scores=scores, config=config)
    grpo, grpo_ret = registry.get("advantage", "grpo")(
        mask=jnp.asarray(mask), scores=scores, config=config
    )
    np.testing.assert_allclose(plain, grpo, atol=1e-6)
    np.testing.assert_allclose(ret, grpo_ret, atol=1e-6)
    both, _ = fn(
        mask=jnp.asarray(mask),
        scores=scores,
        config=config,
        steps=(jnp.asarray(steps), jnp.asarray(step_mask)),
    )
    np.testing.assert_allclose(
        both, np.asarray(grpo) + _reference(steps, step_mask, mask, k), atol=1e-5
    )


def test_process_advantages_check_the_group():
    steps, step_mask, mask, _ = _case(0, B=6)
    with pytest.raises(ConfigError, match="group_size"):
        adv.process_advantages(jnp.asarray(steps), jnp.asarray(step_mask), jnp.asarray(mask), 4)
