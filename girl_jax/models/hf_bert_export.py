"""`BertEncoder` -> a Hugging Face BERT + sentence-transformers directory (`save_bert`), its
tensors in HF names and layout (`bert_tensors`), the tokenizer files copied beside them; every
file replaced atomically.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from safetensors.numpy import save_file

from girl_jax import atomic
from girl_jax.errors import ModelError
from girl_jax.models.bert import BertEncoder
from girl_jax.models.hf_bert_layout import _rules, config_to_hf

_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)


def _to_host(x: jax.Array) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        x = multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(jax.device_get(x))


def bert_tensors(model: BertEncoder) -> dict[str, np.ndarray]:
    """HF `BertModel` tensors (names without prefix, float32) for our model's parameters."""
    params = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    out = {}
    for name, (ours, hf_shape, _, to_hf) in _rules(model.cfg).items():
        array = to_hf(_to_host(params[ours].get_value()).astype(np.float32))
        if array.shape != hf_shape:  # a bug in the rules, never user input
            raise AssertionError(f"{name}: exported shape {array.shape} != {hf_shape}")
        out[name] = np.ascontiguousarray(array)
    return out


def _write_json(target: str, obj: Any) -> None:
    atomic.write_json(target, obj, indent=2)


def _save_tokenizer(tokenizer: Any, path: str) -> None:
    if hasattr(tokenizer, "to_str"):  # a `tokenizers.Tokenizer`
        atomic.write_with(os.path.join(path, "tokenizer.json"), tokenizer.save)
    elif isinstance(tokenizer, (str, os.PathLike)) and os.path.isfile(tokenizer):
        shutil.copyfile(tokenizer, os.path.join(path, "tokenizer.json"))
    elif isinstance(tokenizer, (str, os.PathLike)) and os.path.isdir(tokenizer):
        for name in _TOKENIZER_FILES:
            source = os.path.join(tokenizer, name)
            if os.path.isfile(source):
                shutil.copyfile(source, os.path.join(path, name))
    elif hasattr(tokenizer, "save_pretrained"):
        tokenizer.save_pretrained(path)
    else:
        raise ModelError(
            f"cannot save tokenizer of type {type(tokenizer).__name__}: pass a "
            "tokenizers.Tokenizer, a tokenizer.json path or a tokenizer directory"
        )


def save_bert(model: BertEncoder, path: str, tokenizer: Any = None) -> str:
    """Writes `model` as a HF BERT + sentence-transformers directory; returns `path`.

    Files: `config.json` (BertModel), `model.safetensors` (no pooler: transformers initialises
    one and warns), `modules.json` + `1_Pooling/config.json` (pooling, Normalize) and the
    tokenizer files when `tokenizer` is given. Each file is replaced atomically.
    """
    path = os.fspath(path)
    cfg = model.cfg
    os.makedirs(os.path.join(path, "1_Pooling"), exist_ok=True)
    tensors = bert_tensors(model)
    atomic.write_with(
        os.path.join(path, "model.safetensors"),
        lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}),
    )
    _write_json(os.path.join(path, "config.json"), config_to_hf(cfg))
    _write_json(
        os.path.join(path, "1_Pooling", "config.json"),
        {
            "word_embedding_dimension": cfg.d_model,
            "pooling_mode_cls_token": cfg.pooling == "cls",
            "pooling_mode_mean_tokens": cfg.pooling == "mean",
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
        },
    )
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {
            "idx": 1,
            "name": "1",
            "path": "1_Pooling",
            "type": "sentence_transformers.models.Pooling",
        },
    ]
    if cfg.normalize:
        modules.append(
            {
                "idx": 2,
                "name": "2",
                "path": "2_Normalize",
                "type": "sentence_transformers.models.Normalize",
            }
        )
    _write_json(os.path.join(path, "modules.json"), modules)
    _write_json(
        os.path.join(path, "sentence_bert_config.json"),
        {"max_seq_length": cfg.max_len, "do_lower_case": False},
    )
    if tokenizer is not None:
        _save_tokenizer(tokenizer, path)
    return path
