"""PPO reward sources: the spec parser, host-side reward functions and the split iteration."""

import functools
import sys
import textwrap

import jax
import numpy as np
import pytest
from test_stages_ppo import TARGET, Tok, _setup, get_config

from girl_jax.errors import ConfigError, NumericsError
from girl_jax.stages import ppo


def test_parse_the_documented_spellings():
    assert ppo.rewards.parse("model") == (ppo.rewards.RewardTerm("model", 1.0),)
    assert ppo.rewards.parse("oracle")[0].on_host
    assert ppo.rewards.parse("ensemble:0.5") == (ppo.rewards.RewardTerm("ensemble", 0.5),)
    terms = ppo.rewards.parse("model:1.0,python:my_pkg.rewards:length_penalty:0.1")
    assert terms[1] == ppo.rewards.RewardTerm("python", 0.1, "my_pkg.rewards:length_penalty")
    assert terms[1].name == "python:my_pkg.rewards:length_penalty"
    assert ppo.rewards.parse("python:a.b:f")[0].weight == 1.0
    assert ppo.rewards.is_gold(ppo.rewards.parse("model,oracle:2"))
    assert ppo.rewards.device_weight(terms, "model") == 1.0
    assert ppo.rewards.device_weight(terms, "ensemble") == 0.0


@pytest.mark.parametrize(
    "spec,match",
    [
        ("", "at least one term"),
        ("nope", "unknown term"),
        ("model:x", "not a number"),
        ("model:1:2", "kind\\[:weight\\]"),
        ("python:only_module", "python:package.module:function"),
        ("model,model:2", "twice"),
        ("model:inf", "finite"),
    ],
)
def test_parse_errors_name_the_term(spec, match):
    with pytest.raises(ConfigError, match=match):
        ppo.rewards.parse(spec)


def test_ppo_config_validates_the_reward_spec():

    c = get_config("smoke").ppo
    c.reward = "model,bogus"
    with pytest.raises(ConfigError, match="config.ppo.reward: unknown term 'bogus'"):
        ppo.PPOConfig.from_config(c)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A reward module on sys.path, as a user would write one."""
    (tmp_path / "user_rewards.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def length(cvs, jds, seeker_ids):
                return np.array([len(j.split()) for j in jds], dtype=float)

            def raises(cvs, jds, seeker_ids):
                raise ValueError("boom")

            def short(cvs, jds, seeker_ids):
                return np.zeros(len(jds) - 1)

            def nan(cvs, jds, seeker_ids):
                out = np.zeros(len(jds))
                out[0] = np.nan
                return out

            def wrong_type(cvs, jds, seeker_ids):
                return {"a": 1}

            def uses_ids(cvs, jds, seeker_ids):
                return np.asarray(seeker_ids, dtype=float) + len(cvs[0])
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "user_rewards"
    sys.modules.pop("user_rewards", None)


def test_host_rewards_weighted_sum(user_module):
    terms = ppo.rewards.parse(
        f"model,python:{user_module}:length:0.5,python:{user_module}:uses_ids"
    )
    host = ppo.rewards.HostRewards(terms)
    assert [t.name for t in host.terms] == [
        f"python:{user_module}:length",
        f"python:{user_module}:uses_ids",
    ]
    total, means = host.score(["cv one", "cv two"], ["a b c", "d"], np.array([3, 4]), 1)
    np.testing.assert_allclose(total, 0.5 * np.array([3.0, 1.0]) + np.array([9.0, 10.0]))
    assert means[f"reward_python:{user_module}:length"] == 2.0
    assert total.dtype == np.float32


@pytest.mark.parametrize(
    "fn,err,match",
    [
        ("raises", ConfigError, "raised ValueError: boom"),
        ("short", ConfigError, "returned shape \\(1,\\), expected \\(2,\\)"),
        ("wrong_type", ConfigError, "returned dict, not an array of 2 floats"),
        ("nan", NumericsError, "returned 1 non-finite value"),
    ],
)
def test_bad_reward_functions_give_one_line_errors(user_module, fn, err, match):
    host = ppo.rewards.HostRewards(ppo.rewards.parse(f"python:{user_module}:{fn}"))
    with pytest.raises(err, match=match) as info:
        host.score(["cv", "cv"], ["jd", "jd"], np.array([0, 1]), 7)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"python:{user_module}:{fn}" in msg and "iteration 7" in msg


def test_nonfinite_host_reward_is_skipped_when_asked(user_module):
    host = ppo.rewards.HostRewards(ppo.rewards.parse(f"python:{user_module}:nan"))
    total, means = host.score(["cv", "cv"], ["jd", "jd"], np.array([0, 1]), 3, "skip")
    assert total is None and means == {}


def test_unimportable_function_and_oracle_without_market():
    with pytest.raises(ConfigError, match="cannot import 'no_such_module_xyz'"):
        ppo.rewards.HostRewards(ppo.rewards.parse("python:no_such_module_xyz:f"))
    with pytest.raises(ConfigError, match="is not a callable"):
        ppo.rewards.HostRewards(ppo.rewards.parse("python:numpy:pi"))
    with pytest.raises(ConfigError, match="needs the embedded market"):
        ppo.rewards.HostRewards(ppo.rewards.parse("oracle"), market=None)


def test_oracle_term_calls_the_market():
    class Market:
        def true_match(self, sids, jds):
            return np.asarray(sids, dtype=float) / 10

    host = ppo.rewards.HostRewards(ppo.rewards.parse("oracle:2"), market=Market())
    total, _ = host.score(["a", "b"], ["x", "y"], np.array([1, 2]), 1)
    np.testing.assert_allclose(total, [0.2, 0.4])


def _split_fns(cfg, graphs, atx, ctx, controller, shardings):
    scfg = ppo.sampling_config(cfg, Tok(), greedy=False)
    sample = jax.jit(functools.partial(ppo.step.sample_step, graphs=graphs, scfg=scfg))
    update = jax.jit(
        functools.partial(
            ppo.step.update_step,
            graphs=graphs,
            cfg=cfg,
            actor_tx=atx,
            critic_tx=ctx,
            controller=controller,
        ),
        out_shardings=(shardings, None),  # the state keeps its shardings: one compilation
        donate_argnums=(0,),
    )
    return sample, update


@pytest.mark.parametrize("advantage,group", [("gae", 1), ("grpo", 4)])
def test_split_iteration_equals_fused_step(advantage, group):
    """Rollout -> host score -> update equals the fused step: once with a zero host score beside
    the model, once with the model's own score (a token count) computed on the host instead."""
    from girl_jax.rl import kl as kl_mod
    from girl_jax.stages import common

    cfg, st0, frozen, step, batch, graphs = _setup(advantage=advantage, group_size=group)
    atx = common.make_optimizer(cfg.learning_rate, 100, grad_clip=1.0, cosine=False)
    ctx = common.make_optimizer(cfg.critic_learning_rate, 100, grad_clip=1.0, cosine=False)
    controller = kl_mod.make_kl_controller("fixed", cfg.kl_coef)
    copy = lambda t: jax.tree.map(lambda x: np.array(x), t)  # donation deletes inputs
    host_cfg, *_ = _setup(advantage=advantage, group_size=group, reward="python:m:f")
    init = copy(st0)
    shardings = jax.tree.map(lambda x: x.sharding, st0)
    fused, m_fused = st0, []
    for i in range(3):
        fused, m, _ = step(fused, frozen, batch, jax.random.key(i))
        m_fused.append(jax.device_get(m))
    for run_cfg in (cfg, host_cfg):
        sample, update = _split_fns(run_cfg, graphs, atx, ctx, controller, shardings)
        split = jax.device_put(init, shardings)
        for i in range(3):
            out = sample(split, batch, jax.random.key(i))
            if run_cfg is cfg:
                host = np.zeros(cfg.batch_size, np.float32)
            else:  # the CountReward model's score, on the host
                ids = np.concatenate([batch["prompt_ids"], np.asarray(out.tokens)], 1)
                msk = np.concatenate([batch["prompt_mask"], np.asarray(out.mask)], 1)
                host = ((ids == TARGET) * msk).sum(1).astype(np.float32)
            split, m = update(split, frozen, batch, out, host, jax.random.key(i))
            m = jax.device_get(m)
            for k in ("reward", "score", "kl", "total_loss", "policy_loss", "advantages_std"):
                np.testing.assert_allclose(m[k], m_fused[i][k], rtol=1e-5, atol=1e-5, err_msg=k)
        for a, b in zip(jax.tree.leaves(split.actor.params), jax.tree.leaves(fused.actor.params)):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("ensemble_agg", "median", "ensemble_agg"),
        ("loss_agg", "sum", "loss_agg"),
        ("baseline", "critic", "baseline"),
        ("clip_eps_high", -0.1, "clip_eps_high"),
        ("critic", "shared", "critic"),
    ],
)
def test_ppo_config_rejects_bad_variant_settings(key, value, match):

    c = get_config("smoke").ppo
    c[key] = value
    with pytest.raises(ConfigError, match=f"config.ppo.{match}"):
        ppo.PPOConfig.from_config(c)
    c = get_config("smoke").ppo
    c.dynamic_sampling, c.advantage, c.group_size = True, "gae", 1
    with pytest.raises(ConfigError, match="dynamic_sampling"):
        ppo.PPOConfig.from_config(c)


def test_bon_distill_algorithm_sets_its_keys_and_bad_names_fail():
    c = get_config("smoke").ppo
    c.update(algorithm="bon_distill", advantage="gae", whiten_advantages=True, group_size=4)
    cfg = ppo.PPOConfig.from_config(c)
    assert (cfg.advantage, cfg.policy_loss, cfg.whiten_advantages) == ("bon", "nll", False)
    assert not cfg.needs_critic
    c.algorithm = "dpo"
    with pytest.raises(ConfigError, match="config.ppo.algorithm must be one of ppo, bon_distill"):
        ppo.PPOConfig.from_config(c)
    c.update(algorithm="bon_distill", group_size=1)
    with pytest.raises(ConfigError, match="group_size>1"):
        ppo.PPOConfig.from_config(c)


def test_gold_variant_is_the_default_but_ppo():
    from girl_jax.configuration import load_config

    default, gold = load_config("configs/default.py"), load_config("configs/default.py:gold")
    for key in default.keys():
        if key not in ("ppo", "name"):
            assert str(gold[key]) == str(default[key]), key
    cfg = ppo.PPOConfig.from_config(gold.ppo)
    assert ppo.rewards.is_gold(cfg.reward_terms)
    assert (cfg.algorithm, cfg.advantage, cfg.policy_loss) == ("ppo", "grpo", "clipped")
    assert (cfg.temperature, cfg.batch_size, cfg.kl_coef) == (0.35, 256, 0.0)


def test_plain_variant_is_the_default_but_its_text_and_decoding():
    from girl_jax.configuration import load_config
    from girl_jax.data import prepare

    default, plain = load_config("configs/default.py"), load_config("configs/default.py:plain")
    varied = load_config("configs/default.py:varied")  # the default's name until 2026-12-04
    assert {k: v for k, v in varied.to_dict().items() if k != "name"} == {
        k: v for k, v in default.to_dict().items() if k != "name"
    }
    for key in default.keys():
        if key not in ("data", "tokenizer", "ppo", "generate", "name"):
            assert str(plain[key]) == str(default[key]), key
    changed = {k for k in default.generate if plain.generate[k] != default.generate[k]}
    assert changed == {"repetition_penalty", "no_repeat_ngram_size", "encoder_repetition_penalty"}
    assert (
        default.generate.encoder_repetition_penalty,
        plain.generate.encoder_repetition_penalty,
    ) == (1.6, 1.0)
    assert default.generate.policy_eval  # the generated stage also scores greedy JDs
    for key in default.ppo.keys():
        if key not in ("kl_coef", "iterations"):
            assert str(plain.ppo[key]) == str(default.ppo[key]), key
    assert (default.ppo.kl_coef, plain.ppo.kl_coef) == (0.1, 0.05)
    assert (default.ppo.iterations, plain.ppo.iterations) == (30, 40)
    kwargs = prepare._market_kwargs(default)
    assert (kwargs["text_variation"], kwargs["jd_text_variation"]) == (1.0, 0.0)
    kwargs = prepare._market_kwargs(plain)
    assert (kwargs["text_variation"], kwargs["jd_text_variation"]) == (0.0, None)  # as the CVs
    assert (default.tokenizer.normalize, plain.tokenizer.normalize) == ("nfkc_lower", "none")
    # variants join with "+": the gold recipe on the plain market, smoke sizes on either
    plain_gold = load_config("configs/default.py:plain+gold")
    assert plain_gold.ppo.reward == "oracle" and plain_gold.data.text_variation == 0.0
    assert load_config("configs/default.py:plain+smoke").sft.steps == 40
    with pytest.raises(ConfigError, match="unknown variant 'bogus'"):
        load_config("configs/default.py:plain+bogus")
