"""The reward-model ensemble: K more reward heads fitted on the frozen trunk's cached features
(`_fit_ensemble`), saved stacked on a leading K axis (`save_ensemble`), scored with one trunk
pass and the heads vmapped (`ensemble_scores`), reported in eval.json (`_ensemble_report`) and
loaded back for PPO (`load_final_ensemble`).
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from girl_jax import checkpoint as ckpt_mod
from girl_jax import metrics as metrics_mod
from girl_jax.errors import CheckpointError, ConfigError
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.rl import ensemble as ens_mod
from girl_jax.stages.reward import probe as probe_mod
from girl_jax.stages.reward.config import RewardConfig
from girl_jax.stages.reward.state import build_model_fn, load_final_params
from girl_jax.stages.scoring import score_dataset

ENSEMBLE_DIR = "ensemble"  # under WORKDIR/reward
ENSEMBLE_EVAL_LAM = 1.0  # eval.json's mean_minus_std aggregation: mean - 1.0 * std


def ensemble_seeds(seed: int, size: int) -> list[int]:
    """Member k's seed: config.seed + 1000 + k (head init, bootstrap draw, shuffling)."""
    return [seed + 1000 + k for k in range(size)]


def _head_init_fn(model_fn):
    """seed -> a fresh reward head's state, as a RewardModel built from that seed has it (the
    trunk's initialisation is traced but dead code under jit: only the head is computed)."""

    @jax.jit
    def init(key):
        with nnx.use_eager_sharding(False):
            model = model_fn(nnx.Rngs(key))
        return nnx.split(model.reward_head)[1]

    return lambda seed: init(jax.random.key(seed))


def _fit_ensemble(cfg, config, graphdef, params, model_fn, train, val, features, out_dir):
    """Fits the K member heads on the frozen trunk's features and saves them (atomically)."""
    if features is None:
        features = probe_mod.cached_features(cfg, graphdef, params, train, val)
    head_graphdef = nnx.split(nnx.merge(graphdef, params).reward_head)[0]
    seeds = ensemble_seeds(config.seed, cfg.ensemble_size)
    bar = metrics_mod.Progress(cfg.ensemble_size, "reward ensemble")

    def on_member(k, m):
        info = f"member {k} (seed {m['seed']}): val auc {m['probe_val_auc']:.3f}, "
        bar.update(k + 1, info + f"{m['epochs']} epochs")

    stacked, members = probe_mod.fit_ensemble(
        cfg,
        head_graphdef,
        _head_init_fn(model_fn),  # fit_head replicates each: the main probe's step, reused
        features,
        seeds,
        bootstrap=cfg.ensemble_bootstrap,
        on_member=on_member,
        mesh=mesh_mod.make_mesh(config.mesh),
        rules=rules_mod.normalize_rules(config.logical_axis_rules),
    )
    bar.close()
    info = {"size": cfg.ensemble_size, "bootstrap": cfg.ensemble_bootstrap, "seeds": seeds}
    save_ensemble(os.path.join(out_dir, ENSEMBLE_DIR), stacked, {**info, "members": members})
    return stacked, members


def save_ensemble(ens_dir: str, stacked, info: dict) -> None:
    """Stacked head params to ens_dir/heads (Orbax: written aside, renamed on commit), then
    ens_dir/final.json (the marker `load_final_ensemble` needs), written last and atomically."""
    final = os.path.join(ens_dir, "final.json")
    if jax.process_index() == 0:
        os.makedirs(ens_dir, exist_ok=True)
        if os.path.exists(final):  # an older ensemble: not final while its heads are replaced
            os.remove(final)
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(os.path.abspath(os.path.join(ens_dir, "heads")), stacked, force=True)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(final, info)


def ensemble_scores(graphdef, params, stacked_head_params, ids, mask, response_mask=None):
    """Every member's score [K, B] float32: the trunk runs once, the K heads are vmapped.

    `graphdef, params`: the reward model (`load_final_params` / `load_final_ensemble`);
    `stacked_head_params`: K reward-head states stacked on axis 0 of every leaf (the state
    `nnx.split(model.reward_head)` gives, with a leading K). Pure and jittable.
    """
    model = nnx.merge(graphdef, params)
    feats = model.features(ids, mask, response_mask)
    head_graphdef = nnx.split(model.reward_head)[0]

    def one(head_params):
        return nnx.merge(head_graphdef, head_params)(feats).astype(jnp.float32)

    # NumPy leaves (a judge loaded from disk) as jax arrays: vmap would hand `layers.dense`
    # (a custom_vjp) tracers over NumPy constants, which jax rejects.
    return jax.vmap(one)(jax.tree.map(jnp.asarray, stacked_head_params))


def ensemble_member_params(graphdef, params, stacked_head_params, k: int):
    """Full RewardModel params with member k's head in place of the main one (for `scores`)."""
    model = nnx.merge(graphdef, params)
    nnx.update(model.reward_head, jax.tree.map(lambda a: a[k], stacked_head_params))
    return nnx.state(model, nnx.Param)


def _ensemble_report(cfg, config, graphdef, params, stacked, members, splits) -> dict:
    """eval.json's "ensemble": member AUCs and the aggregations' AUCs per split."""
    fn = jax.jit(lambda p, h, i, m, r: ensemble_scores(graphdef, p, h, i, m, r).T)  # [B, K]
    report = {
        "size": cfg.ensemble_size,
        "bootstrap": cfg.ensemble_bootstrap,
        "lam": ENSEMBLE_EVAL_LAM,
        "members": [{k: m[k] for k in ("seed", "epochs", "probe_val_auc")} for m in members],
    }
    for name, arrs in splits.items():
        s = score_dataset(
            lambda p, i, m, r: fn(p, stacked, i, m, r), params, arrs, cfg.batch_size
        ).T  # [K, N]
        y = arrs["label"]
        aucs = [metrics_mod.auc(y, sk) for sk in s]
        for member, a in zip(report["members"], aucs):
            member[f"{name}_auc"] = a
        agg = {
            how: np.asarray(ens_mod.aggregate(s, how, lam=ENSEMBLE_EVAL_LAM))
            for how in ens_mod.AGGREGATIONS
        }
        report[name] = {
            "member_auc": aucs,
            "member_auc_mean": float(np.mean(aucs)),
            "member_auc_std": float(np.std(aucs)),
            "mean": metrics_mod.binary_report(y, agg["mean"]),
            **{how: {"auc": metrics_mod.auc(y, a)} for how, a in agg.items() if how != "mean"},
        }
    return report


def _abstract_heads(config, vocab_size: int, size: int, sharding=None):
    """ShapeDtypeStructs of `size` stacked reward-head states (for restoring)."""
    _, model_fn = build_model_fn(config, vocab_size, config.seed)
    one = jax.eval_shape(_head_init_fn(model_fn), 0)
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((size, *a.shape), a.dtype, sharding=sharding), one
    )


def load_final_ensemble(workdir: str, config, vocab_size: int):
    """(graphdef, params, stacked_head_params) of the final reward model and its ensemble.

    `graphdef, params`: the main reward model, as `load_final_params` gives it (trunk + main
    head); `stacked_head_params`: the K member heads' states, K on axis 0 of every leaf,
    replicated on the config's mesh. Score with `ensemble_scores(graphdef, params,
    stacked_head_params, ids, mask, response_mask) -> [K, B]`. Needs
    config.reward.ensemble_size = the K the reward stage fitted.
    """
    cfg = RewardConfig.from_config(config.reward)
    if not cfg.ensemble_size:
        raise ConfigError("a reward-model ensemble needs config.reward.ensemble_size >= 2")
    ens_dir = os.path.join(workdir, "reward", ENSEMBLE_DIR)
    info = ckpt_mod.read_final(ens_dir, "reward", needed_by="the reward-model ensemble")
    if info["size"] != cfg.ensemble_size:
        raise CheckpointError(
            f"{ens_dir} holds {info['size']} reward heads but config.reward.ensemble_size is "
            f"{cfg.ensemble_size}: set it to {info['size']} or rerun the reward stage"
        )
    return load_heads(workdir, config, vocab_size, ens_dir, info["size"])


def load_heads(workdir: str, config, vocab_size: int, ens_dir: str, size: int):
    """(graphdef, params, stacked) : the final reward model and `size` stacked heads saved in
    `ens_dir` by `save_ensemble`, replicated on the config's mesh."""
    graphdef, params = load_final_params(workdir, config, vocab_size)
    mesh = mesh_mod.make_mesh(config.mesh)
    abstract = _abstract_heads(config, vocab_size, size, rules_mod.replicated(mesh))
    ckptr = ocp.StandardCheckpointer()
    try:
        stacked = ckptr.restore(os.path.abspath(os.path.join(ens_dir, "heads")), abstract)
    except Exception as exc:  # shape / structure mismatch, missing files
        raise CheckpointError(
            f"cannot restore {ens_dir}/heads: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        ckptr.close()
    return graphdef, params, stacked
