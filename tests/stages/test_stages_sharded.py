"""The real SFT, reward and PPO steps on 8 simulated devices match 1 device (f32, 3 steps)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from girl_jax.configuration import load_config
from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.models.heads import ScoreModel
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.rl import kl as kl_mod
from girl_jax.stages import common, ppo, reward, sft

CFG = DecoderConfig(
    family="llama",
    vocab_size=64,
    max_len=32,
    d_model=32,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    mlp_dim=64,
    tie_embeddings=False,
)
MESHES = [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)]
RULES = rules_mod.normalize_rules(None)


def _mesh(shape):
    if shape is None:
        return mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    d, f, t = shape
    return mesh_mod.make_mesh({"data": d, "fsdp": f, "tensor": t})


def _tokens(seed, B=8, L=16):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, 64, (B, L)).astype(np.int32)
    lengths = rng.integers(min(10, L), L + 1, B)
    mask = (np.arange(L)[None] < lengths[:, None]).astype(np.int32)
    return np.where(mask == 1, ids, 0), mask


def _run_sft(shape):
    mesh = _mesh(shape)
    tx = common.make_optimizer(1e-2, 10, warmup_steps=1, weight_decay=0.01, grad_clip=1.0)
    g, st, sh = state_mod.create_train_state(lambda r: Decoder(CFG, rngs=r), tx, mesh, RULES)
    step = jax.jit(
        functools.partial(
            sft.train_step, graphdef=g, tx=tx, accum=2, response_len=12
        ),  # as the stage
        in_shardings=(sh, state_mod.batch_sharding(mesh), None),
        out_shardings=(sh, None),
        donate_argnums=(0,),
    )
    losses = []
    with rules_mod.activate(mesh, RULES):
        for i in range(3):
            ids, mask = _tokens(i)
            target = mask.copy()
            target[:, :4] = 0
            batch = state_mod.put_batch(
                {"input_ids": ids, "attention_mask": mask, "target_mask": target}, mesh
            )
            st, m = step(st, batch, None)
            losses.append(float(m["loss"]))
    return losses, jax.device_get(st.params)


def _run_reward(shape):
    mesh = _mesh(shape)
    c = load_config("configs/default.py:smoke").reward
    cfg = reward.RewardConfig.from_config(c)
    tx = reward.make_tx(cfg)
    g, st, sh = state_mod.create_train_state(
        lambda r: ScoreModel(CFG, rngs=r, zero_init_head=False), tx, mesh, RULES
    )
    step = jax.jit(
        functools.partial(reward.train_step, graphdef=g, tx=tx, cfg=cfg),
        in_shardings=(sh, state_mod.batch_sharding(mesh), None),
        out_shardings=(sh, None),
        donate_argnums=(0,),
    )
    losses = []
    with rules_mod.activate(mesh, RULES):
        for i in range(3):
            ids, mask = _tokens(10 + i)
            label = (np.arange(8) % 2).astype(np.float32)
            batch = state_mod.put_batch(
                {"input_ids": ids, "attention_mask": mask, "label": label}, mesh
            )
            st, m = step(st, batch, None)
            losses.append(float(m["loss"]))
    return losses, jax.device_get(st.params)


class _Tok:
    eos_id, pad_id = 1, 0


def _run_ppo(shape):
    mesh = _mesh(shape)
    c = load_config("configs/default.py:smoke").ppo
    # Two iterations: a later greedy rollout can flip a near-tied token when a tensor-parallel
    # reduction rounds differently (1e-7), a discrete divergence rather than a sharding bug.
    c.update(batch_size=8, minibatches=2, epochs=2, max_new_tokens=6, kl_controller="adaptive")
    cfg = ppo.PPOConfig.from_config(c)
    atx = common.make_optimizer(1e-3, 10, grad_clip=1.0, cosine=False)
    ctx = common.make_optimizer(1e-3, 10, grad_clip=1.0, cosine=False)
    ag, actor, ash = state_mod.create_train_state(lambda r: Decoder(CFG, rngs=r), atx, mesh, RULES)
    cg, critic, csh = state_mod.create_train_state(
        lambda r: ScoreModel(CFG, rngs=r, zero_init_head=False), ctx, mesh, RULES
    )
    controller = kl_mod.make_kl_controller("adaptive", 0.05, 1.0, 100.0)
    ref = common.fresh_copy(actor.params, ash.params)
    rm = common.fresh_copy(critic.params, csh.params)
    st = ppo.state.PPOState(
        actor=actor, critic=critic, kl=controller.init(), iteration=jnp.zeros((), jnp.int32)
    )
    graphs = ppo.state.Graphs(actor=ag, critic=cg, reward=cg)
    # The state keeps its shardings and is committed, as in the driver: one compilation, not a
    # second one for the shardings XLA would pick for the updated state.
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    shardings = jax.tree.map(
        lambda x: x.sharding if isinstance(x.sharding, jax.sharding.NamedSharding) else rep, st
    )
    st = jax.device_put(st, shardings)
    step = jax.jit(
        functools.partial(
            ppo.step.train_step,
            graphs=graphs,
            cfg=cfg,
            scfg=ppo.sampling_config(cfg, _Tok(), greedy=True),
            actor_tx=atx,
            critic_tx=ctx,
            controller=controller,
        ),
        out_shardings=(shardings, None, None),
    )
    losses = []
    with rules_mod.activate(mesh, RULES):
        for i in range(2):
            ids, _ = _tokens(20 + i, L=6)
            mask = np.ones_like(ids)
            mask[:4, :2] = 0
            batch = state_mod.put_batch(
                {"prompt_ids": np.where(mask == 1, ids, 0), "prompt_mask": mask}, mesh
            )
            st, m, _ = step(
                st, ppo.state.Frozen(reference=ref, reward=rm), batch, jax.random.key(i)
            )
            losses.append(float(m["total_loss"]))
    return losses, jax.device_get(st.actor.params)


RUNNERS = {"sft": _run_sft, "reward": _run_reward, "ppo": _run_ppo}


@functools.cache
def _reference(stage):
    return RUNNERS[stage](None)


@pytest.mark.slow
@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_stage_step_matches_single_device(stage, shape):
    ref_losses, ref_params = _reference(stage)
    losses, params = RUNNERS[stage](shape)
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5, atol=1e-5)
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5)
