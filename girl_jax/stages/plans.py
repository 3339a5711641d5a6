"""The real SFT, reward and PPO steps as ahead-of-time plans (`girl plan`).

Each builder returns a `parallel.plan.PlannedStep` over ShapeDtypeStructs only: the stage's own
pure `train_step`, its state built with `jax.eval_shape`, its batch as abstract arrays.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from girl_jax.errors import ConfigError
from girl_jax.models.decoder import Decoder
from girl_jax.models.heads import ScalarHead, ScoreModel
from girl_jax.parallel import plan as plan_mod
from girl_jax.parallel import plan_search, plan_targets
from girl_jax.parallel.rules import replicated
from girl_jax.parallel.state import abstract_train_state, batch_sharding
from girl_jax.rl import kl as kl_mod
from girl_jax.stages import common, ppo, ppo_step, reward, sft


def _vocab(config) -> int:
    return int(config.model.vocab_size or config.tokenizer.vocab_size)


def _key(mesh):
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated(mesh))


def _tokens(shape, mesh, dtype=jnp.int32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, len(shape)))


def _decoder_fn(config):
    mcfg = common.decoder_config(config, _vocab(config))
    return mcfg, (lambda rngs: Decoder(mcfg, rngs=rngs))


def build_sft(config, mesh, rules) -> plan_mod.PlannedStep:
    c = config.sft
    _, model_fn = _decoder_fn(config)
    tx = common.make_optimizer(
        c.learning_rate,
        c.steps,
        warmup_steps=c.warmup_steps,
        weight_decay=c.weight_decay,
        grad_clip=c.grad_clip,
    )
    graphdef, state, sh, _ = abstract_train_state(model_fn, tx, mesh, rules, rng=_key(mesh))
    B, L = c.batch_size * c.grad_accum, c.max_prompt_len + c.max_response_len
    batch = {k: _tokens((B, L), mesh) for k in ("input_ids", "attention_mask", "target_mask")}
    fn = functools.partial(sft.train_step, graphdef=graphdef, tx=tx, accum=c.grad_accum)
    rep = replicated(mesh)
    return plan_mod.PlannedStep(
        fn=fn,
        abstract_args=(state, batch, _key(mesh)),
        in_shardings=(sh, batch_sharding(mesh), rep),
        out_shardings=(sh, rep),
        note=f"SFT: batch {B} x {L}, accum {c.grad_accum}",
    )


def build_reward(config, mesh, rules) -> plan_mod.PlannedStep:
    cfg = reward.RewardConfig.from_config(config.reward)
    tx = reward.make_tx(cfg)
    _, model_fn = reward.build_model_fn(config, _vocab(config), config.seed)
    graphdef, state, sh, _ = abstract_train_state(model_fn, tx, mesh, rules, rng=_key(mesh))
    B, L = cfg.batch_size, config.sft.max_prompt_len + config.sft.max_response_len
    if cfg.objective == "pointwise":
        batch = {
            "input_ids": _tokens((B, L), mesh),
            "attention_mask": _tokens((B, L), mesh),
            "response_mask": _tokens((B, L), mesh),
            "label": _tokens((B,), mesh, jnp.float32),
        }
    else:
        batch = {
            f"{side}_{k}": _tokens((B, L), mesh)
            for side in ("chosen", "rejected")
            for k in ("ids", "mask", "response_mask")
        }
    fn = functools.partial(reward.train_step, graphdef=graphdef, tx=tx, cfg=cfg)
    rep = replicated(mesh)
    return plan_mod.PlannedStep(
        fn=fn,
        abstract_args=(state, batch, _key(mesh)),
        in_shardings=(sh, batch_sharding(mesh), rep),
        out_shardings=(sh, rep),
        note=f"reward ({cfg.objective}): batch {B} x {L}",
    )


class _PlanTokenizer:
    eos_id, pad_id = 2, 0


def _abstract_params(model_fn, mesh, rules):
    """(graphdef, params, param shardings) of a frozen role: no optimizer state."""
    graph, state, sh, _ = abstract_train_state(
        model_fn, optax.set_to_zero(), mesh, rules, rng=_key(mesh)
    )
    return graph, state.params, sh.params


def ppo_model_fns(config, vocab_size: int) -> dict:
    """`rngs -> module` of each PPO role, as `stages.ppo.build` constructs them.

    actor / reference: the Decoder; critic: a ScoreModel (`ppo.critic=separate`) or a
    ScalarHead on the policy trunk (`value_head`); reward: the reward stage's own builder
    (`reward.build_model_fn`), so the configured head (`reward.head`, e.g. attn_mlp) is the one
    planned.
    """
    mcfg = common.decoder_config(config, vocab_size)
    if config.ppo.critic == "value_head":
        critic_fn = lambda rngs: ScalarHead(mcfg.d_model, rngs=rngs)  # noqa: E731
    else:
        critic_fn = lambda rngs: ScoreModel(mcfg, rngs=rngs)  # noqa: E731
    _, reward_fn = reward.build_model_fn(config, vocab_size, config.seed)
    return dict(actor=lambda rngs: Decoder(mcfg, rngs=rngs), critic=critic_fn, reward=reward_fn)


def build_ppo(config, mesh, rules) -> plan_mod.PlannedStep:
    """A whole PPO iteration: sampling + RM + reference + critic + epochs x minibatches."""
    cfg = ppo.PPOConfig.from_config(config.ppo)
    fns = ppo_model_fns(config, _vocab(config))
    updates = cfg.iterations * cfg.epochs * cfg.minibatches

    def make_tx(lr):  # as stages.ppo.build makes them: the rate is traced, in the opt state
        return ppo_step.scaled_optimizer(
            common.make_optimizer(1.0, updates, grad_clip=cfg.grad_clip, cosine=False), lr
        )

    actor_tx, critic_tx = make_tx(cfg.learning_rate), make_tx(cfg.critic_learning_rate)
    key = _key(mesh)
    a_graph, actor, actor_sh, _ = abstract_train_state(fns["actor"], actor_tx, mesh, rules, rng=key)
    c_graph, critic, critic_sh, _ = abstract_train_state(
        fns["critic"], critic_tx, mesh, rules, rng=key
    )
    r_graph, rm_params, rm_sh = _abstract_params(fns["reward"], mesh, rules)
    controller = kl_mod.make_kl_controller(
        cfg.kl_controller, cfg.kl_coef, cfg.target_kl, cfg.kl_horizon
    )
    rep = replicated(mesh)
    kl_state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
        jax.eval_shape(controller.init),
    )
    it = jax.ShapeDtypeStruct((), jnp.int32, sharding=rep)
    hyper = jax.tree.map(  # the traced hyperparameters of PPOState.hyper
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep),
        jax.eval_shape(lambda: ppo_step.init_hyper(cfg)),
    )
    state = ppo_step.PPOState(actor=actor, critic=critic, kl=kl_state, iteration=it, hyper=hyper)
    state_sh = ppo_step.PPOState(
        actor=actor_sh,
        critic=critic_sh,
        kl=jax.tree.map(lambda _: rep, kl_state),
        iteration=rep,
        hyper=jax.tree.map(lambda _: rep, hyper),
    )
    ensemble = ensemble_sh = None
    if any(t.kind == "ensemble" for t in cfg.reward_terms):
        size = int(config.reward.get("ensemble_size", 0) or 0)
        ensemble = reward._abstract_heads(config, _vocab(config), size, sharding=rep)
        ensemble_sh = jax.tree.map(lambda _: rep, ensemble)
    # The reference is the SFT decoder (the actor's shape, params only); the reward model is
    # the reward stage's model with its configured head.
    frozen = ppo_step.Frozen(reference=actor.params, reward=rm_params, ensemble=ensemble)
    frozen_sh = ppo_step.Frozen(reference=actor_sh.params, reward=rm_sh, ensemble=ensemble_sh)
    graphs = ppo_step.Graphs(actor=a_graph, critic=c_graph, reward=r_graph)
    P = config.sft.max_prompt_len
    B = cfg.batch_size
    batch = {"prompt_ids": _tokens((B, P), mesh), "prompt_mask": _tokens((B, P), mesh)}
    scfg = ppo.sampling_config(cfg, _PlanTokenizer(), greedy=False)
    fn = functools.partial(
        ppo_step.train_step,
        graphs=graphs,
        cfg=cfg,
        scfg=scfg,
        actor_tx=actor_tx,
        critic_tx=critic_tx,
        controller=controller,
    )
    head = config.reward.get("head", "?")
    return plan_mod.PlannedStep(
        fn=fn,
        abstract_args=(state, frozen, batch, key),
        in_shardings=(state_sh, frozen_sh, batch_sharding(mesh), rep),
        out_shardings=(state_sh, rep, rep),
        note=f"PPO iteration: {B} prompts x {P} + {cfg.max_new_tokens} new tokens, "
        f"{cfg.epochs} epochs x {cfg.minibatches} minibatches; actor, critic ({cfg.critic}), "
        f"reference, reward model (head {head})",
    )


def stage_steps(names=("sft", "reward", "ppo")) -> dict[str, plan_mod.StepSpec]:
    builders = {
        "sft": (build_sft, "sft.batch_size"),
        "reward": (build_reward, "reward.batch_size"),
        "ppo": (build_ppo, "ppo.batch_size"),
    }
    unknown = [n for n in names if n not in builders]
    if unknown:
        raise ConfigError(f"--steps: unknown step {unknown[0]!r}; choose from {sorted(builders)}")
    return {n: plan_mod.StepSpec(build=builders[n][0], batch_key=builders[n][1]) for n in names}


def plan(config: ml_collections.ConfigDict, topology: str, names=("sft", "reward", "ppo")):
    """Rows of `girl plan`; `auto:GEN` searches the smallest slice of GEN that fits."""
    if plan_targets.parse_topology(topology).kind == "auto":
        return plan_search.smallest_slice(config, topology, stage_steps(names))
    return plan_mod.plan_config(config, topology, stage_steps(names))
