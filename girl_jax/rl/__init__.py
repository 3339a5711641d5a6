"""RL math as pure functions of arrays with explicit masks, registered by name.

Shapes: ``B`` sequences (responses), ``T`` response tokens. ``mask`` is 1 on a
contiguous prefix of each row (generated tokens up to and including EOS).
Every function returns 0 at masked positions and takes masked means over the
valid tokens of the whole batch.

A config line picks a variant through `registry.get(kind, name)`; each kind has
one call convention, with hyper-parameters read from `config` (a dict, a
dataclass or an ml_collections ConfigDict, by key / attribute name):

advantage -- ``fn(*, rewards, values, mask, scores, config) -> (advantages_BxT, returns_BxT)``
  rewards  per-token rewards ``[B, T]`` (-beta*KL plus the score at the last token), or None
  values   critic values ``[B, T]``, or None for critic-free estimators
  scores   sequence scores ``[B]``, or None
  names and the config keys they read:
    gae        gamma (1.0), lam (0.95); needs rewards and values; returns = adv + values
    grpo       group_size, grpo_eps (1e-4), scale_by_std (True); sequence reward is
               `scores` if given, else the masked sum of `rewards` (KL included);
               returns = that sequence reward broadcast over valid tokens
    rloo       group_size; sequence reward and returns as grpo
    reinforce  gamma (1.0), baseline ('none' | 'mean' | 'value'); uses `rewards`, or
               `scores` placed at the last token; returns = returns-to-go
  Rows ``i*group_size .. (i+1)*group_size-1`` are samples of the same prompt.

policy_loss -- ``fn(logp, old_logp, advantages, mask, *, config) -> (loss, metrics)``
    clipped    clip_eps (0.2)
    dual_clip  clip_eps (0.2), dual_clip_c (3.0)

value_loss -- ``fn(values, old_values, returns, mask, *, config) -> (loss, metrics)``
    clipped    value_clip_eps (falls back to clip_eps, 0.2)
    plain      (none)

kl -- ``fn(logp, logp_ref) -> kl_BxT``: k1, k2, k3 (Schulman's estimators).

The plain functions (`advantages.gae`, `losses.clipped_policy_loss`, ...) keep
explicit arguments; the registered names are thin adapters over them. KL
controllers (`kl.FixedKLController`, `kl.AdaptiveKLController`) are frozen
dataclasses with pure ``init() -> state`` / ``update(state, kl, n_steps) -> state``.
"""

from girl_jax.rl import registry  # noqa: I001  (registry first: the modules below register)
from girl_jax.rl import advantages, kl, losses, shaping

__all__ = ["advantages", "kl", "losses", "registry", "shaping"]
