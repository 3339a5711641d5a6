"""PPO's rollout: sample JDs from the actor, score them, and freeze what the update reads.

`score_rollout` turns the sampler's output (and any host-side reward terms) into the update's
constants: old and reference log-probs, critic values, per-token rewards (-beta*KL + score,
shaped), advantages and returns from the registry (lm-human-preferences semantics: all frozen
at rollout time). `rollout` is sample + score in one call; `step.train_step` fuses them with
the update (`update.ppo_update`) into one program.
"""

from __future__ import annotations

import jax.numpy as jnp

from girl_jax import sampling
from girl_jax.models import lora
from girl_jax.rl import advantages as adv_mod
from girl_jax.rl import ensemble as ens_mod
from girl_jax.rl import filters, registry, shaping
from girl_jax.rl import kl as kl_mod
from girl_jax.rl import losses as loss_mod
from girl_jax.stages import common
from girl_jax.stages import reward as reward_mod
from girl_jax.stages.ppo.config import PPOConfig, hparams
from girl_jax.stages.ppo.forward import (
    explained_variance,
    policy_outputs,
    response_logits,
    response_values,
    sequences,
)
from girl_jax.stages.ppo.rewards import device_weight
from girl_jax.stages.ppo.state import Frozen, Graphs, PPOState
from girl_jax.stages.scoring import sequence_scores

# Advantage estimators that read per-token rewards (KL included) rather than sequence scores.
TOKEN_REWARD_ADVANTAGES = ("reinforce_pp", "reinforce_pp_baseline")
# Advantage estimators that take span rewards as process-supervision steps (`steps=`).
STEP_ADVANTAGES = ("grpo_process",)


def reference_params(actor_params, frozen: Frozen):
    """The reference policy's params, for the actor's graphdef: the frozen SFT decoder, or with a
    shared base (`frozen.reference` None) the actor's own params with every adapter off."""
    if frozen.reference is not None:
        return frozen.reference
    return lora.adapters_off(actor_params)


def sample_responses(actor_params, batch, rng, *, graphs: Graphs, scfg):
    """JDs sampled from the actor for a batch of CVs: `sampling.SampleOutput`."""
    step_fn, init_cache_fn = sampling.decoder_fns(graphs.actor)
    return sampling.sample(
        step_fn, init_cache_fn, actor_params, batch["prompt_ids"], batch["prompt_mask"], rng, scfg
    )


def device_scores(frozen: Frozen, ids, mask, resp_full, *, graphs: Graphs, cfg: PPOConfig):
    """The on-device reward terms per sequence: (weighted sum [B], {stat name: [B]})."""
    terms = cfg.reward_terms
    total = jnp.zeros(ids.shape[:1], jnp.float32)
    parts = {}
    w_model = device_weight(terms, "model")
    if w_model or not any(t.kind == "ensemble" for t in terms):
        # The RM is scored whenever it is the only device role: its score is the proxy reward
        # that the over-optimisation picture tracks, even in gold / python-reward runs.
        parts["proxy_reward"] = sequence_scores(graphs.reward, frozen.reward, ids, mask, resp_full)
        total = total + w_model * parts["proxy_reward"]
    if any(t.kind == "ensemble" for t in terms):
        members_KxB = reward_mod.ensemble_scores(
            graphs.reward, frozen.reward, frozen.ensemble, ids, mask, resp_full
        )
        agg = ens_mod.aggregate(members_KxB, cfg.ensemble_agg, lam=cfg.ensemble_lambda)
        parts["ensemble_reward"] = agg
        parts["ensemble_std"] = jnp.std(members_KxB, axis=0)
        parts.setdefault("proxy_reward", jnp.mean(members_KxB, axis=0))
        total = total + device_weight(terms, "ensemble") * agg
    return total, parts


def score_rollout(
    state: PPOState,
    frozen: Frozen,
    batch,
    out,
    host_score,
    *,
    graphs: Graphs,
    cfg: PPOConfig,
    outputs=None,
):
    """Score sampled responses and compute every quantity the update treats as constant.

    `out` is the sampler's output (tokens, mask, has_eos); `host_score` [B] is the weighted sum
    of the host-side reward terms (oracle, Python functions), or None when there are none, or
    `(score_B, steps_BxT, step_mask_BxT)` with span terms (`rewards.place_spans`): step
    rewards for `grpo_process`, per-token rewards for the estimators that read them (GAE,
    REINFORCE++), else summed into the sequence reward. `outputs`: the actor's response logits
    and the critic's raw values (or None) on these sequences, already computed
    (`policy_outputs`; `update_step` keeps their vjp for the first epoch), else computed here.
    """
    steps = None
    if isinstance(host_score, tuple):
        host_score, *steps = host_score
    prompt_mask = batch["prompt_mask"]
    ids, mask, P = sequences(batch, out)
    resp, resp_mask = out.tokens, out.mask.astype(jnp.float32)

    shared_pass = cfg.needs_critic and cfg.critic == "value_head"
    sampler_logprobs = cfg.old_logprobs == "sampler" and not shared_pass
    if outputs is None and not sampler_logprobs:  # value_head: one trunk pass, logits and values
        outputs = policy_outputs(
            state.actor.params, state.critic.params, ids, mask, P, graphs=graphs, cfg=cfg
        )
    if outputs is not None:
        logits, raw_values = outputs
        logp_old = common.token_logprobs(logits, resp, cfg.temperature)
    else:  # the sampler's own (float32, 0 after EOS): no actor forward
        logp_old = out.logprobs
        raw_values = None
        if cfg.needs_critic:
            raw_values = response_values(graphs.critic, state.critic.params, ids, mask, P)
    ref_params = reference_params(state.actor.params, frozen)
    ref_logits = response_logits(graphs.actor, ref_params, ids, mask, P)
    logp_ref = common.token_logprobs(ref_logits, resp, cfg.temperature)
    resp_full = jnp.concatenate([jnp.zeros_like(prompt_mask), out.mask.astype(mask.dtype)], 1)
    raw_score, parts = device_scores(frozen, ids, mask, resp_full, graphs=graphs, cfg=cfg)
    if host_score is not None:
        raw_score = raw_score + host_score.astype(jnp.float32)
    step_BxT = None
    if steps is not None:
        step_BxT = (steps[0] * steps[1]).astype(jnp.float32) * resp_mask
        parts["step_reward"] = step_BxT.sum(1)
        if cfg.advantage not in STEP_ADVANTAGES and not (
            cfg.needs_critic or cfg.advantage in TOKEN_REWARD_ADVANTAGES
        ):
            raw_score = raw_score + step_BxT.sum(1)  # sequence estimators: the span sum
    values = raw_values * resp_mask if cfg.needs_critic else jnp.zeros_like(resp_mask)

    score = shaping.apply_missing_eos_penalty(raw_score, out.has_eos, cfg.missing_eos_penalty)
    score = shaping.clip_scores(score, cfg.score_clip or None)
    if cfg.whiten_scores:
        score = shaping.whiten_scores(score)
    if cfg.dynamic_sampling:
        # DAPO: groups whose samples all scored the same carry no signal; drop them from the loss.

        keep_B = filters.groups_with_signal(score, cfg.group_size)
        resp_mask = resp_mask * keep_B[:, None]
    kl_coef = state.kl.kl_coef
    kl_tok = registry.get("kl", cfg.kl_estimator)(logp_old, logp_ref)
    kl_BxT = kl_tok * resp_mask
    kl_rewards = kl_mod.kl_penalty_rewards(
        logp_old, logp_ref, resp_mask, kl_coef if cfg.kl_in_reward else 0.0, cfg.kl_estimator
    )
    rewards = shaping.token_rewards(score, kl_rewards, resp_mask)
    extra = {}
    if step_BxT is not None and cfg.advantage in STEP_ADVANTAGES:
        extra["steps"] = (step_BxT, steps[1] * resp_mask)
    elif step_BxT is not None and (cfg.needs_critic or cfg.advantage in TOKEN_REWARD_ADVANTAGES):
        rewards = rewards + step_BxT  # each span's value on its token
    advantages, returns = registry.get("advantage", cfg.advantage)(
        rewards=rewards,
        values=values,
        mask=resp_mask,
        scores=None
        if cfg.needs_critic or cfg.advantage in TOKEN_REWARD_ADVANTAGES
        else score - (kl_BxT.sum(1) * kl_coef if cfg.kl_in_reward else 0.0),
        config=hparams(cfg, state.hyper),
        **extra,
    )
    if cfg.whiten_advantages:
        advantages = adv_mod.whiten(advantages, resp_mask)
    lengths = out.mask.astype(jnp.float32).sum(1)
    kl_seq = (kl_tok * out.mask).sum(1)  # every sampled row, dropped groups included
    stats = dict(
        reward=raw_score.mean(),
        score=score.mean(),
        kl=kl_seq.mean(),
        kl_coef=kl_coef,
        response_length=lengths.mean(),
        eos_rate=out.has_eos.astype(jnp.float32).mean(),
        returns_mean=loss_mod.masked_mean(returns, resp_mask),
        advantages_std=jnp.sqrt(loss_mod.masked_mean(advantages**2, resp_mask)),
        explained_variance=explained_variance(values, returns, resp_mask),
        rewards_finite=common.all_finite(rewards, advantages).astype(jnp.float32),
        **{k: v.mean() for k, v in parts.items()},
    )
    if cfg.dynamic_sampling:
        stats["groups_kept"] = keep_B.mean()
    stats.setdefault("proxy_reward", raw_score.mean())
    data = dict(
        ids=ids,
        mask=mask,
        resp=resp,
        resp_mask=resp_mask,
        logp_old=logp_old,
        logp_ref=logp_ref,
        values_old=values,
        advantages=advantages,
        returns=returns,
    )
    return data, stats


def rollout(state: PPOState, frozen: Frozen, batch, rng, *, graphs: Graphs, cfg: PPOConfig, scfg):
    """Sample, score and compute every quantity the update treats as constant (device terms)."""
    out = sample_responses(state.actor.params, batch, rng, graphs=graphs, scfg=scfg)
    data, stats = score_rollout(state, frozen, batch, out, None, graphs=graphs, cfg=cfg)
    return data, stats, out
