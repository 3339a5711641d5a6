"""Parity with transformers (PyTorch) for GPT-2 and Llama: import, export, padding."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from girl_jax.errors import ModelError  # noqa: E402
from girl_jax.models import hub  # noqa: E402
from girl_jax.models.decoder import Decoder, DecoderConfig  # noqa: E402
from girl_jax.models.hf_decoder import config_from_hf  # noqa: E402

VOCAB = 97


def _hf_gpt2(tie=True):
    cfg = transformers.GPT2Config(
        vocab_size=VOCAB,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        tie_word_embeddings=tie,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def _hf_llama(tie=False, theta=5000.0, kv=2):
    cfg = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=kv,
        max_position_embeddings=64,
        rope_theta=theta,
        tie_word_embeddings=tie,
        rms_norm_eps=1e-5,
    )
    return transformers.LlamaForCausalLM(cfg)


def _randomise(model, seed=0):
    """Non-trivial norms / biases so a wrong mapping cannot hide behind ones and zeros."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.ndim == 1:
                base = 1.0 if "weight" in name else 0.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def _batch(seed=0, B=3, T=9):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, size=(B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, :3] = 0  # left padding
    mask[2, :5] = 0
    ids[mask == 0] = 0
    pos = np.maximum(np.cumsum(mask, -1) - 1, 0)
    return ids, mask, pos


def _torch_logits(model, ids, mask, pos):
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids),
            attention_mask=torch.tensor(mask),
            position_ids=torch.tensor(pos),
        )
    return out.logits.float().numpy()


def _ours_logits(model, ids, mask):
    logits, _ = model(np.asarray(ids, np.int32), np.asarray(mask, np.int32))
    return np.asarray(logits)


def _max_valid_diff(a, b, mask):
    return float(np.abs(a - b)[mask.astype(bool)].max())


CASES = {
    "gpt2_tied": lambda: _hf_gpt2(tie=True),
    "gpt2_untied": lambda: _hf_gpt2(tie=False),
    "llama_gqa": lambda: _hf_llama(),
    "llama_mha_tied": lambda: _hf_llama(tie=True, theta=10000.0, kv=4),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_import_matches_transformers_with_left_padding(case, tmp_path):
    hf_model = _randomise(CASES[case]())
    hf_model.save_pretrained(tmp_path / "hf")
    ours = hub.from_pretrained(tmp_path / "hf")
    assert isinstance(ours, Decoder)
    ids, mask, pos = _batch()
    diff = _max_valid_diff(
        _ours_logits(ours, ids, mask), _torch_logits(hf_model, ids, mask, pos), mask
    )
    assert diff <= 1e-4, diff


@pytest.mark.parametrize("case", ["gpt2_untied", "llama_gqa"])
def test_long_sequences_match_transformers(case, tmp_path):
    """At 64 positions the forward takes the two-block causal attention (decoder_blocks)."""
    from girl_jax.models.decoder_blocks import CAUSAL_SPLIT_MIN_LEN

    hf_model = _randomise(CASES[case](), seed=2)
    hf_model.save_pretrained(tmp_path / "hf")
    ours = hub.from_pretrained(tmp_path / "hf")
    ids, mask, pos = _batch(3, T=64)
    assert ids.shape[1] >= CAUSAL_SPLIT_MIN_LEN
    diff = _max_valid_diff(
        _ours_logits(ours, ids, mask), _torch_logits(hf_model, ids, mask, pos), mask
    )
    assert diff <= 1e-4, diff


@pytest.mark.parametrize("case", ["gpt2_tied", "llama_gqa"])
def test_import_scanned_layers_matches(case, tmp_path):
    hf_model = _randomise(CASES[case](), seed=1)
    hf_model.save_pretrained(tmp_path / "hf")
    ours = hub.from_pretrained(tmp_path / "hf", scan_layers=True, remat=True)
    assert ours.cfg.scan_layers
    ids, mask, pos = _batch(1)
    diff = _max_valid_diff(
        _ours_logits(ours, ids, mask), _torch_logits(hf_model, ids, mask, pos), mask
    )
    assert diff <= 1e-4, diff


@pytest.mark.parametrize(
    "cfg",
    [
        DecoderConfig(
            family="gpt2", vocab_size=VOCAB, max_len=32, d_model=32, num_layers=2, num_heads=4
        ),
        DecoderConfig(
            family="gpt2",
            vocab_size=VOCAB,
            max_len=32,
            d_model=32,
            num_layers=2,
            num_heads=4,
            tie_embeddings=False,
            scan_layers=True,
        ),
        DecoderConfig(
            family="llama",
            vocab_size=VOCAB,
            max_len=32,
            d_model=32,
            num_layers=2,
            num_heads=4,
            num_kv_heads=1,
            rope_theta=777.0,
            mlp_dim=40,
        ),
        DecoderConfig(
            family="llama",
            vocab_size=VOCAB,
            max_len=32,
            d_model=32,
            num_layers=2,
            num_heads=4,
            head_dim=16,
            attn_bias=True,
            tie_embeddings=True,
            scan_layers=True,
        ),
    ],
    ids=["gpt2", "gpt2_untied_scan", "llama_mqa", "llama_bias_headdim_tied_scan"],
)
def test_export_loads_in_transformers(cfg, tmp_path):
    from flax import nnx

    ours = Decoder(cfg, rngs=nnx.Rngs(3))
    out = hub.save_pretrained(ours, tmp_path / "export")
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "float32"
    hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    ids, mask, pos = _batch(2)
    diff = _max_valid_diff(
        _ours_logits(ours, ids, mask), _torch_logits(hf_model.eval(), ids, mask, pos), mask
    )
    assert diff <= 1e-4, diff
    # and back: our own export re-imports to the same function
    again = hub.from_pretrained(out)
    np.testing.assert_allclose(
        _ours_logits(again, ids, mask), _ours_logits(ours, ids, mask), atol=1e-6
    )


def test_sharded_checkpoint_and_bf16_weights(tmp_path):
    hf_model = _randomise(_hf_llama(), seed=4)
    hf_model.to(torch.bfloat16).save_pretrained(tmp_path / "hf", max_shard_size="20KB")
    assert (tmp_path / "hf" / "model.safetensors.index.json").exists()
    ours = hub.from_pretrained(tmp_path / "hf")
    ids, mask, pos = _batch(4)
    ref = _torch_logits(hf_model.float(), ids, mask, pos)
    assert _max_valid_diff(_ours_logits(ours, ids, mask), ref, mask) <= 1e-4


def test_bf16_compute_is_close(tmp_path):
    hf_model = _randomise(_hf_llama(), seed=5)
    hf_model.save_pretrained(tmp_path / "hf")
    ours = hub.from_pretrained(tmp_path / "hf", dtype="bfloat16")
    ids, mask, pos = _batch(5)
    logits = _ours_logits(ours, ids, mask)
    assert logits.dtype == np.float32
    assert _max_valid_diff(logits, _torch_logits(hf_model, ids, mask, pos), mask) <= 0.1


def test_shape_mismatch_names_tensor(tmp_path):
    hf_model = _hf_llama()
    hf_model.save_pretrained(tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    config["intermediate_size"] = 56
    (tmp_path / "hf" / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError, match=r"gate_proj\.weight.*\(48, 32\).*\(56, 32\)"):
        hub.from_pretrained(tmp_path / "hf")


def test_unknown_architecture_and_missing_files(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(ModelError, match="config.json"):
        hub.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / "config.json").write_text(
        json.dumps({"architectures": ["T5ForConditionalGeneration"], "model_type": "t5"})
    )
    with pytest.raises(ModelError, match="T5ForConditionalGeneration"):
        hub.from_pretrained(tmp_path / "m")


def test_config_from_hf_rejects_rope_scaling():
    hf = _hf_llama().config.to_dict()
    hf["rope_parameters"] = {"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    with pytest.raises(ModelError, match="RoPE"):
        config_from_hf(hf)
