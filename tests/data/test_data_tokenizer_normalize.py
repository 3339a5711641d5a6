"""`tokenizer.normalize`: NFKC + lower case before the BPE; specials intact; old files unchanged."""

import json
import os
import sys
import unicodedata

import pytest
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

from girl_jax.configuration import load_config
from girl_jax.data import market, prepare, prompt
from girl_jax.data.tokenizer import CV_MARKER, JD_MARKER, SPECIAL_TOKENS, Tokenizer
from girl_jax.errors import DataError

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import free_text_eval  # noqa: E402


@pytest.fixture(scope="module")
def texts():
    m = market.generate(num_seekers=400, num_jobs=120, seed=2)
    return m.cvs + m.jds


@pytest.fixture(scope="module")
def tok(texts):
    return Tokenizer.train(texts, vocab_size=1024, normalize="nfkc_lower")


def _train_as_before(texts, vocab_size):
    """`Tokenizer.train` as it was before the normaliser existed (no normalizer at all)."""
    tk = tokenizers.Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(list(texts), trainer=trainer, length=len(texts))
    return tk


def test_none_trains_exactly_the_tokenizer_of_before(texts):
    none = Tokenizer.train(texts, vocab_size=1024, normalize="none")
    assert json.loads(none._tk.to_str())["normalizer"] is None
    assert none._tk.to_str() == _train_as_before(texts, 1024).to_str()
    assert Tokenizer.train(texts, vocab_size=1024)._tk.to_str() == none._tk.to_str()  # default


def test_market_text_and_what_the_normaliser_does_to_it(texts, tok):
    # The plain market text is ASCII, so NFKC changes nothing, but it is NOT all lower case
    # (sentence starts, "Dublin", "Bramble And Co"): nfkc_lower therefore trains another
    # vocabulary than the plain market's; `:plain` keeps normalize="none" (its ids unchanged).
    assert all(t.isascii() and unicodedata.normalize("NFKC", t) == t for t in texts)
    assert all(t != t.lower() for t in texts)
    # On the market's text lower-cased, nfkc_lower and no normaliser give IDENTICAL ids ...
    lower = [t.lower() for t in texts]
    plain = Tokenizer.train(lower, vocab_size=1024, normalize="none")
    normed = Tokenizer.train(lower, vocab_size=1024, normalize="nfkc_lower")
    assert plain._tk.get_vocab() == normed._tk.get_vocab()
    assert normed.encode_batch(lower) == plain.encode_batch(lower)
    # ... and nfkc_lower on the text as written is exactly that tokenizer on the lower-cased text
    assert tok._tk.get_vocab() == plain._tk.get_vocab()
    assert tok.encode_batch(texts) == plain.encode_batch(lower)
    # the varied market's "£" and bullets are NFKC-stable too
    varied = market.generate(num_seekers=100, num_jobs=60, seed=2, text_variation=1.0)
    assert all(unicodedata.normalize("NFKC", t) == t for t in varied.cvs + varied.jds)
    assert any("£" in t for t in varied.jds) and any("•" in t for t in varied.jds)


def test_case_and_width_variants_encode_identically(tok):
    assert tok.encode("SQL, Power BI and A/B testing") == tok.encode(
        "sql, power bi and a/b testing"
    )
    assert tok.encode("ＳＱＬ ｅｘｃｅｌ") == tok.encode("sql excel")  # full-width forms: NFKC
    assert (
        tok.decode(tok.encode("Senior Data Analyst in LONDON")) == "senior data analyst in london"
    )


def test_specials_stay_single_ids_under_the_normaliser(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4, 5]
    for i, special in enumerate(SPECIAL_TOKENS):
        assert tok.encode(special) == [i]
    ids = tok.encode(f"{CV_MARKER}SQL and Excel{JD_MARKER}Data Analyst<eos>")
    assert ids[0] == 4 and ids[-1] == 2 and ids.count(5) == 1
    assert ids[1 : ids.index(5)] == tok.encode("sql and excel")
    assert 4 not in tok.encode("<|CV|>")  # an upper-case spelling is text, not the marker
    cv = "Jo Bloggs — SQL, Power BI; 5 YRS"
    pieces = tok.encode(prompt.PROMPT_PREFIX) + tok.encode(cv) + tok.encode(prompt.PROMPT_SUFFIX)
    assert tok.encode(prompt.format_prompt(cv)) == pieces  # what `batches` relies on


def test_old_tokenizer_json_without_normaliser_loads_and_works_unchanged(tmp_path, texts, tok):
    old = _train_as_before(texts, 1024)
    (tmp_path / "old").mkdir()
    old.save(str(tmp_path / "old" / "tokenizer.json"))  # a file written before the normaliser
    loaded = Tokenizer.load(tmp_path / "old")
    sample = ["SQL, Power BI", "Sous Chef at Bramble And Co", texts[0]]
    assert loaded.encode_batch(sample) == [
        old.encode(t, add_special_tokens=False).ids for t in sample
    ]
    assert loaded.encode("SQL") != loaded.encode("sql")  # no normaliser appears
    assert loaded.decode(loaded.encode(texts[0])) == texts[0]
    # a new one keeps its normaliser through save / load
    tok.save(tmp_path / "new")
    again = Tokenizer.load(tmp_path / "new")
    assert json.loads((tmp_path / "new" / "tokenizer.json").read_text())["normalizer"]
    assert again.encode("SQL, Power BI") == tok.encode("sql, power bi")


def test_unknown_normaliser_is_an_error(texts):
    with pytest.raises(DataError, match="tokenizer.normalize"):
        Tokenizer.train(texts[:10], vocab_size=600, normalize="lowercase")


def test_data_stage_threads_normalize_and_text_variation(tmp_path):
    config = load_config("configs/default.py:plain+smoke")
    assert config.tokenizer.normalize == "none" and config.data.text_variation == 0.0
    assert load_config("configs/default.py:smoke").tokenizer.normalize == "nfkc_lower"
    config.data.update(num_seekers=120, num_jobs=30)
    plain = prepare.prepare(config, str(tmp_path / "plain"))
    assert "text_variation" not in plain["market_config"]  # final.json as before
    assert prepare.load(str(tmp_path / "plain")).tokenizer.encode("SQL") != prepare.load(
        str(tmp_path / "plain")
    ).tokenizer.encode("sql")
    config.tokenizer.normalize = "nfkc_lower"
    config.data.text_variation = 0.5
    info = prepare.prepare(config, str(tmp_path / "varied"))
    assert info["market_config"]["text_variation"] == 0.5
    data = prepare.load(str(tmp_path / "varied"))
    assert data.tokenizer.encode("SQL") == data.tokenizer.encode("sql")
    assert data.market.cvs != market.generate(num_seekers=120, num_jobs=30, seed=0).cvs
    df = data.interactions  # the stored text is the regenerated market's text
    assert all(data.market.cvs[s] == cv for s, cv in zip(df["seeker_id"], df["cv"]))
    # scripts/free_text_eval.py names both in its report
    assert free_text_eval.text_setup(str(tmp_path / "plain")) == {
        "tokenizer_normalize": "none",
        "text_variation": 0.0,
    }
    assert free_text_eval.text_setup(str(tmp_path / "varied")) == {
        "tokenizer_normalize": "nfkc_lower",
        "text_variation": 0.5,
    }
