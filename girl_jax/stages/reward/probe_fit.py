"""The reward head's fit on cached features: its pure step (`probe_train_step`), the batch
layout on the mesh, and `fit_head` (Adam epochs, early stopping on validation AUC).

Split from `probe.py` (which computes the cached features and runs the probe and the ensemble
on them, and re-exports these names). The step is jitted like the other stages' steps: the
batch rows over the mesh's data axes (logical rules), the head's state replicated and donated.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from sklearn.metrics import roc_auc_score

from girl_jax import host_threads
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common


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
