"""Stage 3, PPO against the frozen reward model with a KL penalty to the frozen SFT reference.

This module is the driver: `PPOConfig`, `build_state` (actor from SFT, critic and frozen reward
model from the RM, reference = SFT, optimizers, shardings; abstract for `girl plan`, the roles in
`ppo_state`), `build` (its real state), and `train_and_evaluate` (restore or init,
one jitted `ppo_step.train_step` per iteration, evaluate with the market oracle, checkpoint).
The pure pieces — rollout, clipped loss, update — are in `girl_jax.stages.ppo_step`.
Reads WORKDIR/{sft,reward}, writes WORKDIR/ppo/.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import numpy as np
import optax

from girl_jax import checkpoint as ckpt_mod
from girl_jax import metrics as metrics_mod
from girl_jax import preemption, report, sampling, wandb_writer
from girl_jax.data import batches, pipeline, prepare
from girl_jax.errors import ConfigError
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.rl import registry
from girl_jax.stages import common, ppo_eval, ppo_rewards, ppo_state
from girl_jax.stages.ppo_step import (
    reference_params,
    sample_step,
    sequence_scores,
    train_step,
    update_step,
)

# `ppo.algorithm` presets, the keys each sets over the config's. bon_distill: best-of-n
# distillation (RAFT / ReST): each group's best sample is fitted by plain NLL, the rest ignored.
ALGORITHMS = {
    "ppo": {},
    "bon_distill": dict(advantage="bon", policy_loss="nll", whiten_advantages=False),
}


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    iterations: int
    batch_size: int
    group_size: int
    epochs: int
    minibatches: int
    learning_rate: float
    critic_learning_rate: float
    grad_clip: float
    advantage: str
    policy_loss: str
    value_loss: str
    kl_estimator: str
    kl_in_reward: bool
    kl_controller: str
    kl_coef: float
    target_kl: float
    kl_horizon: float
    gamma: float
    lam: float
    clip_eps: float
    value_clip_eps: float
    dual_clip_c: float
    vf_coef: float
    ent_coef: float
    whiten_advantages: bool
    whiten_scores: bool
    score_clip: float
    missing_eos_penalty: float
    ratio_threshold: float
    critic: str
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    eval_every: int
    num_eval_prompts: int
    checkpoint_every: int
    keep: int
    on_nonfinite: str
    # Optional keys (configs written before they existed get these defaults).
    reward: str = "model"  # reward terms, summed: girl_jax/stages/ppo_rewards.py
    ensemble_agg: str = "mean"  # mean | min | mean_minus_std (config.ppo.reward=ensemble)
    ensemble_lambda: float = 1.0  # the std weight of mean_minus_std
    clip_eps_high: float = 0.0  # > 0: DAPO clip-higher, ratio clipped to [1-eps, 1+eps_high]
    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    baseline: str = "none"  # reinforce: none | mean | value
    grpo_eps: float = 1e-4
    scale_by_std: bool = True  # grpo: divide by the group's std (False: Dr. GRPO)
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal
    algorithm: str = "ppo"  # ppo | bon_distill: sets the keys ALGORITHMS names
    # LoRA actor: train the adapters alone on the frozen base, the reference = the actor with
    # its adapters off (no second decoder). None: on when model.lora_rank > 0 (`ppo_state`).
    shared_base: bool | None = None

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            names = ", ".join(ALGORITHMS)
            raise ConfigError(f"config.ppo.algorithm must be one of {names}: {self.algorithm!r}")
        for kind, name in (
            ("advantage", self.advantage),
            ("policy_loss", self.policy_loss),
            ("value_loss", self.value_loss),
            ("kl", self.kl_estimator),
        ):
            try:
                registry.get(kind, name)
            except ConfigError as exc:
                key = "kl_estimator" if kind == "kl" else kind
                raise ConfigError(f"config.ppo.{key}: {exc}") from None
        if self.batch_size % (self.minibatches * self.group_size):
            raise ConfigError("config.ppo.batch_size must be divisible by minibatches*group_size")
        if self.advantage in ("grpo", "rloo", "dr_grpo", "bon", "grpo_process") and (
            self.group_size < 2
        ):
            raise ConfigError(
                f"config.ppo.advantage={self.advantage} needs config.ppo.group_size>1"
            )
        if self.critic not in ("separate", "value_head"):
            raise ConfigError(
                "config.ppo.critic must be separate (a critic initialised from the RM) or "
                "value_head (a value head on the policy trunk)"
            )

        ppo_rewards.parse(self.reward)  # ConfigError naming the bad term
        if self.ensemble_agg not in ("mean", "min", "mean_minus_std"):
            raise ConfigError("config.ppo.ensemble_agg must be mean, min or mean_minus_std")
        if self.loss_agg not in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
            raise ConfigError(
                "config.ppo.loss_agg must be token_mean, seq_mean_token_mean or "
                "seq_mean_token_sum_norm"
            )
        if self.baseline not in ("none", "mean", "value"):
            raise ConfigError("config.ppo.baseline must be none, mean or value")
        if self.dynamic_sampling and self.group_size < 2:
            raise ConfigError("config.ppo.dynamic_sampling needs config.ppo.group_size>1")
        if self.clip_eps_high < 0:
            raise ConfigError("config.ppo.clip_eps_high must be >= 0 (0: = clip_eps)")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ConfigError("config.ppo.on_nonfinite must be stop or skip")
        if self.temperature <= 0:
            raise ConfigError("config.ppo.temperature must be > 0")
        if self.shared_base not in (None, True, False):
            raise ConfigError("config.ppo.shared_base must be True, False or None (auto)")

    @property
    def needs_critic(self) -> bool:
        return self.advantage == "gae" or (
            self.advantage == "reinforce" and self.baseline == "value"
        )

    @functools.cached_property
    def reward_terms(self):
        return ppo_rewards.parse(self.reward)

    @classmethod
    def from_config(cls, c) -> PPOConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(c.keys()) - names
        if unknown:
            raise ConfigError(f"unknown config key config.ppo.{sorted(unknown)[0]}")
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        missing = names - set(c.keys()) - optional
        if missing:
            raise ConfigError(f"missing config key config.ppo.{sorted(missing)[0]}")
        values = {k: c[k] for k in names if k in c}
        values.update(ALGORITHMS.get(values.get("algorithm", "ppo"), {}))
        return cls(**values)


def sampling_config(cfg: PPOConfig, tokenizer, *, greedy: bool):
    return sampling.SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        greedy=greedy,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
    )


# ---------------------------------------------------------------- driver


def build_state(
    config, mesh, rules, *, vocab_size: int, abstract: bool, workdir: str | None = None
) -> ppo_state.PPOBuilt:
    """PPO's graphs, state and shardings, frozen roles (reference, reward model, ensemble) and
    their shardings, optimizers and KL controller (`ppo_state.build_roles`). abstract:
    ShapeDtypeStructs with shardings (`girl plan`); else the real state, the actor from the
    final SFT model and the critic from the reward model in `workdir`."""
    cfg = PPOConfig.from_config(config.ppo)
    return ppo_state.build_roles(
        cfg, config, mesh, rules, vocab_size=vocab_size, abstract=abstract, workdir=workdir
    )


def build(config, workdir: str, data, mesh, rules):
    """Everything PPO holds, real: (cfg, graphs, state, shardings, frozen, (actor_tx, critic_tx,
    controller)), from `build_state(abstract=False)`."""
    b = build_state(
        config, mesh, rules, vocab_size=data.tokenizer.vocab_size, abstract=False, workdir=workdir
    )
    return b.cfg, b.graphs, b.state, b.shardings, b.frozen, (b.actor_tx, b.critic_tx, b.controller)


def train_and_evaluate(config, workdir: str) -> dict:
    """Restore or init, train, evaluate, checkpoint; a finished stage returns its eval.json."""
    with common.activate_rules(config):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict:
    out_dir = common.stage_dir(workdir, "ppo")
    if ckpt_mod.is_final(out_dir):
        return json.load(open(os.path.join(out_dir, "eval.json")))
    cfg = PPOConfig.from_config(config.ppo)
    data = prepare.load(workdir)
    tok = data.tokenizer
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    mesh_mod.check_batch(cfg.batch_size, mesh, key="ppo.batch_size")
    cfg, graphs, state, shardings, frozen, (actor_tx, critic_tx, controller) = build(
        config, workdir, data, mesh, rules
    )
    scfg = sampling_config(cfg, tok, greedy=False)
    host = ppo_rewards.HostRewards(cfg.reward_terms, data.market)
    batch_sh = state_mod.batch_sharding(mesh)
    roles = dict(graphs=graphs, cfg=cfg, actor_tx=actor_tx, critic_tx=critic_tx)
    if host:  # rollout (jitted) -> host scoring -> update (jitted, donated)
        sample_fn = jax.jit(
            functools.partial(sample_step, graphs=graphs, scfg=scfg),
            in_shardings=(shardings, batch_sh, None),
        )
        update_fn = jax.jit(
            functools.partial(update_step, **roles, controller=controller),
            in_shardings=(shardings, None, batch_sh, None, None, None),
            out_shardings=(shardings, None),
            donate_argnums=(0,),
        )
    else:  # device rewards only: one fused program per iteration
        step_fn = jax.jit(
            functools.partial(train_step, **roles, scfg=scfg, controller=controller),
            in_shardings=(shardings, None, batch_sh, None),
            out_shardings=(shardings, None, None),
            donate_argnums=(0,),
        )
    score_fn = jax.jit(functools.partial(sequence_scores, graphs.reward))

    seekers = data.seekers("train")
    cv_by_id = dict(zip(seekers["seeker_id"].to_numpy().tolist(), seekers["cv"]))
    P = config.sft.max_prompt_len
    ids, mask = batches.encode_prompts(tok, list(seekers["cv"]), max_prompt_len=P)
    prompts = {"prompt_ids": ids, "prompt_mask": mask, "seeker_id": seekers["seeker_id"].to_numpy()}
    per_iter = cfg.batch_size // cfg.group_size
    it = pipeline.make_iterator(prompts, batch_size=per_iter, seed=config.seed + 2)

    evaluate = ppo_eval.make_evaluator(config, cfg, data, graphs, frozen, score_fn)

    ckpt = ckpt_mod.StageCheckpointer(out_dir, keep=cfg.keep)
    start = ckpt.latest_step() or 0
    start_eval_path = os.path.join(out_dir, "eval_start.json")
    if start:
        state, extra = ckpt.restore(start, ckpt_mod.abstract_like(state))
        it.set_state(extra["data_iterator"])
    if start and os.path.exists(start_eval_path):
        start_eval = json.load(open(start_eval_path))
    else:  # the start is the SFT model (the reference), whatever step we resume from
        start_eval, start_texts = evaluate(reference_params(state.actor.params, frozen))
        if jax.process_index() == 0:
            ckpt_mod.write_json_atomic(start_eval_path, {**start_eval, "samples": start_texts[:8]})
    writer = metrics_mod.MetricWriter(
        out_dir,
        resume_step=start,
        enabled=jax.process_index() == 0,
        mirror=wandb_writer.from_config(config, "ppo", workdir),
    )
    if not start:
        writer.write(0, start_eval)
    bar = metrics_mod.Progress(cfg.iterations, "ppo", start=start)
    last_eval, skipped = dict(start_eval), 0
    for it_idx in range(start, cfg.iterations):
        raw = next(it)
        sids = np.repeat(raw.pop("seeker_id"), cfg.group_size)
        raw = {k: np.repeat(v, cfg.group_size, axis=0) for k, v in raw.items()}
        batch = state_mod.put_batch(raw, mesh)
        rng = common.fold_rng(config.seed, "ppo", it_idx)
        done = it_idx + 1
        texts = None
        if host:
            out = sample_fn(state, batch, rng)
            tokens, resp_mask = out.tokens, out.mask
            texts = batches.decode_responses(tok, *jax.device_get((tokens, resp_mask)))
            host_score, host_means, spans = host.score_all(
                [cv_by_id[i] for i in sids.tolist()], texts, sids, done, cfg.on_nonfinite
            )
            if spans is not None and host_score is not None:  # span rewards: on their tokens
                tok_np, mask_np = jax.device_get((tokens, resp_mask))
                ends = ppo_rewards.token_char_ends(tok, tok_np, mask_np)
                host_score = (host_score, *ppo_rewards.place_spans(spans, ends, mask_np))
            if host_score is None:  # non-finite host reward, on_nonfinite=skip: no update
                skipped += 1
                m = {"host_reward_finite": 0.0}
            else:
                state, m = update_fn(state, frozen, batch, out, host_score, rng)
                m = {**common.host(m), **host_means}
        else:
            state, m, (tokens, resp_mask) = step_fn(state, frozen, batch, rng)
            m = common.host(m)
        skipped += common.check_finite(m, "ppo", done, cfg.on_nonfinite)
        if data.market is not None:
            if texts is None:
                texts = batches.decode_responses(tok, *jax.device_get((tokens, resp_mask)))
            m["rollout_true_match_rate"] = float(np.mean(data.market.true_match(sids, texts)))
        m["skipped_iterations"] = skipped
        if done % cfg.eval_every == 0 or done == cfg.iterations:
            last_eval, texts = evaluate(state.actor.params)
            m.update(last_eval)
            writer.text(done, "samples", texts[0] if texts else "")
        writer.write(done, m)
        bar.update(done, f"reward {m.get('reward', np.nan):.3f} kl {m.get('kl', np.nan):.2f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            ckpt.save(done, state, {"data_iterator": it.get_state()})
        preemption.check(
            "ppo", done, lambda d=done, s=state: ckpt.save(d, s, {"data_iterator": it.get_state()})
        )
    bar.close()
    if start >= cfg.iterations:  # killed after the last checkpoint, before final.json
        last_eval, _ = evaluate(state.actor.params)  # greedy: the same numbers as before
    result = ppo_eval.result(cfg, out_dir, start_eval, last_eval)
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(os.path.join(out_dir, "eval.json"), result)

        report.plot_ppo(out_dir)
    ckpt.mark_final(cfg.iterations)
    ckpt.close()
    writer.close()
    return result


def load_final_actor(workdir: str, config, data, mesh, rules):
    """(graphdef, params) of the final PPO actor. Builds the actor alone, abstractly (no critic,
    reward model or reference), and reads only its parameters from the checkpoint, so PPO
    states of other layouts (critic kinds, optimizers, earlier versions) load too."""
    model_fn = ppo_state.actor_model_fn(config, data.tokenizer.vocab_size)
    graph, abstract, _, _ = state_mod.build_train_state(
        model_fn, optax.identity(), mesh, rules, abstract=True
    )
    restored, _, _ = ckpt_mod.restore_final_state(
        os.path.join(workdir, "ppo"), "ppo", {"actor": {"params": abstract.params}}, partial=True
    )
    return graph, restored["actor"]["params"]
