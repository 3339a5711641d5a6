"""SFT / reward / prompt arrays, masks, truncation, response decoding and length buckets."""

import random

import jax
import numpy as np
import pytest

from girl_jax.data import batches, prompt
from girl_jax.data.tokenizer import Tokenizer
from girl_jax.errors import ConfigError, DataError

WORDS = "python java senior engineer nurse paris remote salary team lead sql cloud years".split()


def sentence(rng, n):
    return " ".join(rng.choice(WORDS) for _ in range(n))


@pytest.fixture(scope="module")
def tok():
    rng = random.Random(0)
    return Tokenizer.train([sentence(rng, 30) for _ in range(500)], vocab_size=400)


@pytest.fixture(scope="module")
def pairs():
    rng = random.Random(1)
    cvs = [sentence(rng, rng.randint(1, 12)) for _ in range(16)]
    jds = [sentence(rng, rng.randint(1, 12)) for _ in range(16)]
    return cvs, jds


def test_sft_rows_masks_are_exactly_jd_and_eos(tok, pairs):
    cvs, jds = pairs
    enc = batches.encode_sft(tok, cvs, jds, max_prompt_len=40, max_response_len=40)
    ids, attn, target = enc["input_ids"], enc["attention_mask"], enc["target_mask"]
    assert ids.shape == attn.shape == target.shape == (16, 80)
    assert ids.dtype == attn.dtype == target.dtype == np.int32
    for i, (cv, jd) in enumerate(zip(cvs, jds)):
        prompt_ids = [tok.bos_id] + tok.encode(prompt.format_prompt(cv))
        response_ids = tok.encode(jd) + [tok.eos_id]
        n = len(prompt_ids) + len(response_ids)
        np.testing.assert_array_equal(ids[i, :n], prompt_ids + response_ids)
        np.testing.assert_array_equal(ids[i, n:], tok.pad_id)
        np.testing.assert_array_equal(attn[i], np.arange(80) < n)
        expected_target = (np.arange(80) >= len(prompt_ids)) & (np.arange(80) < n)
        np.testing.assert_array_equal(target[i], expected_target)
        # The documented loss convention: predictions at t score token t + 1.
        scored = ids[i, 1:][target[i, 1:] == 1]
        np.testing.assert_array_equal(scored, response_ids)
    assert enc.stats == {"rows": 16, "cv_truncated": 0, "jd_truncated": 0}
    on_device = jax.device_put(enc)  # a pytree like a dict, stats kept
    assert isinstance(on_device, batches.Encoded) and on_device.stats == enc.stats
    np.testing.assert_array_equal(on_device["target_mask"], target)


def test_sft_truncation_keeps_markers_and_drops_eos_of_cut_jd(tok):
    long_cv, long_jd = "python " * 50, "senior engineer " * 50
    enc = batches.encode_sft(
        tok, [long_cv, "nurse"], [long_jd, "sql"], max_prompt_len=12, max_response_len=8
    )
    row = enc["input_ids"][0]
    cv_marker, jd_marker = tok.token_to_id("<|cv|>"), tok.token_to_id("<|jd|>")
    assert list(row[:2]) == [tok.bos_id, cv_marker] and row[11] == jd_marker
    np.testing.assert_array_equal(row[2:11], tok.encode(prompt.clean_text(long_cv))[:9])
    np.testing.assert_array_equal(row[12:20], tok.encode(prompt.clean_text(long_jd))[:8])
    assert tok.eos_id not in row[12:]
    assert enc["target_mask"][0].sum() == 8 and enc["attention_mask"][0].sum() == 20
    assert enc.stats == {"rows": 2, "cv_truncated": 1, "jd_truncated": 1}
    assert tok.eos_id in enc["input_ids"][1]


def test_too_small_limits_are_config_errors(tok):
    with pytest.raises(ConfigError, match="max_prompt_len=3"):
        batches.encode_sft(tok, ["a"], ["b"], max_prompt_len=3, max_response_len=4)
    with pytest.raises(ConfigError, match="max_len"):
        batches.encode_reward(tok, ["a"], ["b"], [1], max_len=6)
    with pytest.raises(DataError, match="differ in length"):
        batches.encode_sft(tok, ["a", "b"], ["c"], max_prompt_len=8, max_response_len=4)


def test_reward_rows_last_index_and_budget(tok, pairs):
    cvs, jds = pairs
    labels = [i % 2 for i in range(16)]
    enc = batches.encode_reward(tok, cvs, jds, labels, max_len=64)
    assert enc["input_ids"].shape == (16, 64) and enc["label"].dtype == np.float32
    np.testing.assert_array_equal(enc["label"], labels)
    rows = np.arange(16)
    np.testing.assert_array_equal(enc["input_ids"][rows, enc["last_index"]], tok.eos_id)
    np.testing.assert_array_equal(enc["last_index"], enc["attention_mask"].sum(1) - 1)
    sft = batches.encode_sft(tok, cvs, jds, max_prompt_len=32, max_response_len=32)
    np.testing.assert_array_equal(enc["input_ids"], sft["input_ids"])

    # Both long: the response keeps half of max_len, the CV gets the rest.
    long = batches.encode_reward(tok, ["python " * 80], ["java " * 80], [1], max_len=32)
    ids = long["input_ids"][0]
    assert long["attention_mask"].sum() == 32 and long["last_index"][0] == 31
    assert ids[15] == tok.token_to_id("<|jd|>") and tok.eos_id not in ids
    assert long.stats["cv_truncated"] == 1 and long.stats["jd_truncated"] == 1
    # Short CV, long JD: the JD takes all the room the CV leaves.
    short = batches.encode_reward(tok, ["nurse"], ["java " * 80], [0], max_len=32)
    assert short["attention_mask"].sum() == 32 and short.stats["cv_truncated"] == 0


def test_prompts_are_left_padded(tok, pairs):
    cvs, _ = pairs
    ids, mask = batches.encode_prompts(tok, cvs, max_prompt_len=24)
    assert ids.shape == mask.shape == (16, 24) and ids.dtype == np.int32
    for i, cv in enumerate(cvs):
        expected = [tok.bos_id] + tok.encode(prompt.format_prompt(cv))
        n = len(expected)
        np.testing.assert_array_equal(mask[i], np.arange(24) >= 24 - n)
        np.testing.assert_array_equal(ids[i, 24 - n :], expected)
        np.testing.assert_array_equal(ids[i, : 24 - n], tok.pad_id)
    assert (ids[:, -1] == tok.token_to_id("<|jd|>")).all()


def test_decode_responses_round_trip(tok, pairs):
    _, jds = pairs
    rng = np.random.default_rng(0)
    enc = batches.encode_sft(tok, ["x"] * 16, jds, max_prompt_len=8, max_response_len=20)
    tokens, mask = enc["input_ids"][:, 4:], enc["target_mask"][:, 4:]
    noise = rng.integers(6, tok.vocab_size, tokens.shape)  # garbage where mask is 0
    tokens = np.where(mask == 1, tokens, noise)
    assert batches.decode_responses(tok, tokens, mask) == [prompt.clean_text(j) for j in jds]


def test_bucket_lengths_and_trim(tok, pairs):
    assert batches.bucket_lengths(320) == (32, 64, 128, 256, 320)
    assert batches.bucket_lengths(32) == (32,)
    assert batches.bucket_lengths(100, min_len=16) == (16, 32, 64, 100)
    cvs, jds = pairs
    enc = batches.encode_reward(tok, cvs, jds, [1] * 16, max_len=256)
    longest = int(enc["attention_mask"].sum(1).max())
    trimmed = batches.trim_to_bucket(enc, batches.bucket_lengths(256, min_len=8))
    width = trimmed["input_ids"].shape[1]
    assert longest <= width < 2 * longest and width in (8, 16, 32, 64, 128, 256)
    np.testing.assert_array_equal(trimmed["input_ids"], enc["input_ids"][:, :width])
    np.testing.assert_array_equal(trimmed["label"], enc["label"])
    ids, mask = batches.encode_prompts(tok, cvs, max_prompt_len=128)
    left = batches.trim_to_bucket(
        {"ids": ids, "mask": mask}, (16, 32, 64), mask_key="mask", left=True
    )
    assert left["mask"].sum() == mask.sum()
    np.testing.assert_array_equal(left["ids"], ids[:, 128 - left["ids"].shape[1] :])


def test_trim_prompts_drops_only_common_left_padding(tok, pairs):
    cvs, _ = pairs
    ids, mask = batches.encode_prompts(tok, cvs, max_prompt_len=128)
    needed = int(mask.sum(1).max())
    t_ids, t_mask = batches.trim_prompts(ids, mask, multiple=8)
    width = t_ids.shape[1]
    assert width % 8 == 0 and needed <= width < needed + 8
    assert t_mask.sum() == mask.sum()  # every token kept
    np.testing.assert_array_equal(t_ids, ids[:, 128 - width :])
    np.testing.assert_array_equal(t_mask, mask[:, 128 - width :])
    assert (mask[:, : 128 - width] == 0).all()
    # never wider than given, and a width that needs no cut is left alone
    w_ids, _ = batches.trim_prompts(ids[:, -needed:], mask[:, -needed:], multiple=1000)
    assert w_ids.shape[1] == needed
    with pytest.raises(ConfigError, match="multiple"):
        batches.trim_prompts(ids, mask, multiple=0)
