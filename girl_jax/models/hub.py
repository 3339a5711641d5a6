"""`from_pretrained` / `save_pretrained`: local Hugging Face directories, no torch, no pickle.

A directory holds `config.json` and `model.safetensors` (or shards listed in
`model.safetensors.index.json`). Loading dispatches on `architectures` / `model_type`:
GPT-2 and Llama causal LMs become our `Decoder`; BERT (plain or sentence-transformers)
goes to `girl_jax.models.hf_bert.load_bert`.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import ml_dtypes
import numpy as np
import safetensors.numpy
from flax import nnx

from girl_jax.errors import ModelError
from girl_jax.models import hf_bert
from girl_jax.models.hf_decoder import decoder_from_hf, decoder_to_hf

DECODER_TYPES = {"gpt2", "llama"}
DECODER_ARCHITECTURES = {
    "GPT2LMHeadModel": "gpt2",
    "GPT2Model": "gpt2",
    "LlamaForCausalLM": "llama",
    "LlamaModel": "llama",
}
_SAFETENSORS_DTYPES = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _read_raw_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Parses the safetensors layout directly: numpy has no bfloat16, ml_dtypes does."""
    dtypes = dict(_SAFETENSORS_DTYPES, BF16=ml_dtypes.bfloat16)
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    base = 8 + header_len
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in dtypes:
            raise ModelError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        arr = np.frombuffer(data[base + start : base + end], dtype=dtypes[info["dtype"]])
        out[name] = arr.reshape(info["shape"]).astype(np.float32)
    return out


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of one .safetensors file as numpy arrays (bfloat16 becomes float32)."""
    path = Path(path)
    try:
        return safetensors.numpy.load_file(str(path))
    except TypeError:  # dtype numpy cannot represent (bfloat16)
        return _read_raw_safetensors(path)
    except Exception as e:
        raise ModelError(f"{path}: not a readable safetensors file ({e})") from e


def read_tensors(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a HF model directory, following a sharded index when there is one."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ModelError(f"{index}: not a safetensors index ({e})") from e
        files = sorted(set(weight_map.values()))
    else:
        files = sorted(p.name for p in directory.glob("*.safetensors"))
    if not files:
        raise ModelError(f"{directory}: no *.safetensors weights (pickle files are not loaded)")
    tensors: dict[str, np.ndarray] = {}
    for name in files:
        if not (directory / name).exists():
            raise ModelError(f"{directory / name}: shard listed in the index is missing")
        tensors.update(read_safetensors(directory / name))
    return tensors


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    path = Path(directory) / "config.json"
    if not path.exists():
        raise ModelError(f"{path}: missing (not a Hugging Face model directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ModelError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from e


def _is_bert(directory: Path) -> bool:
    if (directory / "modules.json").exists():  # sentence-transformers layout
        return True
    if not (directory / "config.json").exists():
        return False
    hf = read_config(directory)
    archs = hf.get("architectures") or []
    return hf.get("model_type") == "bert" or any(a.startswith("Bert") for a in archs)


def from_pretrained(path: str | os.PathLike, *, dtype: str | None = None, **overrides) -> Any:
    """Loads a local HF directory as our model.

    Args:
      path: directory with config.json + *.safetensors.
      dtype: compute dtype override ("float32" / "bfloat16"); params stay float32.
      **overrides: DecoderConfig fields (e.g. scan_layers=True, remat=True, lora_rank=8).
    Returns:
      a `Decoder` for GPT-2 / Llama, whatever `hf_bert.load_bert` returns for BERT.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise ModelError(f"{directory}: not a directory")
    if _is_bert(directory):
        return hf_bert.load_bert(str(directory), dtype=dtype)
    hf = read_config(directory)
    archs = hf.get("architectures") or []
    family = next((DECODER_ARCHITECTURES[a] for a in archs if a in DECODER_ARCHITECTURES), None)
    family = family or (hf.get("model_type") if not archs else None)
    if family not in DECODER_TYPES:
        raise ModelError(
            f"{directory / 'config.json'}: unsupported architecture "
            f"{archs or hf.get('model_type')!r}; supported: "
            f"{sorted(DECODER_ARCHITECTURES)} and BERT"
        )

    if dtype is not None:
        overrides["dtype"] = dtype
    hf = dict(hf, model_type=family)
    return decoder_from_hf(hf, read_tensors(directory), **overrides)


def save_pretrained(model: nnx.Module, path: str | os.PathLike, tokenizer=None) -> Path:
    """Writes `model` as a HF directory (config.json, model.safetensors[, tokenizer.json]).

    A `BertEncoder` goes to `hf_bert.save_bert`. The directory is built beside `path`
    and renamed into place, so a crash leaves either the old directory or the new one,
    never half of one. LoRA adapters are merged into the weights first. `tokenizer` is
    anything with `.save(file)` (a `tokenizers.Tokenizer`).
    """
    if type(model).__name__ == "BertEncoder":
        return Path(hf_bert.save_bert(model, str(path), tokenizer=tokenizer))
    config, tensors = decoder_to_hf(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        (tmp / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        safetensors.numpy.save_file(tensors, str(tmp / "model.safetensors"), {"format": "pt"})
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        old = None
        if path.exists():
            old = path.parent / f".{path.name}.old-{os.getpid()}"
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
