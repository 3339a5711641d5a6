"""PPO's state: what the step carries and its builder, every role abstract (`girl plan`) or
real (the driver) by one code path.

`PPOState` (actor and critic `TrainState`s, KL controller state, iteration, the traced
hyperparameters `HYPER_KEYS`), `Frozen` (the roles that are not trained) and `Graphs` (their
graphdefs) are what `step.train_step` reads and returns; `scaled_optimizer` holds a learning
rate in the optimizer state, so it is traced too (`TRACED_KEYS`: every traced key).

`build_roles(cfg, config, mesh, rules, vocab_size=..., abstract=...)` (called by
`driver.build_state`, which reads `cfg` from the config) gives the actor (a Decoder,
from the final SFT model), the critic (`ppo.critic`: a ScoreModel from the reward model's
trunk, or a zero-initialised ScalarHead on the policy trunk), the KL controller state, the
traced hyperparameters and the frozen roles: the reference (the SFT decoder), the reward model
(the reward stage's own `build_state`, so its configured head) and, for
`ppo.reward=ensemble`, the stacked reward heads. abstract: ShapeDtypeStructs carrying their
shardings, nothing read or allocated; else the real arrays (`workdir` holds the finished SFT
and reward stages).

Shared base (`ppo.shared_base`, on by default when `model.lora_rank > 0`): the actor's
optimizer state covers its LoRA adapters alone (AdamW moments for them, none for the base), and
there is no reference copy (`Frozen.reference` is None): the step's reference is the actor with
its adapters off (`step.reference_params`). The actor starts as the SFT model with the SFT
stage's adapters folded into the kernels (`lora.fold_adapters`) and fresh adapters (B = 0), so
actor == reference until the first update.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx

from girl_jax.errors import ConfigError
from girl_jax.models import lora
from girl_jax.models.decoder import Decoder
from girl_jax.models.heads import ScalarHead, ScoreModel, transplant_trunk
from girl_jax.parallel import state as state_mod
from girl_jax.parallel.rules import replicated
from girl_jax.rl import kl as kl_mod
from girl_jax.stages import common, sft
from girl_jax.stages import reward as reward_mod
from girl_jax.stages.ppo.config import PPOConfig


@flax.struct.dataclass
class PPOState:
    actor: Any  # parallel.state.TrainState
    critic: Any  # parallel.state.TrainState
    kl: kl_mod.KLControllerState
    iteration: jax.Array
    # The continuous hyperparameters the losses and estimators read (HYPER_KEYS), as float32
    # scalars: traced, not compiled in, so runs that differ only in them share one program and
    # `girl sweep --vmap` stacks them on a cell axis. Learning rates live in the optimizer
    # states (`scaled_optimizer`), the KL coefficient in `kl`.
    hyper: dict = flax.struct.field(default_factory=dict)


# config.ppo keys that enter the step as traced arrays (PPOState.hyper).
HYPER_KEYS = (
    "clip_eps",
    "clip_eps_high",
    "value_clip_eps",
    "dual_clip_c",
    "vf_coef",
    "ent_coef",
    "gamma",
    "lam",
)
# Every continuous key that is traced, wherever it lives: cells differing only in these (and
# the seed) run one compiled program.
TRACED_KEYS = (*HYPER_KEYS, "learning_rate", "critic_learning_rate", "kl_coef")


def init_hyper(cfg: PPOConfig) -> dict:
    return {k: jnp.asarray(getattr(cfg, k), jnp.float32) for k in HYPER_KEYS}


def scaled_optimizer(tx: optax.GradientTransformation, learning_rate: float):
    """`tx` built with learning rate 1, then scaled by a learning rate held in the optimizer
    state (optax.inject_hyperparams): the same updates as `tx` built with `learning_rate`
    (AdamW's step, weight decay included, is linear in it), but the rate is a traced array."""
    return optax.chain(tx, optax.inject_hyperparams(optax.scale)(step_size=learning_rate))


@flax.struct.dataclass
class Frozen:
    reference: Any  # nnx.State of the SFT decoder; None: the actor's base (shared base)
    reward: Any  # nnx.State of the reward model
    ensemble: Any = None  # reward heads stacked on a leading K axis (config.ppo.reward=ensemble)


@dataclasses.dataclass(frozen=True)
class Graphs:
    actor: Any
    critic: Any
    reward: Any


# ---------------------------------------------------------------- the builder


class PPOBuilt(NamedTuple):
    """Everything PPO holds. `state` / `frozen`: abstract or real; `*shardings`: their trees."""

    cfg: Any  # config.PPOConfig, `shared_base` resolved to a bool
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


def shared_base(cfg, config, vocab_size: int) -> bool:
    """Whether PPO trains the actor's LoRA adapters alone on a base it shares with the reference:
    `ppo.shared_base`, or (None) whether the actor has adapters (`model.lora_rank > 0`)."""
    has_lora = common.decoder_config(config, vocab_size).lora_rank > 0
    if cfg.shared_base is None:
        return has_lora
    if cfg.shared_base and not has_lora:
        raise ConfigError(
            "config.ppo.shared_base=True needs LoRA adapters: set model.lora_rank > 0"
        )
    return bool(cfg.shared_base)


def _frozen(config, mesh, rules, cfg, *, vocab_size, abstract, workdir):
    """(reward graphdef, Frozen, SFT params): the reference (None with a shared base), the reward
    model, the ensemble's heads; the final SFT params the actor starts from (real builds)."""
    wants_ensemble = any(t.kind == "ensemble" for t in cfg.reward_terms)
    if not abstract:
        _, sft_params = sft.load_final_params(workdir, config, vocab_size)
        rm_graph, rm_params = reward_mod.load_final_params(workdir, config, vocab_size)
        ensemble = None
        if wants_ensemble:
            _, _, ensemble = reward_mod.load_final_ensemble(workdir, config, vocab_size)
        reference = None if cfg.shared_base else sft_params
        frozen = Frozen(reference=reference, reward=rm_params, ensemble=ensemble)
        return rm_graph, frozen, sft_params
    built = dict(vocab_size=vocab_size, abstract=True)
    reference = None
    if not cfg.shared_base:
        reference = sft.build_state(config, mesh, rules, **built).state.params
    rm = reward_mod.build_state(config, mesh, rules, **built)
    ensemble = None
    if wants_ensemble:
        size = int(config.reward.get("ensemble_size", 0) or 0)
        ensemble = reward_mod._abstract_heads(config, vocab_size, size, replicated(mesh))
    return rm.graphdef, Frozen(reference=reference, reward=rm.state.params, ensemble=ensemble), None


def _abstract_opt_state(tx, params, mesh):
    """(abstract optimizer state for `params`, its shardings: per-param leaves follow them)."""
    opt = jax.eval_shape(tx.init, params)
    shardings = state_mod.opt_state_shardings(tx, opt, _shardings(params), mesh)
    abstract = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), opt, shardings
    )
    return abstract, shardings


def _actor_state(model_fn, tx, mesh, rules, *, abstract: bool, seed: int, adapters_only: bool):
    """(graphdef, TrainState, shardings) of the actor. adapters_only: `params` still holds every
    Param (sampling, checkpoints and the reference read them), `opt_state` is `tx.init` of the
    LoRA adapters alone, sharded like them."""
    if not adapters_only:
        graph, actor, actor_sh, _ = state_mod.build_train_state(
            model_fn, tx, mesh, rules, abstract=abstract, seed=seed
        )
        return graph, actor, actor_sh
    graph, actor, actor_sh, _ = state_mod.build_train_state(
        model_fn, optax.identity(), mesh, rules, abstract=abstract, seed=seed
    )
    adapters, _ = lora.split_adapters(actor.params)
    opt, opt_sh = _abstract_opt_state(tx, adapters, mesh)
    if not abstract:
        opt = jax.jit(tx.init, out_shardings=opt_sh)(adapters)
    return graph, actor.replace(opt_state=opt), actor_sh.replace(opt_state=opt_sh)


def _actor_start(sft_params, actor_params, shardings, *, shared: bool, lora_scale: float):
    """The actor's starting params, new buffers (the state is donated; the reference is not):
    the SFT model's; shared base: its base with the SFT adapters folded in, the actor's fresh
    adapters (B = 0) on top."""
    if not shared:
        return common.fresh_copy(sft_params, shardings)

    def start(sft_p, actor_p):
        _, base = lora.split_adapters(lora.fold_adapters(sft_p, lora_scale))
        adapters, _ = lora.split_adapters(actor_p)
        return jax.tree.map(jnp.copy, lora.join_adapters(base, adapters))

    return jax.jit(start, out_shardings=shardings)(sft_params, actor_params)


def build_roles(
    cfg, config, mesh, rules, *, vocab_size: int, abstract: bool, workdir: str | None = None
) -> PPOBuilt:
    """PPO's graphs, state, frozen roles, optimizers and shardings (module docstring)."""
    if not abstract and workdir is None:
        raise ValueError("build_roles(abstract=False) reads the SFT and reward stages: workdir")
    cfg = dataclasses.replace(cfg, shared_base=shared_base(cfg, config, vocab_size))
    actor_tx, critic_tx = optimizers(cfg)
    critic_fn, critic_seed = critic_model_fn(config, vocab_size, cfg.critic)
    rm_graph, frozen, sft_params = _frozen(
        config, mesh, rules, cfg, vocab_size=vocab_size, abstract=abstract, workdir=workdir
    )
    actor_graph, actor, actor_sh = _actor_state(
        actor_model_fn(config, vocab_size),
        actor_tx,
        mesh,
        rules,
        abstract=abstract,
        seed=config.seed,
        adapters_only=cfg.shared_base,
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
        # The actor starts as the SFT model (with a shared base: its adapters folded in).
        mcfg = common.decoder_config(config, vocab_size)
        scale = mcfg.lora_alpha / mcfg.lora_rank if mcfg.lora_rank else 0.0
        start = _actor_start(
            sft_params, actor.params, actor_sh.params, shared=cfg.shared_base, lora_scale=scale
        )
        actor = actor.replace(params=start)
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
