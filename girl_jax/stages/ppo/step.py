"""One PPO iteration, pure: the rollout (`rollout`), the update (`update`) and the KL controller.

Everything here is a pure function of arrays and static config, jitted by the driver
(`driver.train_and_evaluate`; `girl sweep --vmap` too) with shardings and donated state:
`train_step(state, frozen, batch, rng)` samples JDs for a batch of CVs (KV-cache sampler),
scores them with the reward model, computes reference log-probs, critic values, per-token
rewards (-beta*KL + score) and advantages from the registry (`rollout.score_rollout`), then runs
epochs x shuffled minibatches of clipped updates as nested `lax.scan`s (`update.ppo_update`).
Old log-probs, values and advantages are frozen at rollout time (lm-human-preferences
semantics). With host-side reward terms the driver runs the two halves as two programs,
`sample_step` then `update_step`, which equal `train_step` given the same key. The state the
step carries (`PPOState`, `Frozen`, `Graphs`, the traced hyperparameters) is in `state`, the
forward helpers (response logits / values, explained variance) in `forward`, the reward model's
per-sequence scores in `girl_jax.stages.scoring`. The pieces stay importable from here.

Shared base (`cfg.shared_base`, a LoRA actor): the actor's `TrainState` holds every Param, base
and adapters, but its optimizer state covers the adapters alone; the update differentiates the
adapters only and passes the base through unchanged, and the reference is the actor itself with
its adapters off (`rollout.reference_params`), so `Frozen.reference` is None: one copy of the
decoder.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from girl_jax.stages import common
from girl_jax.stages.ppo.config import PPOConfig, hparams
from girl_jax.stages.ppo.forward import (
    explained_variance,
    policy_outputs,
    response_logits,
    response_values,
    reuses_rollout_forward,
    sequences,
    trainable_params,
)
from girl_jax.stages.ppo.rollout import (
    STEP_ADVANTAGES,
    TOKEN_REWARD_ADVANTAGES,
    device_scores,
    reference_params,
    rollout,
    sample_responses,
    score_rollout,
)
from girl_jax.stages.ppo.state import Frozen, Graphs, PPOState
from girl_jax.stages.ppo.update import ppo_loss, ppo_objective, ppo_update

__all__ = [  # the pieces stay importable from here, as before the split into modules
    "STEP_ADVANTAGES",
    "TOKEN_REWARD_ADVANTAGES",
    "device_scores",
    "explained_variance",
    "hparams",
    "policy_outputs",
    "ppo_loss",
    "ppo_objective",
    "ppo_update",
    "reference_params",
    "response_logits",
    "response_values",
    "reuses_rollout_forward",
    "rollout",
    "sample_responses",
    "sample_step",
    "score_rollout",
    "sequences",
    "train_step",
    "trainable_params",
    "update_step",
]


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
