"""PPO's update: the clipped objective, and epochs x shuffled minibatches of it (pure).

`ppo_objective` is the loss on the actor's response logits and the critic's values (policy
loss, entropy bonus, value loss and the KL term, each from the registry); `ppo_loss` runs the
forward first; `ppo_update` scans epochs x minibatches over a scored rollout
(`rollout.score_rollout`) and skips non-finite or off-ratio minibatches.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from girl_jax.rl import logprobs, registry
from girl_jax.rl import losses as loss_mod
from girl_jax.stages import common
from girl_jax.stages.ppo.config import PPOConfig, hparams
from girl_jax.stages.ppo.forward import policy_outputs, trainable_params
from girl_jax.stages.ppo.state import Graphs, PPOState


def ppo_loss(
    actor_params, critic_params, mb, kl_coef, hyper, *, graphs: Graphs, cfg: PPOConfig, P: int
):
    """`ppo_objective` after the forward: the actor's response logits and the critic's values
    on the minibatch `mb` (prompt width `P`)."""
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
