"""`girl sweep --vmap`: sweep cells that differ only in traced settings, run as one program.

PPO's continuous settings (`ppo.state.TRACED_KEYS`: learning rates, KL coefficient, clip ranges,
value / entropy coefficients, gamma, lambda) and the seed are arrays of the step, not constants
compiled into it. The cells of a sweep whose configs agree on everything else form a group;
a group's states are stacked on a leading cell axis and one `jax.vmap`ped iteration advances
them all, the way purejaxrl trains many agents at once: one compile, one sampler loop, bigger
matrix products. Each cell keeps its own data order and rollout keys (its seed), so a cell of a
vmapped group follows the same trajectory as the cell run alone (tests/test_sweep_vmap.py,
within float32 rounding).

Every cell still gets what `girl sweep` writes without --vmap — its own `ppo/` with metrics,
eval.json, checkpoints and final marker — so the table, the plot, `girl report` and the later
stages read a vmapped cell like any other. Resumable: the group checkpoints every cell at the
same iterations and restarts from the last iteration all its cells have saved.
"""

from __future__ import annotations

import functools
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from girl_jax import checkpoint as ckpt_mod
from girl_jax import metrics as metrics_mod
from girl_jax import report
from girl_jax.data import batches, pipeline, prepare
from girl_jax.errors import ConfigError
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common, ppo
from girl_jax.stages.ppo import evaluation
from girl_jax.stages.ppo.rewards import HostRewards
from girl_jax.stages.ppo.state import TRACED_KEYS
from girl_jax.stages.ppo.step import reference_params, sample_step, train_step, update_step
from girl_jax.stages.scoring import sequence_scores

# ---------------------------------------------------------------- grouping


def static_signature(cell) -> str:
    """The cell's config with the traced PPO keys and the seed taken out (JSON)."""
    c = json.loads(cell.config.to_json_best_effort())
    c.pop("seed", None)
    for key in TRACED_KEYS:
        c.get("ppo", {}).pop(key, None)
    return json.dumps(c, sort_keys=True)


def groups(cells) -> list[list]:
    """Cells grouped by `static_signature`, in first-seen order."""
    out: dict[str, list] = {}
    for cell in cells:
        out.setdefault(static_signature(cell), []).append(cell)
    return list(out.values())


# ---------------------------------------------------------------- stacking


def stack(trees):
    """A list of equal-structure pytrees -> one pytree with a leading cell axis."""
    return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def unstack(tree, i: int):
    return jax.tree.map(lambda x: x[i], tree)


def cell_sharding(sharding):
    """A per-cell sharding -> the stacked one: the cell axis replicated, the rest unchanged."""
    if isinstance(sharding, NamedSharding):
        return NamedSharding(sharding.mesh, PartitionSpec(None, *sharding.spec))
    return sharding


# ---------------------------------------------------------------- run a group


def run_group(cells, console=None) -> float:
    """Train every cell of one group side by side; returns the group's wall time in seconds."""
    config = cells[0].config
    if jax.process_count() > 1:
        raise ConfigError("girl sweep --vmap runs on one process; drop --vmap on multi-host")
    if config.ppo.get("select", "last") != "last":
        raise ConfigError(
            "girl sweep --vmap: ppo.select=judge keeps every evaluated step of every cell; "
            "drop --vmap (each cell then chooses its own step) or use ppo.select=last"
        )
    todo = [c for c in cells if not ckpt_mod.is_final(c.ppo_dir)]
    if not todo:
        return 0.0

    with common.activate_rules(config):
        return _run_group(todo, console)


def _run_group(cells, console) -> float:
    t0 = time.time()
    C = len(cells)
    config = cells[0].config
    data = prepare.load(cells[0].dir)
    tok = data.tokenizer
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    built = [ppo.build(c.config, c.dir, data, mesh, rules) for c in cells]
    cfgs = [b[0] for b in built]
    cfg, graphs, _, shardings, frozen, (actor_tx, critic_tx, controller) = built[0]
    mesh_mod.check_batch(cfg.batch_size, mesh, key="ppo.batch_size")
    one = ckpt_mod.abstract_like(built[0][2])  # one cell's state, for restoring
    state = stack([b[2] for b in built])  # the txs read their rates from the stacked states
    del built
    st_sh = jax.tree.map(cell_sharding, shardings)
    state = jax.device_put(state, st_sh)
    batch_axes = tuple(a for a in state_mod.BATCH_AXES if a in mesh.shape)

    def put(raw):  # [C, B, ...] host arrays, the batch dim sharded as in a single run
        return {
            k: jax.device_put(
                v, NamedSharding(mesh, PartitionSpec(None, batch_axes, *([None] * (v.ndim - 2))))
            )
            for k, v in raw.items()
        }

    scfg = ppo.sampling_config(cfg, tok, greedy=False)
    host = HostRewards(cfg.reward_terms, data.market)
    if host and cfg.on_nonfinite == "skip":
        raise ConfigError(
            "girl sweep --vmap: ppo.on_nonfinite=skip with a host reward term would skip one "
            "cell's update inside a vmapped group; use on_nonfinite=stop or drop --vmap"
        )
    roles = dict(graphs=graphs, cfg=cfg, actor_tx=actor_tx, critic_tx=critic_tx)
    if host:
        sample_fn = jax.jit(
            jax.vmap(functools.partial(sample_step, graphs=graphs, scfg=scfg)),
            in_shardings=(st_sh, None, None),
        )
        update_fn = jax.jit(
            jax.vmap(
                functools.partial(update_step, **roles, controller=controller),
                in_axes=(0, None, 0, 0, 0, 0),
            ),
            out_shardings=(st_sh, None),
            donate_argnums=(0,),
        )
    else:
        step_fn = jax.jit(
            jax.vmap(
                functools.partial(train_step, **roles, scfg=scfg, controller=controller),
                in_axes=(0, None, 0, 0),
            ),
            in_shardings=(st_sh, None, None, None),
            out_shardings=(st_sh, None, None),
            donate_argnums=(0,),
        )
    score_fn = jax.jit(functools.partial(sequence_scores, graphs.reward))
    evaluate = evaluation.make_evaluator(config, cfg, data, graphs, frozen, score_fn)

    seekers = data.seekers("train")
    cv_by_id = dict(zip(seekers["seeker_id"].to_numpy().tolist(), seekers["cv"]))
    prompts = ppo.driver.training_prompts(config, tok, seekers)  # the driver's: same rollouts
    per_iter = cfg.batch_size // cfg.group_size
    iters = [
        pipeline.make_iterator(prompts, batch_size=per_iter, seed=c.config.seed + 2) for c in cells
    ]
    out_dirs = [common.stage_dir(c.dir, "ppo") for c in cells]
    ckpts = [ckpt_mod.StageCheckpointer(d, keep=cfg.keep) for d in out_dirs]

    # Resume from the last iteration every cell has saved (a kill between two cells' saves
    # leaves one cell a checkpoint ahead: it steps back to the common one, which keep>=2 holds).
    latest = [ck.latest_step() or 0 for ck in ckpts]
    start = min(latest)
    if start:
        restored = []
        for i, ck in enumerate(ckpts):
            st_i, extra = ck.restore(start, one)
            iters[i].set_state(extra["data_iterator"])
            restored.append(st_i)
        state = jax.device_put(stack(restored), st_sh)
    start_path = [os.path.join(d, "eval_start.json") for d in out_dirs]
    if start and all(os.path.exists(p) for p in start_path):
        start_evals = [json.load(open(p)) for p in start_path]
    else:  # every cell starts from the same SFT model: evaluate it once
        ref = frozen.reference  # None with a shared base: a cell's actor, adapters off
        if ref is None:
            ref = reference_params(unstack(state.actor.params, 0), frozen)
        ev, texts = evaluate(ref)
        start_evals = [dict(ev) for _ in cells]
        for p in start_path:
            ckpt_mod.write_json_atomic(p, {**ev, "samples": texts[:8]})
    writers = [metrics_mod.MetricWriter(d, resume_step=start) for d in out_dirs]
    if not start:
        for w, ev in zip(writers, start_evals):
            w.write(0, ev)
    bar = metrics_mod.Progress(cfg.iterations, f"ppo x{C} (vmap)", start=start)
    last_evals = [dict(ev) for ev in start_evals]
    skipped = [0] * C
    for it_idx in range(start, cfg.iterations):
        raws, sids = [], []
        for it in iters:
            raw = next(it)
            sids.append(np.repeat(raw.pop("seeker_id"), cfg.group_size))
            raws.append({k: np.repeat(v, cfg.group_size, axis=0) for k, v in raw.items()})
        batch = put({k: np.stack([r[k] for r in raws]) for k in raws[0]})
        rng = jnp.stack([common.fold_rng(c.config.seed, "ppo", it_idx) for c in cells])
        done = it_idx + 1
        if host:
            out = sample_fn(state, batch, rng)
            toks, masks = jax.device_get((out.tokens, out.mask))
            texts = [batches.decode_responses(tok, toks[i], masks[i]) for i in range(C)]
            scores, means = [], []
            for i in range(C):
                cvs = [cv_by_id[s] for s in sids[i].tolist()]
                s_i, m_i = host.score(cvs, texts[i], sids[i], done, "stop")
                scores.append(s_i)
                means.append(m_i)
            state, m = update_fn(state, frozen, batch, out, jnp.asarray(np.stack(scores)), rng)
            m = jax.device_get(m)
        else:
            state, m, (toks, masks) = step_fn(state, frozen, batch, rng)
            m, (toks, masks) = jax.device_get((m, (toks, masks)))
            texts = [batches.decode_responses(tok, toks[i], masks[i]) for i in range(C)]
            means = [{} for _ in cells]
        evals = done % cfg.eval_every == 0 or done == cfg.iterations
        for i in range(C):
            m_i = {k: float(np.asarray(v)[i]) for k, v in m.items()}
            m_i.update(means[i])
            skipped[i] += common.check_finite(m_i, "ppo", done, "stop")
            if data.market is not None:
                m_i["rollout_true_match_rate"] = float(
                    np.mean(data.market.true_match(sids[i], texts[i]))
                )
            m_i["skipped_iterations"] = skipped[i]
            if evals:
                last_evals[i], ev_texts = evaluate(unstack(state.actor.params, i))
                m_i.update(last_evals[i])
                writers[i].text(done, "samples", ev_texts[0] if ev_texts else "")
            writers[i].write(done, m_i)
        bar.update(done, f"reward {np.mean(np.asarray(m['reward'])):.3f} (mean of {C} cells)")
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            for i, ck in enumerate(ckpts):
                ck.save(done, unstack(state, i), {"data_iterator": iters[i].get_state()})
    bar.close()
    if start >= cfg.iterations:  # killed after the last checkpoint, before the final markers
        last_evals = [evaluate(unstack(state.actor.params, i))[0] for i in range(C)]
    for i in range(C):
        result = evaluation.result(cfgs[i], out_dirs[i], start_evals[i], last_evals[i])
        result["vmap_group_size"] = C
        ckpt_mod.write_json_atomic(os.path.join(out_dirs[i], "eval.json"), result)
        report.plot_ppo(out_dirs[i])
        ckpts[i].mark_final(cfg.iterations)
        ckpts[i].close()
        writers[i].close()
    return time.time() - t0
