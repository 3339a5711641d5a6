"""PPO's pure pieces: the rollout, the clipped loss, the update and one iteration.

Everything here is a pure function of arrays and static config, jitted by the driver
(`driver.train_and_evaluate`; `girl sweep --vmap` too) with shardings and donated state:
`train_step(state, frozen, batch, rng)` samples JDs for a batch of CVs (KV-cache sampler),
scores them with the reward model, computes reference log-probs, critic values, per-token
rewards (-beta*KL + score) and advantages from the registry, then runs epochs x shuffled
minibatches of clipped updates as nested `lax.scan`s. Old log-probs, values and advantages are
frozen at rollout time (lm-human-preferences semantics). The state the step carries
(`PPOState`, `Frozen`, `Graphs`, the traced hyperparameters) is in `state`, the forward helpers
(response logits / values, explained variance) in `forward`, the reward model's per-sequence
scores in `girl_jax.stages.scoring`.

Shared base (`cfg.shared_base`, a LoRA actor): the actor's `TrainState` holds every Param, base
and adapters, but its optimizer state covers the adapters alone; the update differentiates the
adapters only and passes the base through unchanged, and the reference is the actor itself with
its adapters off (`reference_params`), so `Frozen.reference` is None: one copy of the decoder.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from girl_jax import sampling
from girl_jax.models import lora
from girl_jax.rl import advantages as adv_mod
from girl_jax.rl import ensemble as ens_mod
from girl_jax.rl import filters, logprobs, registry, shaping
from girl_jax.rl import kl as kl_mod
from girl_jax.rl import losses as loss_mod
from girl_jax.stages import common
from girl_jax.stages import reward as reward_mod
from girl_jax.stages.ppo.config import PPOConfig
from girl_jax.stages.ppo.forward import (
    explained_variance,
    policy_outputs,
    response_logits,
    response_values,
    reuses_rollout_forward,
    sequences,
    trainable_params,
)
from girl_jax.stages.ppo.rewards import device_weight
from girl_jax.stages.ppo.state import Frozen, Graphs, PPOState
from girl_jax.stages.scoring import sequence_scores


def hparams(cfg: PPOConfig, hyper: dict) -> dict:
    """What the registered RL functions read (`registry.hparam`): the static config's fields with
    the traced values of `hyper` in place of their constants."""
    return {**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, **hyper}


# ---------------------------------------------------------------- pure pieces


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


# Advantage estimators that read per-token rewards (KL included) rather than sequence scores.
TOKEN_REWARD_ADVANTAGES = ("reinforce_pp", "reinforce_pp_baseline")
# Advantage estimators that take span rewards as process-supervision steps (`steps=`).
STEP_ADVANTAGES = ("grpo_process",)


def rollout(state: PPOState, frozen: Frozen, batch, rng, *, graphs: Graphs, cfg: PPOConfig, scfg):
    """Sample, score and compute every quantity the update treats as constant (device terms)."""
    out = sample_responses(state.actor.params, batch, rng, graphs=graphs, scfg=scfg)
    data, stats = score_rollout(state, frozen, batch, out, None, graphs=graphs, cfg=cfg)
    return data, stats, out


def ppo_loss(
    actor_params, critic_params, mb, kl_coef, hyper, *, graphs: Graphs, cfg: PPOConfig, P: int
):
    logits, v = policy_outputs(
        actor_params, critic_params, mb["ids"], mb["mask"], P, graphs=graphs, cfg=cfg
    )
    return ppo_objective(logits, v, mb, kl_coef, hyper, cfg=cfg)


def ppo_objective(logits, v, mb, kl_coef, hyper, *, cfg: PPOConfig):
    """The loss on the actor's response logits and the critic's values (None without one)."""
    hp = hparams(cfg, hyper)
    logits = logits.astype(jnp.float32) / cfg.temperature
    # one pass over the vocabulary forward and one backward for both (girl_jax/rl/logprobs.py)
    logp, entropy_BxT = logprobs.logprobs_and_entropy(logits, mb["resp"])
    m = mb["resp_mask"]
    pg_loss, pm = registry.get("policy_loss", cfg.policy_loss)(
        logp, mb["logp_old"], mb["advantages"], m, config=hp
    )
    entropy = loss_mod.masked_mean(entropy_BxT, m)
    total = pg_loss - hp["ent_coef"] * entropy
    metrics = dict(policy_loss=pg_loss, entropy=entropy, **pm)
    if cfg.needs_critic:
        vf_loss, vm = registry.get("value_loss", cfg.value_loss)(
            v, mb["values_old"], mb["returns"], m, config=hp
        )
        total = total + hp["vf_coef"] * vf_loss
        metrics.update(value_loss=vf_loss, **{f"value_{k}": x for k, x in vm.items()})
    if not cfg.kl_in_reward:
        kl_term = loss_mod.masked_mean(
            registry.get("kl", cfg.kl_estimator)(logp, mb["logp_ref"]), m
        )
        total = total + kl_coef * kl_term
        metrics["kl_loss"] = kl_term
    metrics["total_loss"] = total
    return total, metrics


def ppo_update(
    state: PPOState, data, rng, *, graphs: Graphs, cfg: PPOConfig, actor_tx, critic_tx, first=None
):
    """Epochs x shuffled minibatches as nested scans; non-finite / off-ratio minibatches skip.

    Shared base: the scans carry the actor's adapters alone (its optimizer state is theirs), the
    loss reads the base from outside them, and the base leaves of the result are the input's.
    `first` = ((logits, values), pullback): the rollout's outputs on `data` (in its row order)
    and the vjp of `policy_outputs` at the state's trainable params (`reuses_rollout_forward`):
    the first epoch's one minibatch takes its gradient through them instead of a new forward."""
    B = data["ids"].shape[0]
    P = data["ids"].shape[1] - data["resp"].shape[1]
    mb_size = B // cfg.minibatches
    trainable, join = trainable_params(state.actor.params, cfg)
    actor0 = state.actor.replace(params=trainable)

    def loss_fn(actor_trainable, *args):
        return ppo_loss(join(actor_trainable), *args, graphs=graphs, cfg=cfg, P=P)

    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

    def apply(carry, metrics, g_actor, g_critic):
        actor, critic = carry
        ok = common.all_finite(metrics, g_actor, g_critic)
        if cfg.ratio_threshold:
            ok = ok & ~loss_mod.ratio_skip(metrics["ratio_mean"], cfg.ratio_threshold)
        new_actor = actor.apply_gradients(g_actor, actor_tx)
        actor = common.select_tree(ok, new_actor, actor)
        if cfg.needs_critic:
            new_critic = critic.apply_gradients(g_critic, critic_tx)
            critic = common.select_tree(ok, new_critic, critic)
        metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
        metrics["actor_grad_norm"] = optax.global_norm(g_actor)
        return (actor, critic), metrics

    def minibatch(carry, idx):
        actor, critic = carry
        mb = jax.tree.map(lambda x: x[idx], data)
        (_, metrics), (g_actor, g_critic) = grad_fn(
            actor.params, critic.params, mb, state.kl.kl_coef, state.hyper
        )
        return apply(carry, metrics, g_actor, g_critic)

    def epoch(carry, key):
        perm = jax.random.permutation(key, B).reshape(cfg.minibatches, mb_size)
        return jax.lax.scan(minibatch, carry, perm)

    keys = jax.random.split(rng, cfg.epochs)
    carry = (actor0, state.critic)
    if first is not None:  # epoch 1 = one minibatch of every row: the rollout's forward
        outputs, pullback = first
        (_, m1), g_outputs = jax.value_and_grad(ppo_objective, argnums=(0, 1), has_aux=True)(
            *outputs, data, state.kl.kl_coef, state.hyper, cfg=cfg
        )
        carry, m1 = apply(carry, m1, *pullback(g_outputs))
        keys = keys[1:]
    (actor, critic), metrics = jax.lax.scan(epoch, carry, keys)
    if first is not None:
        metrics = jax.tree.map(lambda a, b: jnp.concatenate([a[None, None], b]), m1, metrics)
    actor = actor.replace(params=join(actor.params))
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["skipped"] = metrics["skipped"] * cfg.epochs * cfg.minibatches  # a count
    return state.replace(actor=actor, critic=critic), metrics


def update_step(
    state: PPOState,
    frozen: Frozen,
    batch,
    out,
    host_score,
    rng,
    *,
    graphs: Graphs,
    cfg: PPOConfig,
    actor_tx,
    critic_tx,
    controller,
):
    """Score a sampled batch, update actor and critic, step the KL controller (pure).

    `rng` is the iteration's key (the one `train_step` takes); the update draws from its second
    half, so `sample_step` then `update_step` equals the fused `train_step` given the same key.
    """
    _, k_update = jax.random.split(rng)
    first = outputs = None
    if reuses_rollout_forward(cfg):  # one forward for the old log-probs and epoch 1's gradient
        ids, mask, P = sequences(batch, out)
        trainable, join = trainable_params(state.actor.params, cfg)
        outputs, pullback = jax.vjp(
            lambda a, c: policy_outputs(join(a), c, ids, mask, P, graphs=graphs, cfg=cfg),
            trainable,
            state.critic.params,
        )
        first = (outputs, pullback)
    data, stats = score_rollout(
        state, frozen, batch, out, host_score, graphs=graphs, cfg=cfg, outputs=outputs
    )
    new_state, metrics = ppo_update(
        state,
        data,
        k_update,
        graphs=graphs,
        cfg=cfg,
        actor_tx=actor_tx,
        critic_tx=critic_tx,
        first=first,
    )
    finite = stats["rewards_finite"] > 0.5
    new_state = common.select_tree(finite, new_state, state)
    kl_state = controller.update(state.kl, stats["kl"], jnp.asarray(cfg.batch_size, jnp.float32))
    new_state = new_state.replace(kl=kl_state, iteration=state.iteration + 1)
    metrics = {**stats, **metrics, "finite": finite.astype(jnp.float32)}
    return new_state, metrics


def sample_step(state: PPOState, batch, rng, *, graphs: Graphs, scfg):
    """The rollout half of a split iteration: the sampler's output for the iteration's key."""
    k_sample, _ = jax.random.split(rng)
    return sample_responses(state.actor.params, batch, k_sample, graphs=graphs, scfg=scfg)


def train_step(
    state: PPOState,
    frozen: Frozen,
    batch,
    rng,
    *,
    graphs: Graphs,
    cfg: PPOConfig,
    scfg,
    actor_tx,
    critic_tx,
    controller,
):
    """One PPO iteration with on-device rewards: rollout + update + KL controller, one program."""
    out = sample_step(state, batch, rng, graphs=graphs, scfg=scfg)
    new_state, metrics = update_step(
        state,
        frozen,
        batch,
        out,
        None,
        rng,
        graphs=graphs,
        cfg=cfg,
        actor_tx=actor_tx,
        critic_tx=critic_tx,
        controller=controller,
    )
    return new_state, metrics, (out.tokens, out.mask)
