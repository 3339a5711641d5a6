"""Stage 3, PPO against the frozen reward model with a KL penalty to the frozen SFT reference.

This module is the driver: `build_state` (actor from SFT, critic and frozen reward model from
the RM, reference = SFT, optimizers, shardings; abstract for `girl plan`, the roles in
`state.build_roles`), `build` (its real state), `train_and_evaluate` (restore or init, one
jitted `step.train_step` per iteration, evaluate with the market oracle, checkpoint) and
`load_final_actor`. The settings are `config.PPOConfig`; the pure pieces — rollout, clipped
loss, update — are in `step`. Reads WORKDIR/{sft,reward}, writes WORKDIR/ppo/.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import numpy as np
import optax

from girl_jax import checkpoint as ckpt_mod
from girl_jax import metrics as metrics_mod
from girl_jax import preemption, report, sampling, wandb_writer
from girl_jax.data import batches, pipeline, prepare
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common
from girl_jax.stages.ppo import evaluation, rewards
from girl_jax.stages.ppo.config import PPOConfig
from girl_jax.stages.ppo.state import PPOBuilt, actor_model_fn, build_roles
from girl_jax.stages.ppo.step import reference_params, sample_step, train_step, update_step
from girl_jax.stages.reward.judge import judge_scorer, load_final_judge
from girl_jax.stages.scoring import sequence_scores


def sampling_config(cfg: PPOConfig, tokenizer, *, greedy: bool):
    return sampling.SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        greedy=greedy,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
        encoder_repetition_penalty=1.0 if greedy else float(cfg.rollout_copy_bias),
        rows_per_pass=cfg.rollout_rows_per_pass,
    )


def training_prompts(config, tokenizer, seekers) -> dict:
    """PPO's prompts {prompt_ids, prompt_mask [N, P'], seeker_id [N]} for the training seekers:
    left-padded, cut once to the width the longest CV needs (`batches.trim_prompts`), so every
    iteration has one shape (one compile). The driver and `girl sweep --vmap` read these."""
    ids, mask = batches.encode_prompts(
        tokenizer, list(seekers["cv"]), max_prompt_len=config.sft.max_prompt_len
    )
    ids, mask = batches.trim_prompts(ids, mask)
    return {"prompt_ids": ids, "prompt_mask": mask, "seeker_id": seekers["seeker_id"].to_numpy()}


def build_state(
    config, mesh, rules, *, vocab_size: int, abstract: bool, workdir: str | None = None
) -> PPOBuilt:
    """PPO's graphs, state and shardings, frozen roles (reference, reward model, ensemble) and
    their shardings, optimizers and KL controller (`state.build_roles`). abstract:
    ShapeDtypeStructs with shardings (`girl plan`); else the real state, the actor from the
    final SFT model and the critic from the reward model in `workdir`."""
    cfg = PPOConfig.from_config(config.ppo)
    return build_roles(
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
    host = rewards.HostRewards(cfg.reward_terms, data.market)
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
    prompts = training_prompts(config, tok, seekers)
    per_iter = cfg.batch_size // cfg.group_size
    it = pipeline.make_iterator(prompts, batch_size=per_iter, seed=config.seed + 2)

    judge_fn, keep = None, cfg.keep
    if cfg.select == "judge":  # every evaluated step is kept: the judge picks one at the end
        _, _, heads = load_final_judge(workdir, config, tok.vocab_size)
        judge_fn = jax.jit(judge_scorer(graphs.reward, heads))
        keep = max(keep, cfg.iterations // cfg.eval_every + 2)
    evaluate = evaluation.make_evaluator(config, cfg, data, graphs, frozen, score_fn, judge_fn)

    ckpt = ckpt_mod.StageCheckpointer(out_dir, keep=keep)
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
        t_iter = time.perf_counter()
        if host:
            out = sample_fn(state, batch, rng)
            tokens, resp_mask = out.tokens, out.mask
            texts = batches.decode_responses(tok, *jax.device_get((tokens, resp_mask)))
            host_score, host_means, spans = host.score_all(
                [cv_by_id[i] for i in sids.tolist()], texts, sids, done, cfg.on_nonfinite
            )
            if spans is not None and host_score is not None:  # span rewards: on their tokens
                tok_np, mask_np = jax.device_get((tokens, resp_mask))
                ends = rewards.token_char_ends(tok, tok_np, mask_np)
                host_score = (host_score, *rewards.place_spans(spans, ends, mask_np))
            if host_score is None:  # non-finite host reward, on_nonfinite=skip: no update
                skipped += 1
                m = {"host_reward_finite": 0.0}
            else:
                state, m = update_fn(state, frozen, batch, out, host_score, rng)
                m = {**common.host(m), **host_means}
        else:
            state, m, (tokens, resp_mask) = step_fn(state, frozen, batch, rng)
            m = common.host(m)
        # the iteration's wall time (sample, score, update; not the evaluation): the first
        # includes the compilation
        m["iteration_seconds"] = time.perf_counter() - t_iter
        m["samples_per_second"] = cfg.batch_size / m["iteration_seconds"]
        skipped += common.check_finite(m, "ppo", done, cfg.on_nonfinite)
        if data.market is not None:
            if texts is None:
                texts = batches.decode_responses(tok, *jax.device_get((tokens, resp_mask)))
            m["rollout_true_match_rate"] = float(np.mean(data.market.true_match(sids, texts)))
        m["skipped_iterations"] = skipped
        evaluated = done % cfg.eval_every == 0 or done == cfg.iterations
        if evaluated:
            last_eval, texts = evaluate(state.actor.params)
            m.update(last_eval)
            writer.text(done, "samples", texts[0] if texts else "")
        writer.write(done, m)
        bar.update(done, f"reward {m.get('reward', np.nan):.3f} kl {m.get('kl', np.nan):.2f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations or (evaluated and judge_fn):
            ckpt.save(done, state, {"data_iterator": it.get_state()})
        preemption.check(
            "ppo", done, lambda d=done, s=state: ckpt.save(d, s, {"data_iterator": it.get_state()})
        )
    bar.close()
    if start >= cfg.iterations:  # killed after the last checkpoint, before final.json
        last_eval, _ = evaluate(state.actor.params)  # greedy: the same numbers as before
    final_step, selected = evaluation.select_step(out_dir, cfg.iterations, cfg.select)
    result = evaluation.result(cfg, out_dir, start_eval, selected or last_eval, final_step)
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(os.path.join(out_dir, "eval.json"), result)

        report.plot_ppo(out_dir)
    ckpt.mark_final(final_step)
    ckpt.close()
    writer.close()
    return result


def load_final_actor(workdir: str, config, data, mesh, rules):
    """(graphdef, params) of the final PPO actor. Builds the actor alone, abstractly (no critic,
    reward model or reference), and reads only its parameters from the checkpoint, so PPO
    states of other layouts (critic kinds, optimizers, earlier versions) load too."""
    model_fn = actor_model_fn(config, data.tokenizer.vocab_size)
    graph, abstract, _, _ = state_mod.build_train_state(
        model_fn, optax.identity(), mesh, rules, abstract=True
    )
    restored, _, _ = ckpt_mod.restore_final_state(
        os.path.join(workdir, "ppo"), "ppo", {"actor": {"params": abstract.params}}, partial=True
    )
    return graph, restored["actor"]["params"]
