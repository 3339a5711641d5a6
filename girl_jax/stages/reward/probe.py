"""Reward-model linear probing: fit the reward head on frozen, cached trunk features.

Fine-tuning a whole SFT trunk from a zero head on ~10^4 noisy recruiter labels first wrecks the
features it starts from (the head's early, random gradients reach every layer): on the default
market a fine-tuned RM stayed at held-out AUC 0.56 after 400 steps while a logistic regression
on the frozen trunk's pooled states reached 0.70 and a small MLP 0.73. So the reward stage first
fits the head on features computed once with the frozen trunk (many cheap epochs, early stopping
on validation AUC), then optionally fine-tunes everything from there (LP-FT, Kumar et al. 2022).

The same cached features also fit a reward-model ensemble (`fit_ensemble`: K more heads on the
frozen trunk, each from its own seed and bootstrap resample; Coste et al. 2023).

The head's step is pure (`probe_train_step`), jitted like the other stages' steps: the batch
rows over the mesh's data axes (logical rules), the head's state replicated and donated.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from sklearn.metrics import roc_auc_score

from girl_jax import host_threads, metrics
from girl_jax.models.heads import TOKEN_HEADS, pool_features
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common
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


def probe_train_step(state, batch, rng, *, head_graphdef, tx, objective: str, margin: float):
    """One optimizer update of the head alone: `state` a TrainState of the head's params,
    `batch` {"x": cached features, "y": labels [B]} as `probe_loss` reads them (y unused,
    pairwise). Pure: `_head_fns` jits it with the state donated."""
    del rng  # no dropout: the step is deterministic
    value, grads = jax.value_and_grad(probe_loss)(
        state.params, head_graphdef, batch["x"], batch["y"], objective=objective, margin=margin
    )
    return state.apply_gradients(grads, tx), {"loss": value}


def default_mesh() -> Mesh:
    """The active mesh (a stage's: `common.activate_rules`), else data-parallel on all devices."""
    mesh = rules_mod.active_mesh()
    return mesh if isinstance(mesh, Mesh) else mesh_mod.make_mesh({"data": -1})


def batch_shardings(mesh: Mesh, rules, batch_size: int, objective: str):
    """(x, y) shardings of a batch of `batch_size` rows: the rows over the mesh axes the
    logical rules give "batch" (those that divide `batch_size`), the rest replicated; pairwise
    x [2, B, ...] has its rows on axis 1."""
    spec = rules_mod.logical_to_mesh_spec(("batch",), rules, mesh, (batch_size,))
    x_spec = spec if objective == "pointwise" else PartitionSpec(None, *spec)
    return NamedSharding(mesh, x_spec), NamedSharding(mesh, spec)


def init_probe_state(head_params, tx, mesh: Mesh):
    """The probe's TrainState (head params, optimizer state), replicated on `mesh` (a head is
    small: whole on every device, only its gradients are reduced) in fresh buffers: the step
    donates it, the caller's `head_params` stay valid (device_put alone, may_alias=False too,
    can alias a one-device array's buffer into the replicated one)."""
    rep = rules_mod.replicated(mesh)
    params = common.fresh_copy(jax.device_put(head_params, rep), rep)
    return state_mod.TrainState(
        step=jax.device_put(jnp.zeros((), jnp.int32), rep),
        params=params,
        opt_state=jax.jit(tx.init, out_shardings=rep)(params),
        rest=nnx.State({}),
    )


def put_batch(x, y, x_sharding: NamedSharding, y_sharding: NamedSharding) -> dict:
    """Host rows (every process holds all of them) -> the step's global batch {"x", "y"}."""

    def put(a, sharding):
        a = np.asarray(a)
        return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

    return {"x": jax.tree.map(lambda a: put(a, x_sharding), x), "y": put(y, y_sharding)}


@functools.lru_cache(maxsize=8)
def _head_fns(head_graphdef, objective: str, margin: float, learning_rate, weight_decay, shardings):
    """(tx, jitted step, jitted score) of `fit_head`, shared by calls with the same head,
    settings and batch layout (an ensemble's members): compiled once, not once per member.
    `shardings`: the batch's (x, y) shardings, from `batch_shardings`."""
    x_sharding, y_sharding = shardings
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
    rep = rules_mod.replicated(x_sharding.mesh)
    step = jax.jit(
        functools.partial(
            probe_train_step, head_graphdef=head_graphdef, tx=tx, objective=objective, margin=margin
        ),
        in_shardings=(rep, {"x": x_sharding, "y": y_sharding}, None),
        out_shardings=(rep, None),
        donate_argnums=(0,),
    )
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
    mesh: Mesh | None = None,
    rules=None,
):
    """Adam on the head alone over cached features; returns (best head params, history).

    train_x is [N, ...] with train_y [N] (pointwise) or [2, N, ...] chosen / rejected
    (pairwise); an array (pooled features) or a pytree of arrays (a token head's states and
    masks). The head kept is the one with the best validation AUC (val_x [M, ...], labels
    val_y [M]); training stops after `patience` epochs without a better one. `rows` (indices
    into the N training rows, repeats allowed: a bootstrap resample) trains on those rows
    instead of all N, without copying the features.

    The step (`probe_train_step`) runs on `mesh` (default: `default_mesh()`): the batch rows
    split over the axes `rules` (default: the active ones) give "batch", the head's state
    replicated and donated. The best head is returned replicated on `mesh`.
    """
    mesh = default_mesh() if mesh is None else mesh
    rules = rules_mod.active_rules() if rules is None else rules_mod.normalize_rules(rules)
    axis = 0 if objective == "pointwise" else 1
    rows = np.arange(_num_rows(train_x, axis)) if rows is None else np.asarray(rows)
    n = len(rows)
    bs = min(batch_size, n)
    x_sharding, y_sharding = batch_shardings(mesh, rules, bs, objective)
    tx, step, score_fn = _head_fns(
        head_graphdef, objective, margin, learning_rate, weight_decay, (x_sharding, y_sharding)
    )

    def score(hp, x):  # batches side by side on a CPU's cores (host_threads), same scores
        m = _num_rows(x, 0)
        last = (m - 1) // bs * bs  # the ragged last batch: its own shape

        def one(b):
            return np.asarray(score_fn(hp, _rows(x, np.arange(b, min(b + bs, m)), 0)))

        return np.concatenate(
            host_threads.ordered_map(one, range(0, m, bs), key=lambda b: b == last)
        )

    rng = np.random.default_rng(seed)
    state = init_probe_state(head_params, tx, mesh)
    no_labels = np.zeros((bs,), np.float32)  # pairwise: probe_loss does not read y
    best, best_auc, since, history = head_params, -1.0, 0, []
    for epoch in range(1, epochs + 1):
        perm = rng.permutation(n)
        losses = []
        for b in range(0, n - bs + 1, bs):  # full batches only: one compiled shape
            idx = rows[perm[b : b + bs]]
            x = _rows(train_x, idx, axis)
            y = train_y[idx] if train_y is not None else no_labels
            state, m = step(state, put_batch(x, y, x_sharding, y_sharding), None)
            losses.append(m["loss"])
        val_auc = _auc(val_y, np.asarray(score(state.params, val_x)))
        rec = {"probe_loss": float(np.mean(jax.device_get(losses))), "probe_val_auc": val_auc}
        history.append(rec)
        if on_epoch is not None:
            on_epoch(epoch, rec)
        if val_auc > best_auc:  # a copy: the next step donates (deletes) state.params
            best = common.fresh_copy(state.params, rules_mod.replicated(mesh))
            best_auc, since = val_auc, 0
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
