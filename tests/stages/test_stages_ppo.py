"""The whole jitted PPO iteration on a toy task: a reward that counts one token must go up."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.models.heads import ScalarHead, ScoreModel
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import state as state_mod
from girl_jax.rl import kl as kl_mod
from girl_jax.stages import common, ppo

CFG = DecoderConfig(family="gpt2", vocab_size=16, max_len=32, d_model=32, num_layers=1, num_heads=2)
TARGET = 5


def get_config(variant):
    from girl_jax.configuration import load_config

    return load_config(f"configs/default.py:{variant}")


class CountReward(nnx.Module):
    """values[t] = how many of the tokens up to t are TARGET: the last-token score is the count."""

    def __init__(self):
        self.dummy = nnx.Param(jnp.zeros(()))

    def __call__(self, ids, mask):
        return jnp.cumsum((ids == TARGET) * mask, axis=1).astype(jnp.float32), {}


class Tok:
    eos_id, pad_id = 1, 0


def _setup(**overrides):
    c = get_config("smoke").ppo
    c.update(
        batch_size=16,
        minibatches=2,
        epochs=2,
        max_new_tokens=8,
        learning_rate=3e-3,
        critic_learning_rate=3e-3,
        kl_coef=0.01,
        kl_controller="fixed",
        missing_eos_penalty=0.0,
        score_clip=0.0,
        temperature=1.0,  # the toy tasks were tuned with rollouts at temperature 1
        advantage="gae",
        group_size=1,
    )
    c.update(**overrides)
    cfg = ppo.PPOConfig.from_config(c)
    mesh = mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
    atx = common.make_optimizer(cfg.learning_rate, 100, grad_clip=1.0, cosine=False)
    ctx = common.make_optimizer(cfg.critic_learning_rate, 100, grad_clip=1.0, cosine=False)
    ag, actor, _ = state_mod.create_train_state(lambda r: Decoder(CFG, rngs=r), atx, mesh, None)
    if cfg.critic == "value_head":  # a value head on the policy trunk
        cg, critic, _ = state_mod.create_train_state(
            lambda r: ScalarHead(CFG.d_model, rngs=r), ctx, mesh, None
        )
    else:
        cg, critic, _ = state_mod.create_train_state(
            lambda r: ScoreModel(CFG, rngs=r), ctx, mesh, None
        )
    rg, rparams = nnx.split(CountReward(), nnx.Param)
    controller = kl_mod.make_kl_controller("fixed", cfg.kl_coef)
    ref = jax.tree.map(jnp.copy, actor.params)
    st = ppo.state.PPOState(
        actor=actor, critic=critic, kl=controller.init(), iteration=jnp.zeros((), jnp.int32)
    )
    frozen = ppo.state.Frozen(reference=ref, reward=rparams)
    graphs = ppo.state.Graphs(actor=ag, critic=cg, reward=rg)
    # The state keeps its shardings and is committed (as the driver's step is jitted): one
    # compilation, not a second one for the P() specs XLA gives the updated state.
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
            scfg=ppo.sampling_config(cfg, Tok(), greedy=False),
            actor_tx=atx,
            critic_tx=ctx,
            controller=controller,
        ),
        out_shardings=(shardings, None, None),
    )
    rng = np.random.default_rng(0)
    ids = rng.integers(2, 16, (cfg.batch_size, 6)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[: cfg.batch_size // 2, :2] = 0  # left padding in half of the rows
    batch = {"prompt_ids": np.where(mask == 1, ids, 0), "prompt_mask": mask}
    return cfg, st, frozen, step, batch, graphs


@pytest.mark.slow
@pytest.mark.parametrize(
    "advantage,group,extra",
    [
        ("gae", 1, {}),
        ("gae", 1, {"critic": "value_head"}),
        ("grpo", 4, {}),
        ("rloo", 4, {}),
        ("reinforce", 1, {}),
        ("reinforce", 1, {"baseline": "mean"}),
        ("reinforce", 1, {"baseline": "value", "critic": "value_head"}),
        ("bon", 4, {"whiten_advantages": False}),
        ("bon", 4, {"algorithm": "bon_distill"}),  # = bon + nll loss, unwhitened
    ],
)
def test_ppo_raises_toy_reward(advantage, group, extra):
    cfg, st, frozen, step, batch, _ = _setup(advantage=advantage, group_size=group, **extra)
    rewards = []
    # 30 iterations: with the inverse-CDF sampler, rloo's gain by iteration 25 ranged 0.56-5.06
    # over 16 key offsets (these keys: 0.56); by 30 these keys give 2.79.
    for i in range(30):
        st, m, (tokens, mask) = step(st, frozen, batch, jax.random.key(i))
        rewards.append(float(m["proxy_reward"]))
        assert float(m["finite"]) == 1.0
    first, last = np.mean(rewards[:3]), np.mean(rewards[-3:])
    assert last > first + 1.0, (advantage, rewards)
    assert int(st.iteration) == 30
    if cfg.needs_critic and cfg.critic == "value_head":  # the head learned something
        head = jax.tree.leaves(st.critic.params)
        assert any(float(jnp.abs(x).max()) > 0 for x in head)


def test_rollout_semantics_score_at_last_token_and_kl_zero_at_start():
    cfg, st, frozen, _, batch, graphs = _setup(old_logprobs="recompute")
    scfg = ppo.sampling_config(cfg, Tok(), greedy=False)
    data, stats, out = ppo.step.rollout(
        st, frozen, batch, jax.random.key(0), graphs=graphs, cfg=cfg, scfg=scfg
    )
    # actor == reference at the start: per-token KL is exactly 0
    np.testing.assert_allclose(
        np.asarray(data["logp_old"]), np.asarray(data["logp_ref"]), atol=1e-6
    )
    assert abs(float(stats["kl"])) < 1e-5
    # old log-probs recomputed by a full forward equal the sampler's (same temperature)
    m = np.asarray(out.mask)
    np.testing.assert_allclose(
        np.asarray(data["logp_old"]) * m, np.asarray(out.logprobs) * m, atol=1e-4
    )
    # the RM score is read at the last valid token: the count over the whole valid sequence
    ids, msk = np.asarray(data["ids"]), np.asarray(data["mask"])
    expected = ((ids == TARGET) * msk).sum(1)
    np.testing.assert_allclose(float(stats["proxy_reward"]), expected.mean(), rtol=1e-6)


def test_rollout_copy_bias_explores_while_the_loss_sees_the_unbiased_policy():
    """ppo.rollout_copy_bias: the rollouts are drawn with the prompt's tokens favoured, the old
    log-probs (and the KL) are the unbiased actor's, recomputed; the greedy sampler never biases."""
    cfg, st, frozen, _, batch, graphs = _setup(rollout_copy_bias=4.0)
    scfg = ppo.sampling_config(cfg, Tok(), greedy=False)
    assert scfg.encoder_repetition_penalty == 4.0
    assert ppo.sampling_config(cfg, Tok(), greedy=True).encoder_repetition_penalty == 1.0
    plain = dataclasses.replace(scfg, encoder_repetition_penalty=1.0)
    key = jax.random.key(0)
    data, stats, out = ppo.step.rollout(st, frozen, batch, key, graphs=graphs, cfg=cfg, scfg=scfg)
    _, _, out_plain = ppo.step.rollout(st, frozen, batch, key, graphs=graphs, cfg=cfg, scfg=plain)
    m = np.asarray(out.mask)
    # the sampler recorded the biased distribution's log-probs, the loss has the policy's own
    assert np.abs((np.asarray(data["logp_old"]) - np.asarray(out.logprobs)) * m).max() > 1e-2
    np.testing.assert_allclose(
        np.asarray(data["logp_old"]), np.asarray(data["logp_ref"]), atol=1e-6
    )
    assert abs(float(stats["kl"])) < 1e-5
    # ... and the biased rollouts hold more of the prompt's tokens than the plain ones
    prompts = np.asarray(batch["prompt_ids"]), np.asarray(batch["prompt_mask"])

    def copied(o):  # share of the generated tokens that are among the row's prompt tokens
        rows = zip(np.asarray(o.tokens), np.asarray(o.mask), *prompts)
        hits = [np.isin(t, p[pm > 0]) & (k > 0) for t, k, p, pm in rows]
        return np.sum(hits) / max(np.asarray(o.mask).sum(), 1)

    assert copied(out) > copied(out_plain)


def test_old_logprobs_from_the_sampler_equal_a_recomputed_forward():
    """ppo.old_logprobs=sampler (opt-in) skips the actor's forward after sampling: the rollout's
    old log-probs, its KL and one whole iteration's update equal the recomputed path's."""
    cfg_s, st, frozen, step_s, batch, graphs = _setup(old_logprobs="sampler")
    cfg_r, _, _, step_r, _, _ = _setup(old_logprobs="recompute")
    scfg = ppo.sampling_config(cfg_s, Tok(), greedy=False)
    key = jax.random.key(3)
    d_s, s_s, out = ppo.step.rollout(st, frozen, batch, key, graphs=graphs, cfg=cfg_s, scfg=scfg)
    d_r, s_r, _ = ppo.step.rollout(st, frozen, batch, key, graphs=graphs, cfg=cfg_r, scfg=scfg)
    m = np.asarray(d_s["resp_mask"])
    assert 0 < m.sum() < m.size  # some rows stop early: the masked tail is exercised
    np.testing.assert_array_equal(np.asarray(d_s["logp_old"]), np.asarray(out.logprobs) * m)
    np.testing.assert_allclose(
        np.asarray(d_s["logp_old"]) * m, np.asarray(d_r["logp_old"]) * m, atol=1e-4
    )
    np.testing.assert_allclose(float(s_s["kl"]), float(s_r["kl"]), atol=1e-4)
    np.testing.assert_allclose(
        np.asarray(d_s["advantages"]) * m, np.asarray(d_r["advantages"]) * m, atol=1e-3
    )
    # one full iteration each way (same key: same samples), then a second from there
    a, b = st, jax.tree.map(jnp.copy, st)
    for i in range(2):
        a, ma, _ = step_s(a, frozen, batch, jax.random.key(10 + i))
        b, mb, _ = step_r(b, frozen, batch, jax.random.key(10 + i))
        for k in ("policy_loss", "kl", "proxy_reward", "ratio_mean"):
            np.testing.assert_allclose(float(ma[k]), float(mb[k]), rtol=1e-3, atol=1e-4)
    # Adam turns the ~1e-6 log-prob differences into step-size ones on near-zero gradients:
    # the two updates agree to 2% of the largest parameter move (lr 3e-3 per step)
    moved = [
        np.asarray(y) - np.asarray(x0)
        for x0, y in zip(*map(jax.tree.leaves, (st.actor.params, b.actor.params)))
    ]
    scale = max(float(np.abs(d).max()) for d in moved)
    assert scale > 1e-3
    for x, y in zip(jax.tree.leaves(a.actor.params), jax.tree.leaves(b.actor.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=0.02 * scale)


def test_config_errors_name_keys():
    from girl_jax.errors import ConfigError

    c = get_config("smoke").ppo
    c.advantage = "nope"
    with pytest.raises(ConfigError, match="advantage"):
        ppo.PPOConfig.from_config(c)
    c = get_config("smoke").ppo
    c.advantage, c.group_size = "grpo", 1
    with pytest.raises(ConfigError, match="group_size"):
        ppo.PPOConfig.from_config(c)
    c = get_config("smoke").ppo
    c.old_logprobs = "cached"
    with pytest.raises(ConfigError, match="old_logprobs must be sampler or recompute"):
        ppo.PPOConfig.from_config(c)
    c = get_config("smoke").ppo
    c.rollout_copy_bias = 0.0
    with pytest.raises(ConfigError, match="rollout_copy_bias must be > 0"):
        ppo.PPOConfig.from_config(c)
    c.rollout_copy_bias, c.old_logprobs = 1.5, "sampler"
    with pytest.raises(ConfigError, match="rollout_copy_bias != 1 needs"):
        ppo.PPOConfig.from_config(c)
    c = get_config("smoke").ppo
    c.batch_size, c.rollout_rows_per_pass = 16, 6
    with pytest.raises(ConfigError, match="rollout_rows_per_pass=6 must divide"):
        ppo.PPOConfig.from_config(c)
    c.rollout_rows_per_pass = -1
    with pytest.raises(ConfigError, match="rollout_rows_per_pass must be an int >= 0"):
        ppo.PPOConfig.from_config(c)
    assert dataclasses.is_dataclass(ppo.PPOConfig)


def test_rollout_in_passes_keeps_ppo_exact():
    """ppo.rollout_rows_per_pass: the sampler decodes the batch in passes, and the rollout is
    still exact PPO: the recomputed old log-probs equal the sampler's, the KL starts at 0."""
    cfg, st, frozen, _, batch, graphs = _setup(rollout_rows_per_pass=4)
    scfg = ppo.sampling_config(cfg, Tok(), greedy=False)
    assert scfg.rows_per_pass == 4
    data, stats, out = ppo.step.rollout(
        st, frozen, batch, jax.random.key(0), graphs=graphs, cfg=cfg, scfg=scfg
    )
    m = np.asarray(out.mask)
    assert m.sum(1).min() > 0 and np.asarray(out.tokens).shape == (16, 8)
    np.testing.assert_allclose(
        np.asarray(data["logp_old"]) * m, np.asarray(out.logprobs) * m, atol=1e-4
    )
    assert abs(float(stats["kl"])) < 1e-5


@pytest.mark.parametrize(
    "advantage,group,critic", [("gae", 1, "separate"), ("gae", 1, "value_head"), ("grpo", 4, "")]
)
def test_first_epoch_gradient_through_the_rollout_forward(advantage, group, critic):
    """minibatches=1: epoch 1's gradient pulled back through the rollout's own forward (one
    `jax.vjp`) equals a fresh forward's gradient, for the actor and (GAE) the critic, a separate
    one or a value head on the actor's trunk; its ratio is exactly 1; whole iterations match the
    path without the reuse."""
    kw = dict(minibatches=1, advantage=advantage, group_size=group, critic=critic or "separate")
    cfg, st, frozen, step, batch, graphs = _setup(**kw)
    cfg_off, _, _, step_off, _, _ = _setup(**kw, reuse_rollout_forward=False)
    assert ppo.step.reuses_rollout_forward(cfg) and not ppo.step.reuses_rollout_forward(cfg_off)
    scfg = ppo.sampling_config(cfg, Tok(), greedy=False)
    out = ppo.step.sample_step(st, batch, jax.random.key(3), graphs=graphs, scfg=scfg)
    ids, mask, P = ppo.step.sequences(batch, out)
    outputs, pullback = jax.vjp(
        lambda a, c: ppo.step.policy_outputs(a, c, ids, mask, P, graphs=graphs, cfg=cfg),
        st.actor.params,
        st.critic.params,
    )
    data, _ = ppo.step.score_rollout(
        st, frozen, batch, out, None, graphs=graphs, cfg=cfg, outputs=outputs
    )
    plain, _ = ppo.step.score_rollout(st, frozen, batch, out, None, graphs=graphs, cfg=cfg)
    for k in ("logp_old", "values_old", "advantages"):
        np.testing.assert_allclose(np.asarray(data[k]), np.asarray(plain[k]), atol=1e-5)
    args = (data, st.kl.kl_coef, st.hyper)
    (loss, m), g_out = jax.value_and_grad(ppo.step.ppo_objective, argnums=(0, 1), has_aux=True)(
        *outputs, *args, cfg=cfg
    )
    g_reuse = pullback(g_out)
    (loss_f, _), g_fresh = jax.value_and_grad(ppo.step.ppo_loss, argnums=(0, 1), has_aux=True)(
        st.actor.params, st.critic.params, *args, graphs=graphs, cfg=cfg, P=P
    )
    np.testing.assert_allclose(float(loss), float(loss_f), rtol=1e-6, atol=1e-7)
    assert float(m["ratio_mean"]) == 1.0
    flat_r, flat_f = jax.tree.leaves(g_reuse), jax.tree.leaves(g_fresh)
    assert len(flat_r) == len(flat_f)
    norm = max(float(np.abs(np.asarray(x)).max()) for x in flat_f)
    assert norm > 1e-3
    for x, y in zip(flat_r, flat_f):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=1e-5 * norm)
    critic_moves = any(float(np.abs(np.asarray(x)).max()) > 0 for x in jax.tree.leaves(g_reuse[1]))
    assert critic_moves == cfg.needs_critic
    # two whole iterations each way (2 epochs: the second runs its own forward in both)
    a, b = st, jax.tree.map(jnp.copy, st)
    for i in range(2):
        a, ma, _ = step(a, frozen, batch, jax.random.key(10 + i))
        b, mb, _ = step_off(b, frozen, batch, jax.random.key(10 + i))
        for k in ("policy_loss", "kl", "proxy_reward", "ratio_mean", "actor_grad_norm"):
            np.testing.assert_allclose(float(ma[k]), float(mb[k]), rtol=1e-3, atol=1e-5)
    for x, y in zip(*map(jax.tree.leaves, (a, b))):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-3, atol=1e-5)
