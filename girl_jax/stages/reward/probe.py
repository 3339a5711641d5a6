"""Reward-model linear probing: fit the reward head on frozen, cached trunk features.

Fine-tuning a whole SFT trunk from a zero head on ~10^4 noisy recruiter labels first wrecks the
features it starts from (the head's early, random gradients reach every layer): on the default
market a fine-tuned RM stayed at held-out AUC 0.56 after 400 steps while a logistic regression
on the frozen trunk's pooled states reached 0.70 and a small MLP 0.73. So the reward stage first
fits the head on features computed once with the frozen trunk (many cheap epochs, early stopping
on validation AUC), then optionally fine-tunes everything from there (LP-FT, Kumar et al. 2022).

The same cached features also fit a reward-model ensemble (`fit_ensemble`: K more heads on the
frozen trunk, each from its own seed and bootstrap resample; Coste et al. 2023).

The head's step and `fit_head` live in `probe_fit.py` (re-exported here).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from girl_jax import metrics
from girl_jax.models.heads import TOKEN_HEADS, pool_features
from girl_jax.stages.reward.probe_fit import (  # noqa: F401 - re-exported: probe.fit_head etc.
    _auc,
    _head_fns,
    _num_rows,
    _rows,
    batch_shardings,
    default_mesh,
    fit_head,
    init_probe_state,
    probe_loss,
    probe_train_step,
    put_batch,
)
from girl_jax.stages.scoring import score_dataset, trimmed_width


@dataclasses.dataclass
class Features:
    """Frozen-trunk features, computed once: what `fit_head` reads (see `cached_features`)."""

    train_x: object  # [N, ...] pointwise, [2, N, ...] pairwise; an array or a pytree
    train_y: np.ndarray | None  # [N] labels (pointwise), None (pairwise)
    val_x: object  # [M, ...]
    val_y: np.ndarray  # [M] labels


def cached_features(cfg, graphdef, params, train, val) -> Features:
    """The frozen trunk's features of the training and validation rows, computed once.

    Pooled [N, F] for pooled heads, or for token heads (`attn_mlp`) the pooled features and
    the trunk's states [N, W, D] (W = longest row, rounded to 32) with their match flags
    concatenated ("states", [N, W, D + 2]) and their masks: ~2.3 GB for the default market's
    16.5k training and 6k validation rows. The states are rounded to float16 (the probe's
    features since they were first cached; its figures depend on that rounding) but held in
    float32, so that no step of the many epochs converts or concatenates them (~30% of a step).
    """
    model = nnx.merge(graphdef, params)
    token_head = model.reward_head.head in TOKEN_HEADS

    def feature_fn(p, i, m, r):
        f = nnx.merge(graphdef, p).features(i, m, r)
        if not token_head:
            return f
        # pooled features once, in float32; the states the attention reads, float16-rounded,
        # with the 0 / 1 match flags beside them, as the head's poolings read them
        pooled = pool_features(f["hidden"], m, r, "pooled_mlp")
        states = [f["hidden"].astype(jnp.float16).astype(jnp.float32)]
        if "match" in f:
            states.append(f["match"].astype(jnp.float32))
        return {"pooled": pooled, "states": jnp.concatenate(states, axis=-1)}

    features_fn = jax.jit(feature_fn)

    # one bar over every row the trunk reads: training rows (both sides, pairwise), validation
    total = len(val["input_ids"]) + sum(len(v) for k, v in train.items() if k.endswith("_ids"))
    bar = metrics.Progress(total, "reward features")
    done = 0

    def feats(ids, mask, resp, part):
        def advance(rows):
            nonlocal done
            done += rows
            bar.update(done, part)

        arrays = {"input_ids": ids, "attention_mask": mask, "response_mask": resp}
        x = score_dataset(features_fn, params, arrays, cfg.probe_batch_size, on_batch=advance)
        if not token_head:
            return x
        w = trimmed_width(arrays)
        return {**x, "mask": mask[:, :w], "response_mask": resp[:, :w]}

    if cfg.objective == "pointwise":
        train_x = feats(
            train["input_ids"], train["attention_mask"], train["response_mask"], "train"
        )
        train_y = train["label"]
    else:  # chosen and rejected: token states padded to a shared width to stack
        sides = [
            feats(train[f"{k}_ids"], train[f"{k}_mask"], train[f"{k}_response_mask"], f"train {k}")
            for k in ("chosen", "rejected")
        ]
        if token_head:
            width = max(x["states"].shape[1] for x in sides)
            sides = [_pad_tokens(x, width) for x in sides]
        train_x, train_y = jax.tree.map(lambda *a: np.stack(a), *sides), None
    val_x = feats(val["input_ids"], val["attention_mask"], val["response_mask"], "validation")
    bar.close()
    return Features(train_x, train_y, val_x, np.asarray(val["label"]))


def _fit(cfg, head_graphdef, head_params, features: Features, seed: int, rows=None, **kw):
    """`fit_head` with the config's probe settings; `kw`: on_epoch, mesh, rules."""
    return fit_head(
        head_graphdef,
        head_params,
        features.train_x,
        features.train_y,
        features.val_x,
        features.val_y,
        objective=cfg.objective,
        epochs=cfg.probe_epochs,
        batch_size=cfg.probe_batch_size,
        learning_rate=cfg.probe_learning_rate,
        weight_decay=cfg.weight_decay,
        patience=cfg.probe_patience,
        seed=seed,
        margin=cfg.margin,
        rows=rows,
        **kw,
    )


def probe(
    cfg,
    graphdef,
    params,
    train,
    val,
    seed: int,
    features: Features | None = None,
    *,
    mesh: Mesh | None = None,
    rules=None,
):
    """Fits the reward head on frozen-trunk features; returns (full params, history).

    `features`: from `cached_features(cfg, graphdef, params, train, val)`, computed here when
    None (pass them to reuse them afterwards, e.g. for `fit_ensemble`). `mesh`, `rules`: where
    the head's step runs (`fit_head`).
    """
    if features is None:
        features = cached_features(cfg, graphdef, params, train, val)
    model = nnx.merge(graphdef, params)
    head_graphdef, head_params = nnx.split(model.reward_head)
    bar = metrics.Progress(cfg.probe_epochs, "reward probe")

    def on_epoch(epoch, rec):
        info = f"loss {rec['probe_loss']:.3f} val auc {rec['probe_val_auc']:.3f}"
        bar.update(epoch, info)

    best, history = _fit(
        cfg, head_graphdef, head_params, features, seed, on_epoch=on_epoch, mesh=mesh, rules=rules
    )
    bar.close()  # early stopping may end it before probe_epochs
    nnx.update(model.reward_head, best)
    return nnx.state(model, nnx.Param), history


def bootstrap_rows(n: int, seed: int) -> np.ndarray:
    """n row indices drawn with replacement (a bootstrap resample), from `seed` alone."""
    return np.random.default_rng([seed, 1]).integers(0, n, n)


def fit_ensemble(
    cfg,
    head_graphdef,
    init_head,
    features: Features,
    seeds,
    *,
    bootstrap: bool,
    on_member=None,
    mesh: Mesh | None = None,
    rules=None,
):
    """K more reward heads on the same cached features; returns (stacked params, members).

    Member k starts from `init_head(seeds[k])` (a head state like `nnx.split(head)[1]`),
    trains on a bootstrap resample of the training rows (pairs, for pairwise) drawn with
    `bootstrap_rows(N, seeds[k])` when `bootstrap` (else on all of them, in its own order:
    fit_head's shuffling also uses seeds[k]) and is early-stopped on validation AUC like the
    main probe. The stacked params have K on axis 0 of every leaf; `members[k]` is
    {"seed", "epochs", "probe_val_auc" (the best epoch's), "history"}. `on_member(k, member)`
    is called after each member is fitted. `mesh`, `rules`: where the steps run (`fit_head`).
    """
    axis = 0 if cfg.objective == "pointwise" else 1
    n = _num_rows(features.train_x, axis)
    heads, members = [], []
    for k, seed in enumerate(seeds):
        rows = bootstrap_rows(n, seed) if bootstrap else None
        head = init_head(seed)
        best, history = _fit(cfg, head_graphdef, head, features, seed, rows, mesh=mesh, rules=rules)
        heads.append(jax.device_get(best))
        member = {
            "seed": int(seed),
            "epochs": len(history),
            "probe_val_auc": max(h["probe_val_auc"] for h in history),
            "history": history,
        }
        members.append(member)
        if on_member is not None:
            on_member(k, member)
    stacked = jax.tree.map(lambda *a: jnp.asarray(np.stack(a)), *heads)
    return stacked, members


def _pad_tokens(x: dict, width: int) -> dict:
    """Zero-pads the per-token entries (not the pooled features) to `width` columns."""

    def pad(a):
        return np.pad(a, [(0, 0), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2))

    return {k: v if k == "pooled" else pad(v) for k, v in x.items()}
