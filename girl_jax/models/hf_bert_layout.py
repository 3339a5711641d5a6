"""How a `BertEncoder` maps onto a Hugging Face BERT: `config.json` keys both ways
(`config_from_hf`, `config_to_hf`) and, per HF tensor, our parameter path, its HF shape and the
transforms both ways (`_rules`). The loader (`girl_jax.models.hf_bert`) and the exporter
(`girl_jax.models.hf_bert_export`) read the same tables.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from girl_jax.errors import ConfigError, ModelError
from girl_jax.models.bert import BertConfig

Path = tuple[Any, ...]
# (our param path, HF shape, HF array -> our array, our array -> HF array)
Rule = tuple[Path, tuple[int, ...], Callable[[np.ndarray], np.ndarray], Callable]


def config_from_hf(hf: dict[str, Any], *, where: str = "config.json", **overrides) -> BertConfig:
    """Maps a HF BERT `config.json` dict to a `BertConfig` (pooling etc. from overrides)."""
    model_type = hf.get("model_type", "bert")
    if model_type != "bert":
        raise ModelError(f"{where}: model_type {model_type!r} is not 'bert'")
    if hf.get("hidden_act", "gelu") != "gelu":
        raise ModelError(f"{where}: hidden_act {hf['hidden_act']!r} unsupported (only 'gelu')")
    if hf.get("position_embedding_type", "absolute") != "absolute":
        raise ModelError(
            f"{where}: position_embedding_type {hf['position_embedding_type']!r} unsupported "
            "(only 'absolute')"
        )
    keys = {
        "vocab_size": "vocab_size",
        "max_len": "max_position_embeddings",
        "type_vocab_size": "type_vocab_size",
        "d_model": "hidden_size",
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "mlp_dim": "intermediate_size",
    }
    fields = {}
    for ours, theirs in keys.items():
        if theirs not in hf:
            raise ModelError(f"{where}: missing key {theirs!r}")
        fields[ours] = hf[theirs]
    fields["norm_eps"] = float(hf.get("layer_norm_eps", 1e-12))
    fields.update(overrides)
    try:
        return BertConfig(**fields)
    except ConfigError as exc:
        raise ModelError(f"{where}: {exc}") from exc


def config_to_hf(cfg: BertConfig) -> dict[str, Any]:
    """A `config.json` dict for `transformers.BertModel`."""
    return {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "intermediate_size": cfg.mlp_dim,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1,
        "max_position_embeddings": cfg.max_len,
        "type_vocab_size": cfg.type_vocab_size,
        "initializer_range": 0.02,
        "layer_norm_eps": cfg.norm_eps,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "dtype": "float32",
    }


def _rules(cfg: BertConfig) -> dict[str, Rule]:
    """HF tensor name (no `bert.` prefix) -> how it maps onto our parameter tree."""
    d, h, k, f = cfg.d_model, cfg.num_heads, cfg.head_dim, cfg.mlp_dim
    same = (lambda a: a, lambda a: a)

    def ln(hf: str, ours: Path) -> dict[str, Rule]:
        return {
            f"{hf}.weight": ((*ours, "scale"), (d,), *same),
            f"{hf}.bias": ((*ours, "bias"), (d,), *same),
        }

    rules: dict[str, Rule] = {
        "embeddings.word_embeddings.weight": (
            ("embeddings", "word", "embedding"),
            (cfg.vocab_size, d),
            *same,
        ),
        "embeddings.position_embeddings.weight": (
            ("embeddings", "position", "embedding"),
            (cfg.max_len, d),
            *same,
        ),
        "embeddings.token_type_embeddings.weight": (
            ("embeddings", "token_type", "embedding"),
            (cfg.type_vocab_size, d),
            *same,
        ),
        **ln("embeddings.LayerNorm", ("embeddings", "norm")),
    }
    for i in range(cfg.num_layers):
        hf, ours = f"encoder.layer.{i}", ("layers", i)
        for name in ("query", "key", "value"):
            rules[f"{hf}.attention.self.{name}.weight"] = (
                (*ours, "attention", name, "kernel"),
                (d, d),
                lambda a: a.T.reshape(d, h, k),
                lambda a: a.reshape(d, h * k).T,
            )
            rules[f"{hf}.attention.self.{name}.bias"] = (
                (*ours, "attention", name, "bias"),
                (d,),
                lambda a: a.reshape(h, k),
                lambda a: a.reshape(h * k),
            )
        rules[f"{hf}.attention.output.dense.weight"] = (
            (*ours, "attention", "out", "kernel"),
            (d, d),
            lambda a: a.T.reshape(h, k, d),
            lambda a: a.reshape(h * k, d).T,
        )
        rules[f"{hf}.attention.output.dense.bias"] = (
            (*ours, "attention", "out", "bias"),
            (d,),
            *same,
        )
        rules.update(ln(f"{hf}.attention.output.LayerNorm", (*ours, "attention_norm")))
        transpose = (lambda a: a.T, lambda a: a.T)
        rules[f"{hf}.intermediate.dense.weight"] = ((*ours, "mlp_in", "kernel"), (f, d), *transpose)
        rules[f"{hf}.intermediate.dense.bias"] = ((*ours, "mlp_in", "bias"), (f,), *same)
        rules[f"{hf}.output.dense.weight"] = ((*ours, "mlp_out", "kernel"), (d, f), *transpose)
        rules[f"{hf}.output.dense.bias"] = ((*ours, "mlp_out", "bias"), (d,), *same)
        rules.update(ln(f"{hf}.output.LayerNorm", (*ours, "mlp_norm")))
    return rules
