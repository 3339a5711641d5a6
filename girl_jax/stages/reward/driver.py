"""Stage 2, the reward model: the driver.

`train_and_evaluate` builds the state (`state.build_state`), puts the final SFT model's trunk in
with a fresh head, fits that head on the frozen trunk's cached features (`probe`), fine-tunes
everything with the jitted `step.train_step` (`reward.steps` > 0), fits an ensemble's heads
(`ensemble`), then evaluates: validation, the held-out seekers, test, how the RM tracks the
market oracle on sampled SFT JDs (`_oracle_tracking`) and the ensemble. Reads WORKDIR/sft,
writes WORKDIR/reward/{checkpoints, metrics.jsonl, tensorboard, eval.json, final.json}.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import spearmanr

from girl_jax import checkpoint as ckpt_mod
from girl_jax import metrics as metrics_mod
from girl_jax import preemption, wandb_writer
from girl_jax.data import negatives, pipeline, prepare
from girl_jax.errors import ConfigError
from girl_jax.models.heads import transplant_trunk
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common, sft
from girl_jax.stages.generator import EVAL_BATCH, Generator
from girl_jax.stages.reward import probe as probe_mod
from girl_jax.stages.reward.config import RewardConfig
from girl_jax.stages.reward.data import pairwise_arrays, pointwise_arrays
from girl_jax.stages.reward.ensemble import ENSEMBLE_DIR, _ensemble_report, _fit_ensemble
from girl_jax.stages.reward.judge import JUDGE_DIR, fit_judge, judge_report, judge_scorer
from girl_jax.stages.reward.state import build_model_fn, build_state
from girl_jax.stages.reward.step import scores, train_step
from girl_jax.stages.scoring import score_dataset


def train_and_evaluate(config, workdir: str) -> dict:
    """Restore or init, train, evaluate, checkpoint; a finished stage returns its eval.json."""
    with common.activate_rules(config):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict:
    cfg = RewardConfig.from_config(config.reward)
    out_dir = common.stage_dir(workdir, "reward")
    if ckpt_mod.is_final(out_dir):
        return json.load(open(os.path.join(out_dir, "eval.json")))
    data = prepare.load(workdir)
    tok = data.tokenizer
    max_len = config.sft.max_prompt_len + config.sft.max_response_len
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    mesh_mod.check_batch(cfg.batch_size, mesh, key="reward.batch_size")

    sft_graphdef, sft_params = sft.load_final_params(workdir, config, tok.vocab_size)
    mcfg, model_fn = build_model_fn(config, tok.vocab_size, config.seed)
    graphdef, state, shardings, tx = build_state(
        config, mesh, rules, vocab_size=tok.vocab_size, abstract=False
    )
    ckpt = ckpt_mod.StageCheckpointer(out_dir, keep=cfg.keep)
    train_df = data.split("train")
    if cfg.synthetic_negatives > 0:
        if data.market is None:
            raise ConfigError(
                "config.reward.synthetic_negatives needs the embedded market's structured jobs "
                "(config.data.source=market)"
            )

        train_df = negatives.augment(
            train_df, data.market, cfg.synthetic_negatives, config.seed + 7, cfg.negative_kinds
        )
    if cfg.objective == "pointwise":
        train = pointwise_arrays(tok, train_df, max_len)
    else:
        train = pairwise_arrays(tok, train_df, max_len, config.seed)
    val = pointwise_arrays(tok, data.split("validation"), max_len)
    probe_history = []
    features = None  # the frozen trunk's cached features, kept for an ensemble's heads
    if not ckpt.latest_step():
        # Trunk from the final SFT model and a fresh head, first fitted on the frozen trunk's
        # features (linear probing); fresh buffers so donating the state never deletes the SFT
        # params still used for evaluation.
        params = transplant_trunk(sft_params, state.params)
        if cfg.probe_epochs:
            if cfg.ensemble_size or cfg.holdout_judge:
                features = probe_mod.cached_features(cfg, graphdef, params, train, val)
            params, probe_history = probe_mod.probe(
                cfg, graphdef, params, train, val, config.seed, features, mesh=mesh, rules=rules
            )
        state = state.replace(params=common.fresh_copy(params, shardings.params))
    step_fn = jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=tx, cfg=cfg),
        in_shardings=(shardings, state_mod.batch_sharding(mesh), None),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )
    score_fn = jax.jit(lambda p, ids, mask, resp: scores(p, graphdef, ids, mask, resp))
    it = pipeline.make_iterator(train, batch_size=cfg.batch_size, seed=config.seed + 1)
    start = ckpt.latest_step() or 0
    if start:
        state, extra = ckpt.restore(start, ckpt_mod.abstract_like(state))
        it.set_state(extra["data_iterator"])
    writer = metrics_mod.MetricWriter(
        out_dir,
        resume_step=start,
        enabled=jax.process_index() == 0,
        mirror=wandb_writer.from_config(config, "reward", workdir),
    )
    # no bar when only the probe trains (steps 0): its phases have their own bars
    bar = metrics_mod.Progress(max(cfg.steps, 1), "reward", start=start, enabled=cfg.steps > 0)

    def evaluate(step):
        s = score_dataset(score_fn, state.params, val, cfg.batch_size)
        rep = {f"eval_{k}": v for k, v in metrics_mod.binary_report(val["label"], s).items()}
        writer.write(step, rep)
        return rep

    last = {}
    skipped, refused = 0, -1
    for step in range(start, cfg.steps):
        batch = state_mod.put_batch(next(it), mesh)
        state, m = step_fn(state, batch, common.fold_rng(config.seed, "reward", step))
        done = step + 1
        # The first refused step since the last log, tracked on device (no per-step sync).
        refused = jnp.where((refused < 0) & (m["finite"] < 0.5), done, refused)
        if done % cfg.log_every == 0 or done == cfg.steps:
            m = common.host(m)
            bad_step = int(refused)
            if bad_step >= 0:
                m["finite"] = 0.0  # a step since the last log was refused
            refused = -1
            skipped += common.check_finite(m, "reward", bad_step if bad_step >= 0 else done)
            writer.write(done, {**m, "skipped_updates": skipped})
            bar.update(done, f"loss {m['loss']:.3f} acc {m['accuracy']:.2f}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last = evaluate(done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            ckpt.save(done, state, {"data_iterator": it.get_state()})
        preemption.check(
            "reward",
            done,
            lambda d=done, s=state: ckpt.save(d, s, {"data_iterator": it.get_state()}),
        )
    bar.close()
    if cfg.steps == 0:  # probe only: the probed head is the final reward model
        ckpt.save(0, state, {"data_iterator": it.get_state()})
    stacked = members = judge = None
    if cfg.ensemble_size or cfg.holdout_judge:  # after a resume the probe reran (steps 0)
        if features is None:
            features = probe_mod.cached_features(cfg, graphdef, state.params, train, val)
    if cfg.ensemble_size:
        stacked, members = _fit_ensemble(
            cfg, config, graphdef, state.params, model_fn, train, val, features, out_dir
        )
    if cfg.holdout_judge:
        judge = fit_judge(cfg, config, graphdef, state.params, model_fn, features, out_dir)
    features = None
    for kept, name in ((cfg.ensemble_size, ENSEMBLE_DIR), (cfg.holdout_judge, JUDGE_DIR)):
        stale = os.path.join(out_dir, name, "final.json")  # left by an earlier run
        if not kept and jax.process_index() == 0 and os.path.exists(stale):
            os.remove(stale)
    # Evaluation: validation (unless just done), the held-out seekers never seen in training,
    # test, how the RM tracks the oracle on generated JDs, the ensemble; one bar over the parts.
    cold, test = data.split("cold_start"), data.split("test")
    parts = [
        name
        for name, runs in [
            ("validation", not last),
            ("cold_start", _labelled(cold)),
            ("test", _labelled(test)),
            ("oracle", data.market is not None),
            ("ensemble", stacked is not None),
            ("judge", judge is not None),
        ]
        if runs
    ]
    eval_bar = metrics_mod.Progress(len(parts), "reward eval", enabled=bool(parts))
    tick = lambda name: eval_bar.update(parts.index(name) + 1, name)
    if not last:
        last = evaluate(cfg.steps)
        tick("validation")
    result = {k.removeprefix("eval_"): v for k, v in last.items()}
    if probe_history:
        result["probe"] = {"epochs": len(probe_history), "history": probe_history}
    if _labelled(cold):
        arrs = pointwise_arrays(tok, cold, max_len)
        s = score_dataset(score_fn, state.params, arrs, cfg.batch_size)
        result["cold_start"] = metrics_mod.binary_report(arrs["label"], s)
        tick("cold_start")
    if _labelled(test):
        arrs = pointwise_arrays(tok, test, max_len)
        s = score_dataset(score_fn, state.params, arrs, cfg.batch_size)
        result["test"] = metrics_mod.binary_report(arrs["label"], s)
        tick("test")
    judge_fn = None if judge is None else jax.jit(judge_scorer(graphdef, judge[0]))
    if data.market is not None:
        result.update(
            _oracle_tracking(
                config,
                data,
                sft_graphdef,
                sft_params,
                state.params,
                {"": score_fn, **({"judge_": judge_fn} if judge_fn else {})},
                tok,
                max_len,
                cfg.batch_size,
            )
        )
        tick("oracle")
    if stacked is not None:
        splits = {"validation": val}
        if _labelled(test):
            splits["test"] = pointwise_arrays(tok, test, max_len)
        result["ensemble"] = _ensemble_report(
            cfg, config, graphdef, state.params, stacked, members, splits
        )
        tick("ensemble")
    if judge is not None:
        splits = {"validation": val}  # its training rows: the AUC it was fitted to
        if _labelled(test):
            splits["test"] = pointwise_arrays(tok, test, max_len)
        result["judge"] = judge_report(
            graphdef, state.params, judge[0], splits, cfg.batch_size, judge[1]
        )
        if "judge_oracle_spearman_generated" in result:
            result["judge"]["oracle_spearman_generated"] = result.pop(
                "judge_oracle_spearman_generated"
            )
        tick("judge")
    eval_bar.close()
    result["step"] = cfg.steps
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(os.path.join(out_dir, "eval.json"), result)
    ckpt.mark_final(cfg.steps, {"model": dataclasses.asdict(mcfg)})
    ckpt.close()
    writer.close()
    return result


def _labelled(split) -> bool:
    """Rows with both labels: the split gets a binary report."""
    return bool(len(split)) and split["label"].nunique() == 2


def _oracle_tracking(
    config, data, sft_graphdef, sft_params, rm_params, score_fns, tok, max_len, batch_size
):
    """Spearman correlation between RM score and oracle true match on sampled SFT JDs:
    `{prefix}oracle_spearman_generated` for each `prefix: score_fn` in score_fns."""
    seekers = data.seekers("validation").iloc[: max(config.sft.num_eval_samples, 32)]
    gen = Generator(
        sft_graphdef,
        sft_params,
        tok,
        max_prompt_len=config.sft.max_prompt_len,
        max_new_tokens=config.sft.max_response_len,
        greedy=False,
        temperature=1.0,
        batch_size=min(EVAL_BATCH, len(seekers)),
    )
    texts = gen.generate(list(seekers["cv"]), common.fold_rng(config.seed, "reward-oracle", 0))
    arrs = pointwise_arrays(
        tok, __import__("pandas").DataFrame({"cv": seekers["cv"], "jd": texts, "label": 0}), max_len
    )
    true = data.market.true_match(seekers["seeker_id"].to_numpy(), texts)
    out = {}
    for prefix, score_fn in score_fns.items():
        s = score_dataset(score_fn, rm_params, arrs, batch_size)
        ok = np.std(true) > 0 and np.std(s) > 0
        out[f"{prefix}oracle_spearman_generated"] = (
            float(spearmanr(s, true).statistic) if ok else float("nan")
        )
    return out
