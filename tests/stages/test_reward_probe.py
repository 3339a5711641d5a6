"""The reward probe's pure step (`reward.probe.probe_train_step`), jitted with shardings and the
head's state donated, against the closure-jitted, un-sharded step it replaced."""

import functools

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from girl_jax.models.heads import RewardHead
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.stages.reward import probe

D = 8


def _old_step(graphdef, objective, margin, learning_rate, weight_decay):
    """The probe's step before it was made pure: plain jax.jit, no shardings, no donation."""
    tx = optax.adamw(learning_rate, weight_decay=weight_decay)
    loss = functools.partial(probe.probe_loss, objective=objective, margin=margin)

    @jax.jit
    def step(hp, opt, x, y):
        value, grads = jax.value_and_grad(loss)(hp, graphdef, x, y)
        updates, opt = tx.update(grads, opt, hp)
        return optax.apply_updates(hp, updates), opt, value

    return tx, step


def _features(head: str, n: int, rng):
    """Cached features as the probe holds them, [n, ...], with labels a head can learn."""
    pooled = rng.normal(size=(n, 4 * D)).astype(np.float32)
    y = (pooled @ rng.normal(size=4 * D) + 0.5 * rng.normal(size=n) > 0).astype(np.float32)
    if head == "pooled_mlp":
        return pooled, y
    t = 6
    mask = (np.arange(t)[None] < rng.integers(3, t + 1, (n, 1))).astype(np.int32)
    x = {
        "pooled": pooled,
        "hidden": rng.normal(size=(n, t, D)).astype(np.float16),
        "mask": mask,
        "response_mask": mask * (np.arange(t)[None] >= 2),
    }
    return x, y


def _pairs(x, y):
    """Pointwise rows -> pairwise [2, k, ...] (chosen: a positive, rejected: a negative)."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    k = min(len(pos), len(neg))
    return jax.tree.map(lambda a: np.stack([a[pos[:k]], a[neg[:k]]]), x)


@pytest.mark.parametrize(
    "objective, head, mesh_cfg, bs, shards",
    [
        ("pointwise", "pooled_mlp", {"data": -1}, 32, 8),
        ("pairwise", "pooled_mlp", {"data": 2, "fsdp": 2, "tensor": 2}, 24, 4),
        ("pointwise", "attn_mlp", {"data": 2, "fsdp": 4}, 16, 8),
        ("pairwise", "attn_mlp", {"data": -1}, 12, 1),  # 8 does not divide 12: replicated
    ],
)
def test_sharded_probe_step_matches_the_plain_jit_and_donates(
    objective, head, mesh_cfg, bs, shards
):
    assert jax.device_count() == 8
    rng = np.random.default_rng(0)
    x, y = _features(head, 256, rng)
    if objective == "pairwise":
        x, y = _pairs(x, y), None
    graphdef, p = nnx.split(RewardHead(D, head, 16, rngs=nnx.Rngs(0)))
    margin, lr, wd = (0.1 if objective == "pairwise" else 0.0), 1e-2, 0.01
    tx_old, old_step = _old_step(graphdef, objective, margin, lr, wd)

    mesh = mesh_mod.make_mesh(mesh_cfg)
    rules = rules_mod.DEFAULT_RULES
    x_sh, y_sh = probe.batch_shardings(mesh, rules, bs, objective)
    tx, step, _ = probe._head_fns(graphdef, objective, margin, lr, wd, (x_sh, y_sh))
    state = probe.init_probe_state(p, tx, mesh)

    axis = 0 if objective == "pointwise" else 1
    hp, opt = p, tx_old.init(p)
    for i in range(5):
        idx = rng.permutation(jax.tree.leaves(x)[0].shape[axis])[:bs]
        xb = jax.tree.map(lambda a, idx=idx: np.take(a, idx, axis=axis), x)
        yb = y[idx] if y is not None else np.zeros((bs,), np.float32)
        hp, opt, want = old_step(hp, opt, xb, yb)

        batch = probe.put_batch(xb, yb, x_sh, y_sh)
        for a in jax.tree.leaves(batch):  # rows split over the "batch" axes of the rules
            assert len(a.sharding.device_set) == 8
            assert len({str(s.index) for s in a.addressable_shards}) == shards
        old = state
        state, m = step(old, batch, None)
        assert all(a.is_deleted() for a in jax.tree.leaves(old)), i  # donated
        np.testing.assert_allclose(float(m["loss"]), float(want), rtol=1e-5, atol=1e-6)

    assert int(state.step) == 5
    for a in jax.tree.leaves(state):  # the head's state: replicated on the mesh
        assert a.sharding.is_fully_replicated and len(a.sharding.device_set) == 8
    _assert_same_head(state.params, hp)
    scores = jax.jit(lambda hp, x: nnx.merge(graphdef, hp)(x))
    x0 = jax.tree.map(lambda a: a[:64] if objective == "pointwise" else a[0, :64], x)
    np.testing.assert_allclose(scores(state.params, x0), scores(hp, x0), rtol=1e-5, atol=1e-5)
    for got, ref in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(opt)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-5)
    assert not any(a.is_deleted() for a in jax.tree.leaves(p))  # the caller's head: intact


def _assert_same_head(got, want):
    """Every leaf within 1e-5, but the attention queries' biases: softmax ignores a shift of
    its logits, so their gradients are rounding noise (~1e-9) that Adam turns into steps of
    ~1e-5 whose sign depends on the reduction order; they stay small instead."""
    flat = jax.tree_util.tree_flatten_with_path(got)[0]
    for (path, g), w in zip(flat, jax.tree.leaves(want)):
        g, w = np.asarray(g), np.asarray(w)
        if "query" in jax.tree_util.keystr(path) and "bias" in jax.tree_util.keystr(path):
            assert np.abs(g).max() < 1e-3 and np.abs(w).max() < 1e-3
        else:
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5, err_msg=str(path))


def _old_fit_head(graphdef, p, train_x, train_y, val_x, val_y, *, bs, patience, seed, **kw):
    """`fit_head` as it was (pointwise), on the plain-jit step: same shuffling, same stopping."""
    tx, step = _old_step(graphdef, "pointwise", 0.0, kw["learning_rate"], kw["weight_decay"])
    score = jax.jit(lambda hp, x: nnx.merge(graphdef, hp)(x))
    n, order = len(train_y), np.random.default_rng(seed)
    opt, best, best_auc, since, history = tx.init(p), p, -1.0, 0, []
    for _ in range(kw["epochs"]):
        perm, losses = order.permutation(n), []
        for b in range(0, n - bs + 1, bs):
            idx = perm[b : b + bs]
            p, opt, value = step(p, opt, train_x[idx], train_y[idx])
            losses.append(float(value))
        auc = probe._auc(val_y, np.asarray(score(p, val_x)))
        history.append({"probe_loss": float(np.mean(losses)), "probe_val_auc": auc})
        if auc > best_auc:
            best, best_auc, since = p, auc, 0
        else:
            since += 1
            if since >= patience:
                break
    return best, history


def test_fit_head_on_the_sharded_step_keeps_the_old_numbers_and_early_stopping():
    """fit_head (default mesh: the 8 devices) == the old loop: losses, AUCs, the epoch it stops
    at and the best head kept (a copy: the steps after it donate the state it came from)."""
    rng = np.random.default_rng(1)
    x, y = _features("pooled_mlp", 600, rng)
    y = np.where(rng.random(600) < 0.3, 1 - y, y)  # noisy labels: validation AUC plateaus
    graphdef, p = nnx.split(RewardHead(D, "pooled_mlp", 16, rngs=nnx.Rngs(3)))
    kw = dict(epochs=30, learning_rate=3e-2, weight_decay=0.0)
    want, want_hist = _old_fit_head(
        graphdef, p, x[:400], y[:400], x[400:], y[400:], bs=40, patience=2, seed=7, **kw
    )
    got, hist = probe.fit_head(
        graphdef,
        p,
        x[:400],
        y[:400],
        x[400:],
        y[400:],
        objective="pointwise",
        batch_size=40,
        patience=2,
        seed=7,
        **kw,
    )
    assert len(hist) == len(want_hist) < kw["epochs"]  # stopped early, at the same epoch
    for h, w in zip(hist, want_hist):
        assert h["probe_loss"] == pytest.approx(w["probe_loss"], rel=1e-5, abs=1e-6)
        assert h["probe_val_auc"] == pytest.approx(w["probe_val_auc"], abs=1e-5)
    best_epoch = int(np.argmax([h["probe_val_auc"] for h in hist]))
    assert best_epoch < len(hist) - 1  # the best head is from before the last epoch's steps
    assert not any(a.is_deleted() for a in jax.tree.leaves(got))
    _assert_same_head(got, want)
