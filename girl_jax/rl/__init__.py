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
    dr_grpo    group_size; Dr. GRPO: grpo with the group mean removed and never divided
               by the std (ignores scale_by_std); sequence reward and returns as grpo
    grpo_process
               group_size, grpo_eps; grpo plus GRPO's process supervision (DeepSeekMath):
               takes ``steps=(values_BxT, step_mask_BxT)``, step rewards at the tokens where
               each step ends (span rewards, `girl_jax.rewards.Spans`), normalised over the
               group's steps; each token adds the normalised steps at or after it; returns
               as grpo
    rloo       group_size; sequence reward and returns as grpo
    bon        group_size; best-of-n distillation (RAFT / ReST): 1 on the group's best row,
               0 elsewhere (use with whiten_advantages=False); returns as grpo
    reinforce  gamma (1.0), baseline ('none' | 'mean' | 'value'); uses `rewards`, or
               `scores` placed at the last token; returns = returns-to-go; 'mean' subtracts
               the batch mean of the whole-sequence return, 'value' the critic `values`
    reinforce_pp
               gamma (1.0); REINFORCE++: returns-to-go of `rewards` (or `scores` at the
               last token), whitened over the batch's valid tokens; no critic;
               returns = returns-to-go
    reinforce_pp_baseline
               gamma (1.0), group_size (1); as reinforce_pp, but first the group mean of
               the sequence scores (as grpo's sequence reward) comes off the reward at each
               row's last token when group_size > 1; returns = returns-to-go of `rewards`
  Rows ``i*group_size .. (i+1)*group_size-1`` are samples of the same prompt.

policy_loss -- ``fn(logp, old_logp, advantages, mask, *, config) -> (loss, metrics)``
  metrics: clip_fraction, approx_kl (k3), ratio_mean, ratio_max (+ dual_clip_fraction)
    clipped    clip_eps (0.2), clip_eps_high (0.0), loss_agg ('token_mean'),
               max_new_tokens (None = T)
    dual_clip  clip_eps (0.2), dual_clip_c (3.0), clip_eps_high (0.0),
               loss_agg ('token_mean'), max_new_tokens (None = T)
    gspo       clip_eps (0.2), clip_eps_high (0.0); GSPO: sequence-level ratio
               ``exp(mean_t(logp - old_logp))`` clipped per sequence, loss averaged per
               sequence then over sequences (always seq_mean_token_mean; the paper's
               clip ranges are ~3e-4 / 4e-4)
  clip_eps_high: DAPO clip-higher, the ratio is clipped to ``[1-clip_eps, 1+clip_eps_high]``;
    0 (or None) means ``clip_eps`` (symmetric, the old behaviour).
  loss_agg (`losses.aggregate`, verl's names): 'token_mean' (mean over the batch's valid
    tokens; PPO / DAPO), 'seq_mean_token_mean' (per row, then over rows; original GRPO),
    'seq_mean_token_sum_norm' (row sum / max_new_tokens, then over rows; Dr. GRPO). The
    row means skip rows without valid tokens. For clip_eps_high, loss_agg, max_new_tokens
    and dual_clip_c a value of None also means the default.

value_loss -- ``fn(values, old_values, returns, mask, *, config) -> (loss, metrics)``
    clipped    value_clip_eps (falls back to clip_eps, 0.2)
    plain      (none)

kl -- ``fn(logp, logp_ref) -> kl_BxT``: k1, k2, k3 (Schulman's estimators).

Filters (not registered; `filters`): ``groups_with_signal(scores_B, group_size, atol=1e-6)
-> keep_B`` is DAPO dynamic sampling, a float 0/1 mask that is 0 on rows whose group has
all-equal scores (no GRPO signal); multiply the response mask by it.

The plain functions (`advantages.gae`, `losses.clipped_policy_loss`, ...) keep
explicit arguments; the registered names are thin adapters over them. KL
controllers (`kl.FixedKLController`, `kl.AdaptiveKLController`) are frozen
dataclasses with pure ``init() -> state`` / ``update(state, kl, n_steps) -> state``.
"""

import importlib

# Submodules load on first use (PEP 562), so `import girl_jax.rl.registry` stays a leaf that
# pulls in no estimator; `girl_jax.rl.advantages` and `from girl_jax.rl import kl` work as before.
__all__ = ["advantages", "ensemble", "filters", "kl", "losses", "masked", "registry", "shaping"]


def __getattr__(name: str):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
