"""NaN / Inf in a loss or gradient: the update is refused, the run stops naming stage and step."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import CONFIG, TINY, assert_one_line_error, run_cli

from girl_jax.errors import NumericsError
from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common, reward, sft

CFG = DecoderConfig(family="gpt2", vocab_size=40, max_len=32, d_model=16, num_layers=1, num_heads=2)


def _state(model_fn, tx):
    mesh = mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    g, st, _ = state_mod.create_train_state(model_fn, tx, mesh, None)
    return g, st


def _poison(st, value):
    leaves, treedef = jax.tree.flatten(st.params)
    leaves[-1] = leaves[-1].at[(0,) * leaves[-1].ndim].set(value)
    return st.replace(params=jax.tree.unflatten(treedef, leaves))


def _host(tree):
    return [np.asarray(x).copy() for x in jax.tree.leaves(tree)]


def _lm_batch(B=4, L=12):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 40, (B, L)).astype(np.int32)
    mask = np.ones((B, L), np.int32)
    target = (np.arange(L)[None] >= 4).astype(np.int32).repeat(B, 0)
    return {"input_ids": ids, "attention_mask": mask, "target_mask": target}


@pytest.mark.parametrize("value", [jnp.nan, jnp.inf])
def test_sft_step_refuses_a_nonfinite_update(value):
    tx = optax.adam(1e-2)
    g, st = _state(lambda r: Decoder(CFG, rngs=r), tx)
    bad = _poison(st, value)
    params, opt = _host(bad.params), _host(bad.opt_state)
    new, m = jax.jit(functools.partial(sft.train_step, graphdef=g, tx=tx))(bad, _lm_batch(), None)
    assert float(m["finite"]) == 0.0
    for a, b in zip(params, _host(new.params)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(opt, _host(new.opt_state)):  # Adam moments and count untouched too
        np.testing.assert_array_equal(a, b)
    # The same step on clean params does update: the guard is not refusing everything.
    clean, m2 = jax.jit(functools.partial(sft.train_step, graphdef=g, tx=tx))(st, _lm_batch(), None)
    assert float(m2["finite"]) == 1.0
    assert any(not np.array_equal(a, b) for a, b in zip(_host(st.params), _host(clean.params)))


def test_reward_step_refuses_a_nonfinite_update():
    tx = optax.adam(1e-2)
    model_fn = functools.partial(_reward_model)
    g, st = _state(model_fn, tx)
    bad = _poison(st, jnp.nan)
    before = _host(bad.params)
    batch = {
        "input_ids": _lm_batch()["input_ids"],
        "attention_mask": np.ones((4, 12), np.int32),
        "label": np.array([1, 0, 1, 0], np.float32),
    }
    cfg = reward.RewardConfig(
        objective="pointwise",
        head="last",
        head_hidden=8,
        probe_epochs=0,
        probe_batch_size=4,
        probe_learning_rate=1e-3,
        probe_patience=1,
        batch_size=4,
        steps=1,
        learning_rate=1e-2,
        warmup_steps=0,
        weight_decay=0.0,
        grad_clip=1.0,
        margin=0.0,
        center_coef=0.0,
        eval_every=1,
        checkpoint_every=1,
        keep=1,
        log_every=1,
    )
    new, m = jax.jit(functools.partial(reward.train_step, graphdef=g, tx=tx, cfg=cfg))(
        bad, batch, None
    )
    assert float(m["finite"]) == 0.0
    for a, b in zip(before, _host(new.params)):
        np.testing.assert_array_equal(a, b)


def _reward_model(rngs):
    import ml_collections

    from girl_jax.stages.reward import build_model_fn

    config = ml_collections.ConfigDict(
        {
            "model": dict(
                family="gpt2",
                vocab_size=40,
                max_len=32,
                d_model=16,
                num_layers=1,
                num_heads=2,
                num_kv_heads=0,
                mlp_dim=0,
                dtype="float32",
                remat=False,
                scan_layers=False,
                lora_rank=0,
                lora_alpha=16.0,
            ),
            "reward": dict(head="last", head_hidden=8),
        }
    )
    return build_model_fn(config, 40, 0)[1](rngs)


def test_check_finite_names_stage_and_step_or_skips():
    bad = {"loss": float("nan"), "grad_norm": 1.0, "finite": 0.0}
    with pytest.raises(NumericsError, match=r"stage ppo.*step 7.*loss"):
        common.check_finite(bad, "ppo", 7)
    assert common.check_finite(bad, "ppo", 7, on_nonfinite="skip") is True
    assert common.check_finite({"loss": 1.0, "finite": 1.0}, "sft", 3) is False


def _refuse_at(original, bad_steps):
    """Wraps a stage's train_step: at the given state.step values the update is refused."""

    def step(state, *args, **kwargs):
        new, m, *rest = (*original(state, *args, **kwargs),)
        bad = jnp.isin(state.step, jnp.asarray(bad_steps))
        kept = common.select_tree(bad, state.replace(step=state.step + 1), new)
        m = dict(
            m, finite=jnp.where(bad, 0.0, m["finite"]), loss=jnp.where(bad, jnp.nan, m["loss"])
        )
        return (kept, m, *rest)

    return step


@pytest.mark.slow
def test_sft_run_stops_at_a_transient_nan_naming_its_step(tiny_run, tmp_path, monkeypatch):
    """One NaN step between two log steps must still stop the run (not vanish silently)."""
    monkeypatch.setattr(sft, "train_step", _refuse_at(sft.train_step, [1]))  # the 2nd step
    workdir = tiny_run.copy(str(tmp_path / "w"), ["data"])
    res = run_cli(["sft", "--config", CONFIG, "--workdir", workdir, *TINY])
    line = assert_one_line_error(res, "stage sft", "step 2")
    assert "non-finite" in line
