"""Traced PPO settings: one compiled program for runs that differ only in them, and cells
stacked on a vmapped axis that follow the same trajectories as the cells run alone."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from girl_jax import sweep_vmap
from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.models.heads import ScoreModel
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import state as state_mod
from girl_jax.rl import kl as kl_mod
from girl_jax.stages import common, ppo

CFG = DecoderConfig(family="gpt2", vocab_size=16, max_len=32, d_model=32, num_layers=1, num_heads=2)
# Two cells that differ in every traced setting.
CELLS = (
    dict(learning_rate=3e-3, critic_learning_rate=1e-3, kl_coef=0.01, clip_eps=0.2, vf_coef=0.5,
         ent_coef=0.0, gamma=1.0, lam=0.95, value_clip_eps=0.2),
    dict(learning_rate=1e-3, critic_learning_rate=3e-3, kl_coef=0.1, clip_eps=0.1, vf_coef=1.0,
         ent_coef=0.01, gamma=0.9, lam=0.8, value_clip_eps=0.5),
)  # fmt: skip


class CountReward(nnx.Module):
    def __init__(self):
        self.dummy = nnx.Param(jnp.zeros(()))

    def __call__(self, ids, mask):
        return jnp.cumsum((ids == 5) * mask, axis=1).astype(jnp.float32), {}


class Tok:
    eos_id, pad_id = 1, 0


def _cell(overrides):
    from girl_jax.configuration import load_config

    c = load_config("configs/default.py:smoke").ppo
    base = dict(batch_size=8, minibatches=2, epochs=2, max_new_tokens=6, advantage="gae",
                group_size=1, temperature=1.0, kl_controller="fixed")  # fmt: skip
    c.update(**{**base, **overrides})
    cfg = ppo.PPOConfig.from_config(c)
    mesh = mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    atx = ppo.state.scaled_optimizer(common.make_optimizer(1.0, 100, grad_clip=1.0, cosine=False),
                                    cfg.learning_rate)  # fmt: skip
    ctx = ppo.state.scaled_optimizer(common.make_optimizer(1.0, 100, grad_clip=1.0, cosine=False),
                                    cfg.critic_learning_rate)  # fmt: skip
    ag, actor, _ = state_mod.create_train_state(lambda r: Decoder(CFG, rngs=r), atx, mesh, None)
    cg, critic, _ = state_mod.create_train_state(lambda r: ScoreModel(CFG, rngs=r), ctx, mesh, None)
    rg, rparams = nnx.split(CountReward(), nnx.Param)
    controller = kl_mod.make_kl_controller("fixed", cfg.kl_coef)
    st = ppo.state.PPOState(
        actor=actor,
        critic=critic,
        kl=controller.init(),
        iteration=jnp.zeros((), jnp.int32),
        hyper=ppo.state.init_hyper(cfg),
    )
    frozen = ppo.state.Frozen(reference=jax.tree.map(jnp.copy, actor.params), reward=rparams)
    graphs = ppo.state.Graphs(actor=ag, critic=cg, reward=rg)
    fn = functools.partial(
        ppo.step.train_step,
        graphs=graphs,
        cfg=cfg,
        scfg=ppo.sampling_config(cfg, Tok(), greedy=False),
        actor_tx=atx,
        critic_tx=ctx,
        controller=controller,
    )
    return st, frozen, fn


def _batch():
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 16, (8, 6)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[:4, :2] = 0
    return {"prompt_ids": np.where(mask == 1, ids, 0), "prompt_mask": mask}


def test_traced_settings_compile_to_one_program():
    """Learning rates, KL coefficient, clip ranges, coefficients, gamma / lambda are arrays of
    the step: two runs that differ only in them lower to the same program."""
    batch = _batch()
    texts = []
    for overrides in CELLS:
        st, frozen, fn = _cell(overrides)
        texts.append(jax.jit(fn).lower(st, frozen, batch, jax.random.key(0)).as_text())
    assert texts[0] == texts[1]
    # ... whereas a static setting (the number of epochs) changes it
    st, frozen, fn = _cell({**CELLS[0], "epochs": 1})
    assert jax.jit(fn).lower(st, frozen, batch, jax.random.key(0)).as_text() != texts[0]


ITERS = 2


def _committed(tree, mesh):
    """`tree` committed to its shardings (replicated over `mesh` where it has none), and those
    shardings: a step jitted with them as out_shardings compiles once, not again for the
    shardings XLA would pick for the updated state (as the driver's steps)."""
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    sh = jax.tree.map(
        lambda x: x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding) else rep, tree
    )
    return jax.device_put(tree, sh), sh


@pytest.mark.slow
@pytest.mark.parametrize("minibatches", [2, 1])  # 1: epoch 1 through the rollout's forward
def test_vmapped_cells_follow_their_solo_trajectories(minibatches):
    batch = _batch()
    cells = [_cell({**o, "minibatches": minibatches}) for o in CELLS]
    assert ppo.step.reuses_rollout_forward(cells[0][2].keywords["cfg"]) == (minibatches == 1)
    frozen, fn = cells[0][1], cells[0][2]  # cell 0's static step serves both: settings traced
    keys = [jax.random.key(7), jax.random.key(11)]
    solo = []
    mesh = cells[0][0].actor.params["embed"]["embedding"].value.sharding.mesh
    for (st, fz, fn_i), key in zip(cells, keys):
        st, sh = _committed(st, mesh)
        step = jax.jit(fn_i, out_shardings=(sh, None, None))
        history = []
        for it in range(ITERS):
            st, m, _ = step(st, fz, batch, jax.random.fold_in(key, it))
            history.append({k: float(v) for k, v in m.items()})
        solo.append((st, history))

    stacked, vsh = _committed(sweep_vmap.stack([c[0] for c in cells]), mesh)
    vstep = jax.jit(jax.vmap(fn, in_axes=(0, None, 0, 0)), out_shardings=(vsh, None, None))
    vbatch = jax.tree.map(lambda x: np.stack([x, x]), batch)
    for it in range(ITERS):
        rng = jnp.stack([jax.random.fold_in(k, it) for k in keys])
        stacked, m, _ = vstep(stacked, frozen, vbatch, rng)
        for i in range(2):
            for k in ("kl", "reward", "policy_loss", "value_loss", "kl_coef"):
                np.testing.assert_allclose(
                    float(m[k][i]), solo[i][1][it][k], rtol=2e-4, atol=2e-5, err_msg=(i, it, k)
                )
    for i in range(2):
        got = sweep_vmap.unstack(stacked, i)
        for a, b in zip(
            jax.tree.leaves(got.actor.params), jax.tree.leaves(solo[i][0].actor.params)
        ):
            # Adam divides by sqrt(v): coordinates whose gradients are ~0 amplify the float
            # reordering of a batched matmul to ~1e-5 (the updates themselves are ~1e-3).
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-3, atol=5e-5)
    # the two cells really differ (different settings and keys)
    assert solo[0][1][-1]["kl_coef"] != solo[1][1][-1]["kl_coef"]
    a0 = jax.tree.leaves(solo[0][0].actor.params)[0]
    a1 = jax.tree.leaves(solo[1][0].actor.params)[0]
    assert not np.allclose(np.asarray(a0), np.asarray(a1))


def test_groups_split_on_static_settings_only():
    from girl_jax.configuration import load_config
    from girl_jax.sweep import plan

    config = load_config("configs/default.py:smoke", ["ppo.group_size=2"])
    grid = [("ppo.learning_rate", ["1e-4", "3e-4"]), ("ppo.epochs", ["1", "2"])]
    cells = plan(config, grid, [0, 1])
    groups = sweep_vmap.groups(cells)
    assert len(groups) == 2 and all(len(g) == 4 for g in groups)
    for g in groups:
        assert len({c.config.ppo.epochs for c in g}) == 1
        assert {c.config.ppo.learning_rate for c in g} == {1e-4, 3e-4}
        assert {c.seed for c in g} == {0, 1}
