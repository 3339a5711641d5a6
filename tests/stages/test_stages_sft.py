"""SFT loss and step: targets only, pad invariance, accumulation, NaN guard."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import sft

CFG = DecoderConfig(family="gpt2", vocab_size=40, max_len=32, d_model=32, num_layers=2, num_heads=2)


def _batch(rng, B=4, L=16):
    ids = rng.integers(3, 40, (B, L)).astype(np.int32)
    lengths = rng.integers(8, L + 1, B)
    prompt = rng.integers(2, 6, B)
    attn = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    target = ((np.arange(L)[None] >= prompt[:, None]) & (attn == 1)).astype(np.int32)
    ids = np.where(attn == 1, ids, 0)
    return {"input_ids": ids, "attention_mask": attn, "target_mask": target}


def _state(tx=None, shardings=False):
    mesh = mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    tx = tx or optax.adam(1e-2)
    g, st, sh = state_mod.create_train_state(lambda r: Decoder(CFG, rngs=r), tx, mesh, None)
    return (g, st, tx, sh) if shardings else (g, st, tx)


def test_loss_counts_only_target_tokens_against_numpy():
    g, st, _ = _state()
    b = _batch(np.random.default_rng(0))
    nll, n = sft.lm_loss_sums(st.params, g, b)
    logits, _ = Decoder.__call__(
        __import__("flax").nnx.merge(g, st.params), b["input_ids"], b["attention_mask"]
    )
    logp = np.asarray(jax.nn.log_softmax(logits, -1))
    ref, cnt = 0.0, 0
    for i in range(b["input_ids"].shape[0]):
        for t in range(1, b["input_ids"].shape[1]):
            if b["target_mask"][i, t]:
                ref -= logp[i, t - 1, b["input_ids"][i, t]]
                cnt += 1
    np.testing.assert_allclose(float(nll), ref, rtol=1e-5)
    assert float(n) == cnt


def test_loss_ignores_pad_tokens_and_prompt_targets():
    g, st, _ = _state()
    b = _batch(np.random.default_rng(1))
    base = float(sft.lm_loss_sums(st.params, g, b)[0])
    changed = dict(b)
    changed["input_ids"] = np.where(b["attention_mask"] == 0, 7, b["input_ids"])  # pad content
    assert float(sft.lm_loss_sums(st.params, g, changed)[0]) == pytest.approx(base, rel=1e-6)
    # Dropping the target flag at a prompt position changes nothing (it was never a target);
    # dropping it at a JD position does.
    first_target = np.argmax(b["target_mask"][0])
    less = dict(b)
    less["target_mask"] = b["target_mask"].copy()
    less["target_mask"][0, first_target] = 0
    assert float(sft.lm_loss_sums(st.params, g, less)[0]) != pytest.approx(base, rel=1e-6)


def _encoded_batch():
    """Rows as `encode_sft` lays them out: prompt, then the response (<= 6 tokens), then pads;
    one row whose response fills all 6, one with no targets (an eval batch's padding row)."""
    rng = np.random.default_rng(5)
    B, L, R = 5, 16, 6
    prompt = np.array([3, 9, 5, 2, 4])
    resp = np.array([6, 1, 4, 0, 3])
    ids = rng.integers(3, 40, (B, L)).astype(np.int32)
    pos = np.arange(L)[None]
    attn = (pos < (prompt + resp)[:, None]).astype(np.int32)
    target = ((pos >= prompt[:, None]) & (attn == 1)).astype(np.int32)
    return {
        "input_ids": np.where(attn == 1, ids, 0),
        "attention_mask": attn,
        "target_mask": target,
    }, R


def test_response_positions_are_the_logits_that_predict_targets():
    b, R = _encoded_batch()
    pos, w = jax.device_get(sft.response_positions(jnp.asarray(b["target_mask"]), R))
    for i in range(len(pos)):
        want = [t - 1 for t in range(1, b["target_mask"].shape[1]) if b["target_mask"][i, t]]
        assert list(pos[i][w[i] > 0]) == want
        assert (pos[i] <= b["target_mask"].shape[1] - 2).all()  # clipped into the row


def test_response_only_head_equals_the_full_head():
    """The LM head on the `response_len` positions that predict targets: the same loss, token
    count and update as the head on every position (float32 rounding apart), with gradient
    accumulation (2 micro-batches) as the stage can run it."""
    g, st, tx = _state(optax.sgd(0.1))  # (adam's first step would amplify rounding noise)
    b, R = _encoded_batch()
    b = {k: np.concatenate([v, v[::-1]]) for k, v in b.items()}  # 10 rows: accum 2 splits them
    L = b["input_ids"].shape[1]
    sums = {  # one jitted loss per width: None (every position), R, too narrow, >= L - 1
        r: jax.device_get(
            jax.jit(functools.partial(sft.lm_loss_sums, graphdef=g, response_len=r))(
                st.params, batch=b
            )
        )
        for r in (None, R, R - 1, L)
    }
    full, part = sums[None], sums[R]
    np.testing.assert_allclose(part[0], full[0], rtol=1e-6)
    assert float(part[1]) == float(full[1]) == b["target_mask"][:, 1:].sum()
    np.testing.assert_allclose(sums[L][0], full[0], rtol=1e-6)  # past the row: every position
    assert float(sums[R - 1][1]) < float(full[1])  # too narrow a width drops targets: counted
    steps = [
        jax.jit(functools.partial(sft.train_step, graphdef=g, tx=tx, accum=2, response_len=r))
        for r in (None, R)
    ]
    (s1, m1), (s2, m2) = (step(st, b, None) for step in steps)
    np.testing.assert_allclose(float(m2["loss"]), float(m1["loss"]), rtol=1e-6)
    np.testing.assert_allclose(float(m2["grad_norm"]), float(m1["grad_norm"]), rtol=1e-5)
    for a, c in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-6)


def test_grad_accumulation_equals_one_big_batch():
    g, st, tx = _state(optax.sgd(0.1))
    b = _batch(np.random.default_rng(2), B=8)
    one = functools.partial(sft.train_step, graphdef=g, tx=tx, accum=1)
    two = functools.partial(sft.train_step, graphdef=g, tx=tx, accum=2)
    s1, m1 = jax.jit(one)(st, b, None)
    s2, m2 = jax.jit(two)(st, b, None)
    np.testing.assert_allclose(float(m1["loss"]), float(m2["loss"]), rtol=1e-5)
    for a, c in zip(jax.tree.leaves(s1.params), jax.tree.leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(c), atol=1e-6)


def test_nonfinite_update_is_refused():
    g, st, tx = _state()
    leaves, treedef = jax.tree.flatten(st.params)
    leaves[0] = leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan)
    poisoned = st.replace(params=jax.tree.unflatten(treedef, leaves))
    before = [np.asarray(x).copy() for x in jax.tree.leaves(poisoned.params)]
    new, m = jax.jit(functools.partial(sft.train_step, graphdef=g, tx=tx))(
        poisoned, _batch(np.random.default_rng(3)), None
    )
    assert float(m["finite"]) == 0.0
    for a, c in zip(before, jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(a, np.asarray(c))


def test_training_lowers_loss():
    g, st, tx, sh = _state(optax.adam(3e-3), shardings=True)
    b = _batch(np.random.default_rng(4), B=8)
    # out_shardings: the state keeps its shardings, one compilation
    step = jax.jit(functools.partial(sft.train_step, graphdef=g, tx=tx), out_shardings=(sh, None))
    first = None
    for _ in range(30):
        st, m = step(st, b, None)
        first = first if first is not None else float(m["loss"])
    assert float(m["loss"]) < 0.5 * first
