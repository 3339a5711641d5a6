"""The real SFT, reward and PPO steps as ahead-of-time plans (`girl plan`).

Each builder returns a `parallel.plan.PlannedStep` over ShapeDtypeStructs only: the stage's own
pure `train_step`, its state from the stage's own `build_state(..., abstract=True)` (the builder
its driver trains with, so a plan compiles the state that trains), its batch as abstract arrays.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections

from girl_jax.errors import ConfigError
from girl_jax.parallel import plan as plan_mod
from girl_jax.parallel import plan_search, plan_targets
from girl_jax.parallel.rules import replicated
from girl_jax.parallel.state import batch_sharding
from girl_jax.stages import ppo, reward, sft


def _vocab(config) -> int:
    return int(config.model.vocab_size or config.tokenizer.vocab_size)


def _key(mesh):
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated(mesh))


def _tokens(shape, mesh, dtype=jnp.int32):
    return jax.ShapeDtypeStruct(shape, dtype, sharding=batch_sharding(mesh, len(shape)))


def build_sft(config, mesh, rules) -> plan_mod.PlannedStep:
    c = sft.SFTConfig.from_config(config.sft)
    graphdef, state, sh, tx = sft.build_state(
        config, mesh, rules, vocab_size=_vocab(config), abstract=True
    )
    B, L = c.batch_size * c.grad_accum, c.max_prompt_len + c.max_response_len
    batch = {k: _tokens((B, L), mesh) for k in ("input_ids", "attention_mask", "target_mask")}
    fn = functools.partial(
        sft.train_step,
        graphdef=graphdef,
        tx=tx,
        accum=c.grad_accum,
        response_len=c.max_response_len,
    )
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
    graphdef, state, sh, tx = reward.build_state(
        config, mesh, rules, vocab_size=_vocab(config), abstract=True
    )
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


def build_ppo(config, mesh, rules) -> plan_mod.PlannedStep:
    """A whole PPO iteration: sampling + RM + reference + critic + epochs x minibatches.

    The state and frozen roles are `ppo.build_state(abstract=True)`: the driver's builder, so
    the critic is the `ppo.critic` kind and the reward model the reward stage's own model with
    its configured head (`reward.head`), the reference the SFT decoder's parameters.
    """
    b = ppo.build_state(config, mesh, rules, vocab_size=_vocab(config), abstract=True)
    cfg = b.cfg
    rep = replicated(mesh)
    P = config.sft.max_prompt_len
    B = cfg.batch_size
    batch = {"prompt_ids": _tokens((B, P), mesh), "prompt_mask": _tokens((B, P), mesh)}
    scfg = ppo.sampling_config(cfg, _PlanTokenizer(), greedy=False)
    fn = functools.partial(
        ppo.train_step,
        graphs=b.graphs,
        cfg=cfg,
        scfg=scfg,
        actor_tx=b.actor_tx,
        critic_tx=b.critic_tx,
        controller=b.controller,
    )
    head = config.reward.get("head", "?")
    return plan_mod.PlannedStep(
        fn=fn,
        abstract_args=(b.state, b.frozen, batch, _key(mesh)),
        in_shardings=(b.shardings, b.frozen_shardings, batch_sharding(mesh), rep),
        out_shardings=(b.shardings, rep, rep),
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
