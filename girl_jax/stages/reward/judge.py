"""The held-out judge: one more reward head, fitted on labels the reward model never trained on.

The reward model's head is fitted on the training split's recruiter labels (and synthetic
negatives) and only early-stopped on the validation split. The judge swaps the roles: a fresh
head on the same frozen trunk's cached features, fitted on the validation split's labels alone
and early-stopped on the training split's AUC. Its labels are disjoint from the ones the
proxy was fitted on, so PPO can use it to pick, among its evaluated checkpoints, the one a
second opinion rates best (`ppo.select=judge`, `girl_jax.stages.ppo.driver`) — early stopping
that never reads the oracle or the test split. Saved like a one-member ensemble under
WORKDIR/reward/judge (`ensemble.save_ensemble`); `load_final_judge` reads it back and
`ensemble.ensemble_scores(...)[0]` scores with it.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from girl_jax import checkpoint as ckpt_mod
from girl_jax import metrics as metrics_mod
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.stages.reward import probe as probe_mod
from girl_jax.stages.reward.ensemble import (
    _head_init_fn,
    ensemble_scores,
    load_heads,
    save_ensemble,
)
from girl_jax.stages.scoring import score_dataset

JUDGE_DIR = "judge"  # under WORKDIR/reward
JUDGE_SEED_OFFSET = 2000  # the judge's head init and shuffling: config.seed + 2000


def fit_judge(cfg, config, graphdef, params, model_fn, features, out_dir):
    """Fits the judge head on the validation rows (early-stopped on the training rows' AUC)
    and saves it, stacked as a one-member ensemble; returns (stacked head params, info)."""
    head_graphdef = nnx.split(nnx.merge(graphdef, params).reward_head)[0]
    seed = config.seed + JUDGE_SEED_OFFSET
    bar = metrics_mod.Progress(cfg.probe_epochs, "reward judge")
    # the splits' roles swapped: fitted on validation, early-stopped on train (pointwise only,
    # RewardConfig checks it), with the probe's own settings
    swapped = probe_mod.Features(features.val_x, features.val_y, features.train_x, features.train_y)
    best, history = probe_mod._fit(
        cfg,
        head_graphdef,
        _head_init_fn(model_fn)(seed),
        swapped,
        seed,
        on_epoch=lambda e, r: bar.update(e, f"train-split auc {r['probe_val_auc']:.3f}"),
        mesh=mesh_mod.make_mesh(config.mesh),
        rules=rules_mod.normalize_rules(config.logical_axis_rules),
    )
    bar.close()
    stacked = jax.tree.map(lambda a: np.asarray(jax.device_get(a))[None], best)
    info = {
        "size": 1,
        "seed": seed,
        "fitted_on": "validation",
        "early_stopped_on": "train",
        "rows": int(len(features.val_y)),
        "epochs": len(history),
        "train_split_auc": max(h["probe_val_auc"] for h in history),
    }
    save_ensemble(os.path.join(out_dir, JUDGE_DIR), stacked, info)
    return stacked, info


def judge_report(graphdef, params, stacked, splits: dict, batch_size: int, info: dict) -> dict:
    """eval.json's "judge": how it was fitted and its AUC on each split in `splits`."""
    fn = jax.jit(lambda p, i, m, r: ensemble_scores(graphdef, p, stacked, i, m, r)[0])
    out = {k: info[k] for k in ("rows", "epochs", "train_split_auc", "fitted_on")}
    for name, arrs in splits.items():
        s = score_dataset(fn, params, arrs, batch_size)
        out[f"{name}_auc"] = metrics_mod.auc(arrs["label"], s)
    return out


def judge_scorer(graphdef, stacked):
    """(rm params, ids, mask, response_mask) -> the judge's scores [B]: jittable."""
    return lambda p, i, m, r: ensemble_scores(graphdef, p, stacked, i, m, r)[0]


def load_final_judge(workdir: str, config, vocab_size: int):
    """(graphdef, params, stacked) of the final reward model and its held-out judge head
    (`reward.holdout_judge`); score with `judge_scorer(graphdef, stacked)(params, ...)`."""
    judge_dir = os.path.join(workdir, "reward", JUDGE_DIR)
    ckpt_mod.read_final(judge_dir, "reward", needed_by="ppo.select=judge (reward.holdout_judge)")
    return load_heads(workdir, config, vocab_size, judge_dir, 1)
