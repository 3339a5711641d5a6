"""Span rewards (token-level credit): `Spans` results, their placement on tokens, the gold
`oracle_credit` term and the update that takes them (`grpo_process`)."""

import functools
import sys
import textwrap

import jax
import numpy as np
import pytest
from test_stages_ppo import TARGET, Tok, _setup

from girl_jax.data import market, market_credit
from girl_jax.data import market_taxonomy as tax
from girl_jax.data.tokenizer import Tokenizer
from girl_jax.errors import ConfigError, NumericsError
from girl_jax.stages import common, ppo


def test_token_char_ends_equal_the_decoded_prefixes():
    texts = [f"we need sql, excel and tableau. you have {i} years; £{40 + i}k" for i in range(40)]
    tok = Tokenizer.train(texts, vocab_size=300)
    rows = [tok.encode(t) for t in texts[:3]]
    T = max(map(len, rows)) + 2
    tokens = np.zeros((3, T), np.int64)
    mask = np.zeros((3, T), np.int64)
    for b, r in enumerate(rows):
        tokens[b, : len(r)] = r
        mask[b, : len(r) - b] = 1  # rows cut short by their masks
    ends = ppo.rewards.token_char_ends(tok, tokens, mask)
    for b in range(3):
        n = int(mask[b].sum())
        want = [len(tok.decode(tokens[b, : t + 1])) for t in range(n)]
        assert ends[b, :n].tolist() == want
        assert (ends[b, n:] == want[-1]).all()
    assert ends[0, len(rows[0]) - 1] == len(texts[0])


def test_place_spans_puts_each_value_on_the_token_holding_its_character():
    ends = np.array([[3, 7, 12, 12], [2, 4, 6, 8]])
    mask = np.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    rows = [[(5, 1.0), (12, -1.0), (7, 0.5)], [(1, 2.0), (99, 3.0)]]
    values, steps = ppo.rewards.place_spans(rows, ends, mask)
    np.testing.assert_allclose(values, [[0, 1.5, -1.0, 0], [2.0, 0, 0, 3.0]])
    np.testing.assert_array_equal(steps, [[0, 1, 1, 0], [1, 0, 0, 1]])


@pytest.fixture
def span_module(tmp_path, monkeypatch):
    src = textwrap.dedent(
        """
        import numpy as np
        from girl_jax.rewards import Spans

        def first_word(cvs, jds, sids):  # +1 at the end of each JD's first word
            return Spans([[(len(j.split()[0]), 1.0)] if j.split() else [] for j in jds])

        def short(cvs, jds, sids):
            return Spans([[]])

        def past_end(cvs, jds, sids):
            return Spans([[(len(j) + 1, 1.0)] for j in jds])

        def not_pairs(cvs, jds, sids):
            return Spans([[1.0] for j in jds])

        def nan(cvs, jds, sids):
            return Spans([[(1, float("nan"))] for j in jds])
        """
    )
    (tmp_path / "span_rewards_mod.py").write_text(src)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "span_rewards_mod"
    sys.modules.pop("span_rewards_mod", None)


def test_score_all_merges_weighted_spans_beside_sequence_terms(span_module):
    terms = ppo.rewards.parse(
        f"python:{span_module}:first_word:2,python:girl_jax.rewards:repeated_items"
    )
    host = ppo.rewards.HostRewards(terms)
    jds = ["abc def", "x, x, x"]
    total, means, spans = host.score_all(["cv", "cv"], jds, np.array([0, 1]), 1)
    assert spans == [[(3, 2.0)], [(2, 2.0)]]
    np.testing.assert_allclose(total, [0.0, -2 / 3], atol=1e-6)  # the sequence term alone
    assert means[f"reward_python:{span_module}:first_word"] == 1.0
    with pytest.raises(ConfigError, match="span rewards"):
        host.score(["cv", "cv"], jds, np.array([0, 1]), 1)


@pytest.mark.parametrize(
    "fn,err,match",
    [
        ("short", ppo.rewards.RewardFunctionError, r"Spans for 1 JDs, expected 2"),
        ("past_end", ppo.rewards.RewardFunctionError, r"row 0 has char_end 4 outside \[1, 3\]"),
        ("not_pairs", ppo.rewards.RewardFunctionError, r"row 0 is not a list of \(char_end"),
        ("nan", NumericsError, "non-finite span"),
    ],
)
def test_bad_span_rewards_give_one_line_errors(span_module, fn, err, match):
    host = ppo.rewards.HostRewards(ppo.rewards.parse(f"python:{span_module}:{fn}"))
    with pytest.raises(err, match=match) as info:
        host.score_all(["cv", "cv"], ["abc", "def"], np.array([0, 1]), 9)
    assert "\n" not in str(info.value) and f"{fn} at PPO iteration 9" in str(info.value)
    if fn == "nan":
        skipped = host.score_all(["cv", "cv"], ["abc", "def"], np.array([0, 1]), 9, "skip")
        assert skipped == (None, {}, None)


def test_oracle_credit_scores_each_required_skill_where_it_is_written():
    m = market.generate(num_seekers=40, num_jobs=20, seed=3)
    sid = 5
    owned = [int(s) for s in m.seekers["skills"][sid] if s >= 0]
    other = next(s for s in range(len(tax.SKILLS)) if s not in owned)
    a, b = tax.SKILLS[owned[0]], tax.SKILLS[other]
    title = tax.TITLES[int(m.seekers["family"][sid]) * tax.NUM_LEVELS + 1]
    jd = f"Join us as {title} in London. We need {a} and {b}. You have 2+ years. We pay 40k to 50k."
    rows = market_credit.skill_spans(m, [sid], [jd])
    assert rows == [[(jd.index(a) + len(a), 1.0), (jd.index(b) + len(b), -1.0)]]
    assert market_credit.skill_spans(m, [sid], ["nothing to read here"]) == [[]]
    assert ppo.rewards.is_gold(ppo.rewards.parse("oracle,oracle_credit:0.5"))
    host = ppo.rewards.HostRewards(ppo.rewards.parse("oracle_credit"), market=m)
    _, means, spans = host.score_all(["cv"], [jd], np.array([sid]), 1)
    assert spans == rows and means["reward_oracle_credit"] == 0.0
    with pytest.raises(ConfigError, match="'oracle_credit' needs the embedded market"):
        ppo.rewards.HostRewards(ppo.rewards.parse("oracle_credit"), market=None)


def _update(cfg, graphs, shardings=None):
    from girl_jax.rl import kl as kl_mod

    atx = common.make_optimizer(cfg.learning_rate, 100, grad_clip=1.0, cosine=False)
    ctx = common.make_optimizer(cfg.critic_learning_rate, 100, grad_clip=1.0, cosine=False)
    scfg = ppo.sampling_config(cfg, Tok(), greedy=False)
    sample = jax.jit(functools.partial(ppo.step.sample_step, graphs=graphs, scfg=scfg))
    # the updated state keeps the state's shardings: one compilation of the update and of the
    # sampler that reads it, not a second one for the shardings XLA would pick
    keep = {} if shardings is None else {"out_shardings": (shardings, None)}
    update = jax.jit(
        functools.partial(
            ppo.step.update_step,
            graphs=graphs,
            cfg=cfg,
            actor_tx=atx,
            critic_tx=ctx,
            controller=kl_mod.make_kl_controller("fixed", cfg.kl_coef),
        ),
        **keep,
    )
    return sample, update


def test_zero_spans_change_nothing_and_grpo_process_uses_them():
    cfg, st, frozen, _, batch, graphs = _setup(advantage="grpo", group_size=4)
    sample, update = _update(cfg, graphs)
    out = sample(st, batch, jax.random.key(0))
    host = np.zeros(cfg.batch_size, np.float32)
    zeros = np.zeros(out.tokens.shape, np.float32)
    _, m_plain = update(st, frozen, batch, out, host, jax.random.key(0))
    _, m_zero = update(st, frozen, batch, out, (host, zeros, zeros), jax.random.key(0))
    for k in ("reward", "policy_loss", "advantages_std"):
        np.testing.assert_allclose(m_zero[k], m_plain[k], rtol=1e-6, err_msg=k)
    # grpo_process: the step rewards (+1 on every TARGET token) enter the advantages
    pcfg, *_ = _setup(advantage="grpo_process", group_size=4, whiten_advantages=False)
    mask = np.asarray(out.mask, np.float32)
    hit = (np.asarray(out.tokens) == TARGET).astype(np.float32) * mask
    steps = (host, hit * 2 - 1, mask)
    data, stats = ppo.step.score_rollout(st, frozen, batch, out, steps, graphs=graphs, cfg=pcfg)
    plain, _ = ppo.step.score_rollout(st, frozen, batch, out, host, graphs=graphs, cfg=pcfg)
    assert not np.allclose(data["advantages"], plain["advantages"])
    want = ((hit * 2 - 1) * mask).sum(1).mean()
    np.testing.assert_allclose(stats["step_reward"], want, rtol=1e-5)


@pytest.mark.slow
def test_grpo_process_learns_from_token_credit():
    """+1 at every TARGET token, -1 at every other: the sampled TARGET share rises."""
    cfg, st, frozen, _, batch, graphs = _setup(advantage="grpo_process", group_size=4, kl_coef=0.0)
    sample, update = _update(cfg, graphs, jax.tree.map(lambda x: x.sharding, st))
    share = []
    for i in range(12):
        out = sample(st, batch, jax.random.key(i))
        mask = np.asarray(out.mask, np.float32)
        hit = (np.asarray(out.tokens) == TARGET).astype(np.float32) * mask
        share.append(hit.sum() / mask.sum())
        host = (np.zeros(cfg.batch_size, np.float32), hit * 2 - 1, mask)
        st, _ = update(st, frozen, batch, out, host, jax.random.key(i))
    assert np.mean(share[-3:]) > np.mean(share[:3]) + 0.1, share
