"""PPO's state builder: every role, abstract (`girl plan`) or real (the driver), one code path.

`build_roles(cfg, config, mesh, rules, vocab_size=..., abstract=...)` (called by
`stages.ppo.build_state`, which reads `cfg` from the config) gives the actor (a Decoder,
from the final SFT model), the critic (`ppo.critic`: a ScoreModel from the reward model's
trunk, or a zero-initialised ScalarHead on the policy trunk), the KL controller state, the
traced hyperparameters and the frozen roles: the reference (the SFT decoder), the reward model
(the reward stage's own `build_state`, so its configured head) and, for
`ppo.reward=ensemble`, the stacked reward heads. abstract: ShapeDtypeStructs carrying their
shardings, nothing read or allocated; else the real arrays (`workdir` holds the finished SFT
and reward stages).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from girl_jax.models.decoder import Decoder
from girl_jax.models.heads import ScalarHead, ScoreModel, transplant_trunk
from girl_jax.parallel import state as state_mod
from girl_jax.parallel.rules import replicated
from girl_jax.rl import kl as kl_mod
from girl_jax.stages import common, reward_ensemble, reward_step, sft
from girl_jax.stages.ppo_step import Frozen, Graphs, PPOState, init_hyper, scaled_optimizer


class PPOBuilt(NamedTuple):
    """Everything PPO holds. `state` / `frozen`: abstract or real; `*shardings`: their trees."""

    cfg: Any  # stages.ppo.PPOConfig
    graphs: Graphs
    state: PPOState
    shardings: PPOState
    frozen: Frozen
    frozen_shardings: Frozen
    actor_tx: optax.GradientTransformation
    critic_tx: optax.GradientTransformation
    controller: Any  # rl.kl controller


def optimizers(cfg) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
    """(actor_tx, critic_tx): learning rate 1, scaled by a rate held in the optimizer state."""
    updates = cfg.iterations * cfg.epochs * cfg.minibatches

    def make(lr):
        base = common.make_optimizer(1.0, updates, grad_clip=cfg.grad_clip, cosine=False)
        return scaled_optimizer(base, lr)

    return make(cfg.learning_rate), make(cfg.critic_learning_rate)


def actor_model_fn(config, vocab_size: int):
    mcfg = common.decoder_config(config, vocab_size)
    return lambda rngs: Decoder(mcfg, rngs=rngs)


def critic_model_fn(config, vocab_size: int, critic: str):
    """(model_fn, init seed) of the critic kind `ppo.critic` names."""
    mcfg = common.decoder_config(config, vocab_size)
    if critic == "value_head":  # a zero-initialised value head on the policy's trunk
        return (lambda rngs: ScalarHead(mcfg.d_model, rngs=rngs)), 0
    return (lambda rngs: ScoreModel(mcfg, rngs=rngs)), config.seed


def _abstract_tree(tree, sharding):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def _shardings(tree):
    return jax.tree.map(lambda x: x.sharding, tree)


def _frozen(config, mesh, rules, cfg, *, vocab_size, abstract, workdir):
    """(reward graphdef, Frozen): the reference, the reward model, the ensemble's heads."""
    wants_ensemble = any(t.kind == "ensemble" for t in cfg.reward_terms)
    if not abstract:
        _, reference = sft.load_final_params(workdir, config, vocab_size)
        rm_graph, rm_params = reward_step.load_final_params(workdir, config, vocab_size)
        ensemble = None
        if wants_ensemble:
            _, _, ensemble = reward_ensemble.load_final_ensemble(workdir, config, vocab_size)
        return rm_graph, Frozen(reference=reference, reward=rm_params, ensemble=ensemble)
    built = dict(vocab_size=vocab_size, abstract=True)
    reference = sft.build_state(config, mesh, rules, **built).state.params
    rm = reward_step.build_state(config, mesh, rules, **built)
    ensemble = None
    if wants_ensemble:
        size = int(config.reward.get("ensemble_size", 0) or 0)
        ensemble = reward_ensemble._abstract_heads(config, vocab_size, size, replicated(mesh))
    return rm.graphdef, Frozen(reference=reference, reward=rm.state.params, ensemble=ensemble)


def build_roles(
    cfg, config, mesh, rules, *, vocab_size: int, abstract: bool, workdir: str | None = None
) -> PPOBuilt:
    """PPO's graphs, state, frozen roles, optimizers and shardings (module docstring)."""
    if not abstract and workdir is None:
        raise ValueError("build_roles(abstract=False) reads the SFT and reward stages: workdir")
    actor_tx, critic_tx = optimizers(cfg)
    critic_fn, critic_seed = critic_model_fn(config, vocab_size, cfg.critic)
    rm_graph, frozen = _frozen(
        config, mesh, rules, cfg, vocab_size=vocab_size, abstract=abstract, workdir=workdir
    )
    actor_graph, actor, actor_sh, _ = state_mod.build_train_state(
        actor_model_fn(config, vocab_size),
        actor_tx,
        mesh,
        rules,
        abstract=abstract,
        seed=config.seed,
    )
    critic_graph, critic, critic_sh, _ = state_mod.build_train_state(
        critic_fn, critic_tx, mesh, rules, abstract=abstract, seed=critic_seed
    )
    controller = kl_mod.make_kl_controller(
        cfg.kl_controller, cfg.kl_coef, cfg.target_kl, cfg.kl_horizon
    )
    rep = replicated(mesh)
    if abstract:
        kl = _abstract_tree(jax.eval_shape(controller.init), rep)
        hyper = _abstract_tree(jax.eval_shape(lambda: init_hyper(cfg)), rep)
        iteration = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    else:
        # The actor starts as the SFT model; fresh buffers: the reference is not donated.
        actor = actor.replace(params=common.fresh_copy(frozen.reference, actor_sh.params))
        if cfg.critic != "value_head":
            # The critic starts from the reward model's trunk (and its head when it is the same
            # per-token linear head; a pooled reward head does not give per-token values).
            if isinstance(nnx.merge(rm_graph, frozen.reward), ScoreModel):
                critic_params = frozen.reward
            else:
                critic_params = transplant_trunk(frozen.reward, critic.params)
            critic = critic.replace(params=common.fresh_copy(critic_params, critic_sh.params))
        kl, hyper, iteration = controller.init(), init_hyper(cfg), jnp.zeros((), jnp.int32)
    state = PPOState(actor=actor, critic=critic, kl=kl, iteration=iteration, hyper=hyper)
    shardings = PPOState(
        actor=actor_sh,
        critic=critic_sh,
        kl=jax.tree.map(lambda _: rep, kl),
        iteration=rep,
        hyper=jax.tree.map(lambda _: rep, hyper),
    )
    if not abstract:
        state = jax.device_put(state, shardings)
    return PPOBuilt(
        cfg=cfg,
        graphs=Graphs(actor=actor_graph, critic=critic_graph, reward=rm_graph),
        state=state,
        shardings=shardings,
        frozen=frozen,
        frozen_shardings=_shardings(frozen),
        actor_tx=actor_tx,
        critic_tx=critic_tx,
        controller=controller,
    )
