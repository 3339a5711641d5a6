"""Reward-model linear probing: fit the reward head on frozen, cached trunk features.

Fine-tuning a whole SFT trunk from a zero head on ~10^4 noisy recruiter labels first wrecks the
features it starts from (the head's early, random gradients reach every layer): on the default
market a fine-tuned RM stayed at held-out AUC 0.56 after 400 steps while a logistic regression
on the frozen trunk's pooled states reached 0.70 and a small MLP 0.73. So the reward stage first
fits the head on features computed once with the frozen trunk (many cheap epochs, early stopping
on validation AUC), then optionally fine-tunes everything from there (LP-FT, Kumar et al. 2022).

The same cached features also fit a reward-model ensemble (`fit_ensemble`: K more heads on the
frozen trunk, each from its own seed and bootstrap resample; Coste et al. 2023).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.metrics import roc_auc_score

from girl_jax import metrics
from girl_jax.models.heads import TOKEN_HEADS, pool_features
from girl_jax.stages.scoring import score_dataset, trimmed_width


def probe_loss(head_params, head_graphdef, x, y, *, objective: str, margin: float = 0.0):
    """Pointwise: x [B, ...], y [B] labels -> BCE. Pairwise: x [2, B, ...] (chosen, rejected)
    -> Bradley-Terry. x is an array or a pytree of arrays (token heads: states and masks)."""
    head = nnx.merge(head_graphdef, head_params)
    if objective == "pointwise":
        return optax.sigmoid_binary_cross_entropy(head(x), y).mean()
    chosen, rejected = (jax.tree.map(lambda a, i=i: a[i], x) for i in (0, 1))
    return -jax.nn.log_sigmoid(head(chosen) - head(rejected) - margin).mean()


def _rows(tree, idx, axis: int):
    return jax.tree.map(lambda a: np.take(a, idx, axis=axis), tree)


def _num_rows(tree, axis: int) -> int:
    return jax.tree.leaves(tree)[0].shape[axis]


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    return float(roc_auc_score(labels, scores)) if len(np.unique(labels)) == 2 else 0.5


@functools.lru_cache(maxsize=8)
def _head_fns(head_graphdef, objective: str, margin: float, learning_rate, weight_decay):
    """(tx, jitted step, jitted score) of `fit_head`, shared by calls with the same head and
    settings (an ensemble's members): compiled once, not once per member."""
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
    loss = functools.partial(probe_loss, objective=objective, margin=margin)

    @jax.jit
    def step(hp, opt, x, y):
        value, grads = jax.value_and_grad(loss)(hp, head_graphdef, x, y)
        updates, opt = tx.update(grads, opt, hp)
        return optax.apply_updates(hp, updates), opt, value

    score_fn = jax.jit(lambda hp, x: nnx.merge(head_graphdef, hp)(x))
    return tx, step, score_fn


def fit_head(
    head_graphdef,
    head_params,
    train_x,
    train_y: np.ndarray | None,
    val_x,
    val_y: np.ndarray,
    *,
    objective: str,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    patience: int,
    seed: int,
    margin: float = 0.0,
    on_epoch=None,
    rows: np.ndarray | None = None,
):
    """Adam on the head alone over cached features; returns (best head params, history).

    train_x is [N, ...] with train_y [N] (pointwise) or [2, N, ...] chosen / rejected
    (pairwise); an array (pooled features) or a pytree of arrays (a token head's states and
    masks). The head kept is the one with the best validation AUC (val_x [M, ...], labels
    val_y [M]); training stops after `patience` epochs without a better one. `rows` (indices
    into the N training rows, repeats allowed: a bootstrap resample) trains on those rows
    instead of all N, without copying the features.
    """
    tx, step, score_fn = _head_fns(head_graphdef, objective, margin, learning_rate, weight_decay)
    axis = 0 if objective == "pointwise" else 1
    rows = np.arange(_num_rows(train_x, axis)) if rows is None else np.asarray(rows)
    n = len(rows)

    def score(hp, x):
        m = _num_rows(x, 0)
        return np.concatenate(
            [
                np.asarray(score_fn(hp, _rows(x, np.arange(b, min(b + bs, m)), 0)))
                for b in range(0, m, bs)
            ]
        )

    bs = min(batch_size, n)
    rng = np.random.default_rng(seed)
    opt = tx.init(head_params)
    best, best_auc, since, history = head_params, -1.0, 0, []
    for epoch in range(1, epochs + 1):
        perm = rng.permutation(n)
        losses = []
        for b in range(0, n - bs + 1, bs):  # full batches only: one compiled shape
            idx = rows[perm[b : b + bs]]
            x = _rows(train_x, idx, axis)
            y = train_y[idx] if train_y is not None else jnp.zeros((bs,), jnp.float32)
            head_params, opt, value = step(head_params, opt, x, y)
            losses.append(value)
        val_auc = _auc(val_y, np.asarray(score(head_params, val_x)))
        rec = {"probe_loss": float(np.mean(jax.device_get(losses))), "probe_val_auc": val_auc}
        history.append(rec)
        if on_epoch is not None:
            on_epoch(epoch, rec)
        if val_auc > best_auc:
            best, best_auc, since = head_params, val_auc, 0
        else:
            since += 1
            if since >= patience:
                break
    return best, history


@dataclasses.dataclass
class Features:
    """Frozen-trunk features, computed once: what `fit_head` reads (see `cached_features`)."""

    train_x: object  # [N, ...] pointwise, [2, N, ...] pairwise; an array or a pytree
    train_y: np.ndarray | None  # [N] labels (pointwise), None (pairwise)
    val_x: object  # [M, ...]
    val_y: np.ndarray  # [M] labels


def cached_features(cfg, graphdef, params, train, val) -> Features:
    """The frozen trunk's features of the training and validation rows, computed once.

    Pooled [N, F] for pooled heads, or for token heads (`attn_mlp`) the trunk's states as
    float16 [N, W, D] (W = longest row, rounded to 32) with their masks (and match flags):
    ~1 GB for the default market's 16.5k training rows.
    """
    model = nnx.merge(graphdef, params)
    token_head = model.reward_head.head in TOKEN_HEADS

    def feature_fn(p, i, m, r):
        f = nnx.merge(graphdef, p).features(i, m, r)
        if not token_head:
            return f
        # pooled features once, in float32; the states the attention reads, in float16
        pooled = pool_features(f["hidden"], m, r, "pooled_mlp")
        out = {"pooled": pooled, "hidden": f["hidden"].astype(jnp.float16)}
        if "match" in f:  # 0 / 1 flags: exact in float16
            out["match"] = f["match"].astype(jnp.float16)
        return out

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
            width = max(x["hidden"].shape[1] for x in sides)
            sides = [_pad_tokens(x, width) for x in sides]
        train_x, train_y = jax.tree.map(lambda *a: np.stack(a), *sides), None
    val_x = feats(val["input_ids"], val["attention_mask"], val["response_mask"], "validation")
    bar.close()
    return Features(train_x, train_y, val_x, np.asarray(val["label"]))


def _fit(cfg, head_graphdef, head_params, features: Features, seed: int, rows=None, on_epoch=None):
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
        on_epoch=on_epoch,
        rows=rows,
    )


def probe(cfg, graphdef, params, train, val, seed: int, features: Features | None = None):
    """Fits the reward head on frozen-trunk features; returns (full params, history).

    `features`: from `cached_features(cfg, graphdef, params, train, val)`, computed here when
    None (pass them to reuse them afterwards, e.g. for `fit_ensemble`).
    """
    if features is None:
        features = cached_features(cfg, graphdef, params, train, val)
    model = nnx.merge(graphdef, params)
    head_graphdef, head_params = nnx.split(model.reward_head)
    bar = metrics.Progress(cfg.probe_epochs, "reward probe")

    def on_epoch(epoch, rec):
        info = f"loss {rec['probe_loss']:.3f} val auc {rec['probe_val_auc']:.3f}"
        bar.update(epoch, info)

    best, history = _fit(cfg, head_graphdef, head_params, features, seed, on_epoch=on_epoch)
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
):
    """K more reward heads on the same cached features; returns (stacked params, members).

    Member k starts from `init_head(seeds[k])` (a head state like `nnx.split(head)[1]`),
    trains on a bootstrap resample of the training rows (pairs, for pairwise) drawn with
    `bootstrap_rows(N, seeds[k])` when `bootstrap` (else on all of them, in its own order:
    fit_head's shuffling also uses seeds[k]) and is early-stopped on validation AUC like the
    main probe. The stacked params have K on axis 0 of every leaf; `members[k]` is
    {"seed", "epochs", "probe_val_auc" (the best epoch's), "history"}. `on_member(k, member)`
    is called after each member is fitted.
    """
    axis = 0 if cfg.objective == "pointwise" else 1
    n = _num_rows(features.train_x, axis)
    heads, members = [], []
    for k, seed in enumerate(seeds):
        rows = bootstrap_rows(n, seed) if bootstrap else None
        best, history = _fit(cfg, head_graphdef, init_head(seed), features, seed, rows)
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
