"""Hugging Face GPT-2 / Llama checkpoints <-> our Decoder, name by name, without torch.

GPT-2 stores Conv1D weights as (in, out), like our kernels, with q, k, v fused in
`c_attn`; Llama stores Linear weights as (out, in). Our RoPE uses HF's rotate_half
layout, so Llama q / k need no permutation.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from girl_jax.errors import ConfigError, ModelError
from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.models.lora import BASE_PARAMS, merge_lora

Path = tuple[Any, ...]
GPT2_ACTIVATIONS = {
    "gelu_new": "gelu_new",
    "gelu_pytorch_tanh": "gelu_new",
    "gelu_fast": "gelu_new",
    "gelu": "gelu",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
}
# Buffers some checkpoints carry that are not parameters.
_IGNORED = re.compile(r"(\.attn\.(bias|masked_bias)$)|(rotary_emb\.inv_freq$)")


# ----------------------------------------------------------------------------- configs


def config_from_hf(hf: dict[str, Any], **overrides: Any) -> DecoderConfig:
    """A DecoderConfig from a HF `config.json` dict (gpt2 or llama); `overrides` win."""
    model_type = hf.get("model_type")
    try:
        if model_type == "gpt2":
            act = hf.get("activation_function", "gelu_new")
            if act not in GPT2_ACTIVATIONS:
                raise ModelError(f"config.json: unsupported activation_function {act!r}")
            if hf.get("scale_attn_by_inverse_layer_idx") or not hf.get("scale_attn_weights", True):
                raise ModelError("config.json: GPT-2 attention scaling variants are not supported")
            kw = dict(
                family="gpt2",
                vocab_size=hf["vocab_size"],
                max_len=hf.get("n_positions", 1024),
                d_model=hf["n_embd"],
                num_layers=hf["n_layer"],
                num_heads=hf["n_head"],
                mlp_dim=hf.get("n_inner") or 4 * hf["n_embd"],
                norm_eps=hf.get("layer_norm_epsilon", 1e-5),
                tie_embeddings=hf.get("tie_word_embeddings", True),
                activation=GPT2_ACTIVATIONS[act],
            )
        elif model_type == "llama":
            rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
            if rope.get("rope_type", rope.get("type", "default")) != "default":
                raise ModelError(f"config.json: RoPE scaling {rope} is not supported")
            theta = rope.get("rope_theta", hf.get("rope_theta", 10000.0))
            act = hf.get("hidden_act", "silu")
            if act not in ("silu", "swish"):
                raise ModelError(f"config.json: unsupported hidden_act {act!r}")
            kw = dict(
                family="llama",
                vocab_size=hf["vocab_size"],
                max_len=hf.get("max_position_embeddings", 2048),
                d_model=hf["hidden_size"],
                num_layers=hf["num_hidden_layers"],
                num_heads=hf["num_attention_heads"],
                num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
                head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
                mlp_dim=hf["intermediate_size"],
                norm_eps=hf.get("rms_norm_eps", 1e-6),
                rope_theta=float(theta),
                tie_embeddings=hf.get("tie_word_embeddings", False),
                attn_bias=hf.get("attention_bias", False),
                mlp_bias=hf.get("mlp_bias", False),
                activation="silu",
            )
        else:
            raise ModelError(f"config.json: model_type {model_type!r} is not a decoder we load")
    except KeyError as e:
        raise ModelError(
            f"config.json: missing key {e.args[0]!r} for model_type {model_type}"
        ) from e
    kw.update(overrides)
    try:
        return DecoderConfig(**kw)
    except (ConfigError, TypeError) as e:
        raise ModelError(f"config.json: {e}") from e


def config_to_hf(cfg: DecoderConfig) -> dict[str, Any]:
    """The `config.json` transformers needs to rebuild `cfg` (float32 weights)."""
    common = {"torch_dtype": "float32", "dtype": "float32", "use_cache": True}
    if cfg.family == "gpt2":
        act = {"gelu_new": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}
        return {
            "architectures": ["GPT2LMHeadModel"],
            "model_type": "gpt2",
            "vocab_size": cfg.vocab_size,
            "n_positions": cfg.max_len,
            "n_ctx": cfg.max_len,
            "n_embd": cfg.d_model,
            "n_layer": cfg.num_layers,
            "n_head": cfg.num_heads,
            "n_inner": cfg.mlp_dim,
            "activation_function": act[cfg.activation],
            "layer_norm_epsilon": cfg.norm_eps,
            "tie_word_embeddings": cfg.tie_embeddings,
            "resid_pdrop": 0.0,
            "embd_pdrop": 0.0,
            "attn_pdrop": 0.0,
            "scale_attn_weights": True,
            "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False,
            **common,
        }
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_len,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": cfg.activation,
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_theta": cfg.rope_theta, "rope_type": "default"},
        "attention_bias": cfg.attn_bias,
        "mlp_bias": cfg.mlp_bias,
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        **common,
    }


# ----------------------------------------------------------------------------- name maps


def _entries(cfg: DecoderConfig, prefix: str) -> list[tuple[str, list[Path], str]]:
    """(HF name, our per-layer paths, how) for every tensor; how: copy | transpose | split3."""
    out: list[tuple[str, list[Path], str]] = []
    if cfg.family == "gpt2":
        out += [
            (f"{prefix}wte.weight", [("embed", "embedding")], "copy"),
            (f"{prefix}wpe.weight", [("pos_embed", "embedding")], "copy"),
            (f"{prefix}ln_f.weight", [("final_norm", "scale")], "copy"),
            (f"{prefix}ln_f.bias", [("final_norm", "bias")], "copy"),
        ]
        for i in range(cfg.num_layers):
            h, L = f"{prefix}h.{i}.", ("layers", i)
            qkv = [L + ("attn", p) for p in ("q_proj", "k_proj", "v_proj")]
            out += [
                (h + "ln_1.weight", [L + ("attn_norm", "scale")], "copy"),
                (h + "ln_1.bias", [L + ("attn_norm", "bias")], "copy"),
                (h + "attn.c_attn.weight", [p + ("kernel",) for p in qkv], "split3"),
                (h + "attn.c_attn.bias", [p + ("bias",) for p in qkv], "split3"),
                (h + "attn.c_proj.weight", [L + ("attn", "o_proj", "kernel")], "copy"),
                (h + "attn.c_proj.bias", [L + ("attn", "o_proj", "bias")], "copy"),
                (h + "ln_2.weight", [L + ("mlp_norm", "scale")], "copy"),
                (h + "ln_2.bias", [L + ("mlp_norm", "bias")], "copy"),
                (h + "mlp.c_fc.weight", [L + ("mlp", "up_proj", "kernel")], "copy"),
                (h + "mlp.c_fc.bias", [L + ("mlp", "up_proj", "bias")], "copy"),
                (h + "mlp.c_proj.weight", [L + ("mlp", "down_proj", "kernel")], "copy"),
                (h + "mlp.c_proj.bias", [L + ("mlp", "down_proj", "bias")], "copy"),
            ]
    else:
        out += [
            (f"{prefix}embed_tokens.weight", [("embed", "embedding")], "copy"),
            (f"{prefix}norm.weight", [("final_norm", "scale")], "copy"),
        ]
        for i in range(cfg.num_layers):
            h, L = f"{prefix}layers.{i}.", ("layers", i)
            out += [
                (h + "input_layernorm.weight", [L + ("attn_norm", "scale")], "copy"),
                (h + "post_attention_layernorm.weight", [L + ("mlp_norm", "scale")], "copy"),
            ]
            for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
                out.append((h + f"self_attn.{p}.weight", [L + ("attn", p, "kernel")], "transpose"))
                if cfg.attn_bias:
                    out.append((h + f"self_attn.{p}.bias", [L + ("attn", p, "bias")], "copy"))
            for p in ("gate_proj", "up_proj", "down_proj"):
                out.append((h + f"mlp.{p}.weight", [L + ("mlp", p, "kernel")], "transpose"))
                if cfg.mlp_bias:
                    out.append((h + f"mlp.{p}.bias", [L + ("mlp", p, "bias")], "copy"))
    if not cfg.tie_embeddings:
        out.append(("lm_head.weight", [("lm_head", "kernel")], "transpose"))
    return out


def _prefix(cfg: DecoderConfig, names) -> str:
    want = "transformer." if cfg.family == "gpt2" else "model."
    return want if any(n.startswith(want) for n in names) else ""


# ----------------------------------------------------------------------------- state <-> flat


def _expected_shapes(cfg: DecoderConfig) -> dict[Path, tuple[int, ...]]:
    """Per-layer parameter paths and shapes of a Decoder built from `cfg` (no LoRA, unscanned)."""
    plain = dataclasses.replace(cfg, scan_layers=False, lora_rank=0)
    model = nnx.eval_shape(lambda: Decoder(plain, rngs=nnx.Rngs(0)))
    return {tuple(p): tuple(v.shape) for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def params_from_hf(cfg: DecoderConfig, tensors: dict[str, np.ndarray]) -> dict[Path, np.ndarray]:
    """Our per-layer params {path: array} from HF tensors; ModelError on any mismatch."""
    expected = _expected_shapes(cfg)
    prefix = _prefix(cfg, tensors)
    entries = _entries(cfg, prefix)
    known = {name for name, _, _ in entries}
    if cfg.tie_embeddings:
        known.add("lm_head.weight")  # tied copies are sometimes stored: ignore them
    unexpected = sorted(n for n in tensors if n not in known and not _IGNORED.search(n))
    if unexpected:
        raise ModelError(f"unexpected tensors in checkpoint: {unexpected[:8]}")
    flat: dict[Path, np.ndarray] = {}
    for name, paths, how in entries:
        if name not in tensors:
            raise ModelError(f"tensor {name!r} is missing from the checkpoint")
        t = np.asarray(tensors[name])
        parts = [t.T] if how == "transpose" else np.split(t, 3, axis=-1) if how == "split3" else [t]
        if how == "split3" and t.shape[-1] % 3:
            raise ModelError(f"tensor {name!r} has shape {t.shape}: last dim not divisible by 3")
        for path, part in zip(paths, parts):
            want = expected[path]
            if part.shape != want:
                got = t.shape
                hf_want = want[::-1] if how == "transpose" else want
                if how == "split3":
                    hf_want = want[:-1] + (3 * want[-1],)
                raise ModelError(
                    f"tensor {name!r}: checkpoint shape {got}, model expects {hf_want}"
                )
            flat[path] = part.astype(np.float32) if part.dtype != np.float32 else part
    return flat


def params_to_hf(cfg: DecoderConfig, flat: dict[Path, np.ndarray]) -> dict[str, np.ndarray]:
    """HF tensors (names of GPT2LMHeadModel / LlamaForCausalLM) from our per-layer params."""
    prefix = "transformer." if cfg.family == "gpt2" else "model."
    out = {}
    for name, paths, how in _entries(cfg, prefix):
        parts = [np.asarray(flat[p], np.float32) for p in paths]
        if how == "transpose":
            t = parts[0].T
        elif how == "split3":
            t = np.concatenate(parts, axis=-1)
        else:
            t = parts[0]
        out[name] = np.ascontiguousarray(t)
    return out


def flat_params(model: nnx.Module) -> dict[Path, np.ndarray]:
    """A model's Params as per-layer {path: numpy array} (scanned layers unstacked)."""
    flat = {}
    for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
        path, value = tuple(path), np.asarray(var[...])
        if model.cfg.scan_layers and path[0] == "layers":
            for i in range(model.cfg.num_layers):
                flat[("layers", i) + path[1:]] = value[i]
        else:
            flat[path] = value
    return flat


def load_params(model: nnx.Module, flat: dict[Path, np.ndarray]) -> nnx.Module:
    """Writes per-layer params into `model` (stacking them when layers are scanned)."""
    cfg = model.cfg
    state = nnx.state(model, BASE_PARAMS)
    for path, var in nnx.to_flat_state(state):
        path = tuple(path)
        scanned = cfg.scan_layers and path[0] == "layers"
        keys = [("layers", i) + path[1:] for i in range(cfg.num_layers)] if scanned else [path]
        missing = [k for k in keys if k not in flat]
        if missing:
            raise ModelError(f"no value for parameter {'/'.join(map(str, missing[0]))}")
        value = np.stack([flat[k] for k in keys]) if scanned else flat[path]
        var.set_value(jnp.asarray(value, dtype=var.dtype))
    nnx.update(model, state)
    return model


def decoder_from_hf(
    hf_config: dict[str, Any], tensors: dict[str, np.ndarray], **overrides
) -> Decoder:
    """A Decoder from a HF config dict and its tensors; `overrides` set DecoderConfig fields."""
    cfg = config_from_hf(hf_config, **overrides)
    flat = params_from_hf(cfg, tensors)
    if cfg.lora_rank:
        # adapters start at their init (B = 0), the base comes from the checkpoint
        model = Decoder(cfg, rngs=nnx.Rngs(0))
    else:
        model = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
    return load_params(model, flat)


def decoder_to_hf(model: nnx.Module) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """(config.json dict, tensors) for a Decoder; LoRA adapters are merged first."""
    if not isinstance(model, Decoder):
        raise ModelError(f"save_pretrained: expected a Decoder, got {type(model).__name__}")
    model = merge_lora(model)
    return config_to_hf(model.cfg), params_to_hf(model.cfg, flat_params(model))
