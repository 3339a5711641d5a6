"""Token log-probabilities and entropies from logits, with a written-out backward.

Every loss of the pipeline reads the logits ``[B, T, V]`` through two functions of each row:
the log-probability of the target token, ``l[t] - logsumexp(l)``, and (PPO) the entropy
``-sum_v p_v log p_v``. Autodiff of the textbook formulas (`jax.nn.log_softmax`, `exp`,
`take_along_axis`) walks the vocabulary axis many times and keeps ``log p`` and ``p`` as
``[B, T, V]`` residuals; its backward adds a scatter into a zero ``[B, T, V]`` array for the
gathered target. At PPO's 64 x 64 x 8192 logits on a CPU those passes were ~1-2 s of a
12 s iteration, and the entropy's gradient is computed even at ``ent_coef = 0`` (a traced
hyperparameter, so runs differing in it share one program).

`logprobs_and_entropy` is a `jax.custom_vjp` with the same values and gradients:

    forward   m = max(l);  s = sum(exp(l - m))
              logp = (l - m)[target] - log s;  H = log s - sum(exp(l - m) (l - m)) / s
    backward  with d = (l - m) - log s = log p and p = exp(d):
              dl = g_logp * onehot(target) - p * (g_logp + g_H * (d + H))

so the forward reads each row twice (max, then one pass that sums both), the backward is one
elementwise pass (the one-hot is a comparison with an iota, not a scatter), and the residuals
are the logits themselves plus three numbers per row. Impossible tokens (``l = -inf``) have
p = 0 and contribute 0 to the entropy and to the gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def _row_stats(logits: Array, targets: Array):
    """(logp [...], entropy [...], row max [...], log s [...]) in float32. Log-probs are
    ``(l - m) - log s``, not ``l - logz``: l - m is exact for nearby floats, so a row of large
    logits (1e4) keeps its log-probs to float32 rounding of their own size."""
    l = logits.astype(jnp.float32)
    m = jnp.max(l, axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)  # a row of -inf: no NaN from (-inf) - (-inf)
    d = l - m
    e = jnp.exp(d)
    s = jnp.sum(e, axis=-1)
    e_d = jnp.sum(jnp.where(e > 0, e * d, 0.0), axis=-1)
    log_s = jnp.log(s)
    picked = jnp.take_along_axis(d, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
    return picked - log_s, log_s - e_d / s, m[..., 0], log_s


@jax.custom_vjp
def logprobs_and_entropy(logits: Array, targets: Array) -> tuple[Array, Array]:
    """``(log softmax(logits)[target], entropy of softmax(logits))`` per position, float32.

    logits ``[..., V]`` (any float dtype; computed in float32), targets ``[...]`` integer.
    The gradient flows to `logits` only, in their dtype.
    """
    logp, entropy, _, _ = _row_stats(logits, targets)
    return logp, entropy


def _fwd(logits, targets):
    logp, entropy, m, log_s = _row_stats(logits, targets)
    return (logp, entropy), (logits, targets, m, log_s, entropy)


def _bwd(res, g):
    logits, targets, m, log_s, entropy = res
    g_logp, g_ent = g
    d = (logits.astype(jnp.float32) - m[..., None]) - log_s[..., None]  # log p
    p = jnp.exp(d)
    vocab = jax.lax.broadcasted_iota(jnp.int32, d.shape, d.ndim - 1)
    onehot = vocab == targets[..., None].astype(jnp.int32)
    inner = g_logp[..., None] + g_ent[..., None] * (d + entropy[..., None])
    grad = jnp.where(onehot, g_logp[..., None], 0.0) - jnp.where(p > 0, p * inner, 0.0)
    return grad.astype(logits.dtype), None


logprobs_and_entropy.defvjp(_fwd, _bwd)


def token_logprobs(logits: Array, targets: Array, temperature: float = 1.0) -> Array:
    """log p(target) under softmax(logits / temperature), in float32."""
    if temperature != 1.0:
        logits = logits.astype(jnp.float32) / temperature
    return logprobs_and_entropy(logits, targets)[0]


def entropy(logits: Array) -> Array:
    """Entropy of softmax(logits) per position, float32."""
    return logprobs_and_entropy(logits, jnp.zeros(logits.shape[:-1], jnp.int32))[1]


def textbook_logprobs_and_entropy(logits: Array, targets: Array) -> tuple[Array, Array]:
    """The same two values as `logprobs_and_entropy` by autodiff of the textbook formulas
    (`logsumexp` + `take_along_axis`, `log_softmax` entropy): what the pipeline computed before,
    the reference of tests/rl/test_logprobs.py and the peer of benchmarks/bench_logprobs.py.
    Its entropy gradient is NaN on rows with -inf logits."""
    x = logits.astype(jnp.float32)
    logp = jnp.take_along_axis(x, targets[..., None], -1)[..., 0] - jax.nn.logsumexp(x, -1)
    lsm = jax.nn.log_softmax(x, -1)
    p = jnp.exp(lsm)
    return logp, -jnp.sum(jnp.where(p > 0, p * lsm, 0.0), -1)
