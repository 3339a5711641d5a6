"""The decoder's building blocks: rotary and positional math, projections (LoRA where configured)
and norms, grouped-query attention with its KV-cache write paths (stacked, stacked-in-place and
per-layer head-major), the MLP, the pre-norm `Block` and `_block_fn` (a block as a pure,
optionally rematerialised function). `girl_jax.models.decoder` assembles them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import nnx

from girl_jax.models.layers import LayerNorm, Linear, RMSNorm
from girl_jax.models.lora import LoRALinear
from girl_jax.parallel.rules import constrain as _constrain

if TYPE_CHECKING:  # annotations only: decoder imports this module
    from girl_jax.models.decoder import DecoderConfig


# ----------------------------------------------------------------------------- math


def activation_fn(name: str):
    if name == "gelu_new":
        return lambda x: jax.nn.gelu(x, approximate=True)
    if name == "gelu":
        return lambda x: jax.nn.gelu(x, approximate=False)
    return {"silu": jax.nn.silu, "relu": jax.nn.relu}[name]


def rope_tables(positions_BxT: jax.Array, head_dim: int, theta: float):
    """cos, sin [B, T, head_dim] in the HF rotate_half layout (frequencies repeated twice)."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs_BxTxF, freqs_BxTxF], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x_BxTxHxK: jax.Array, cos_BxTxK: jax.Array, sin_BxTxK: jax.Array) -> jax.Array:
    half = x_BxTxHxK.shape[-1] // 2
    x32 = x_BxTxHxK.astype(jnp.float32)
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    out = x32 * cos_BxTxK[:, :, None, :] + rotated * sin_BxTxK[:, :, None, :]
    return out.astype(x_BxTxHxK.dtype)


def default_positions(attention_mask_BxT: jax.Array | None, batch: int, length: int) -> jax.Array:
    """0.. over valid tokens, so a left-padded prompt starts at position 0."""
    if attention_mask_BxT is None:
        return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    return jnp.maximum(jnp.cumsum(attention_mask_BxT.astype(jnp.int32), axis=-1) - 1, 0)


def make_proj(cfg: DecoderConfig, name: str, d_in: int, d_out: int, axes, bias: bool, rngs):
    """A Linear, or a LoRALinear when the config adapts this projection."""
    kw = dict(
        axes=axes,
        use_bias=bias,
        rngs=rngs,
        dtype=cfg.dtype,
        param_dtype=cfg.param_dtype,
        matmul_dtype=cfg.matmul_dtype,
    )
    if cfg.lora_rank and name in cfg.lora_targets:
        return LoRALinear(d_in, d_out, rank=cfg.lora_rank, alpha=cfg.lora_alpha, **kw)
    return Linear(d_in, d_out, **kw)


def make_norm(cfg: DecoderConfig):
    cls = LayerNorm if cfg.family == "gpt2" else RMSNorm
    return cls(cfg.d_model, cfg.norm_eps, dtype=cfg.dtype, param_dtype=cfg.param_dtype)


# ----------------------------------------------------------------------------- modules


class Attention(nnx.Module):
    """Multi-head / grouped-query self-attention, optionally reading and writing a KV cache."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        d, h, kv, k = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        b = cfg.attn_bias
        self.q_proj = make_proj(cfg, "q_proj", d, h * k, ("embed", "heads"), b, rngs)
        self.k_proj = make_proj(cfg, "k_proj", d, kv * k, ("embed", "kv_heads"), b, rngs)
        self.v_proj = make_proj(cfg, "v_proj", d, kv * k, ("embed", "kv_heads"), b, rngs)
        self.o_proj = make_proj(cfg, "o_proj", h * k, d, ("heads", "embed"), b, rngs)

    def __call__(self, x_BxTxD, mask_BxTxS, rope, kv_cache, index, cache_layout=None):
        cfg = self.cfg
        B, T, _ = x_BxTxD.shape
        H, KV, K = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q_BxTxHxK = self.q_proj(x_BxTxD).reshape(B, T, H, K)
        k_BxTxGxK = self.k_proj(x_BxTxD).reshape(B, T, KV, K)
        v_BxTxGxK = self.v_proj(x_BxTxD).reshape(B, T, KV, K)
        if rope is not None:
            q_BxTxHxK = apply_rope(q_BxTxHxK, *rope)
            k_BxTxGxK = apply_rope(k_BxTxGxK, *rope)
        dtype = x_BxTxD.dtype
        q_BxTxGxRxK = q_BxTxHxK.reshape(B, T, KV, H // KV, K).astype(dtype)
        if kv_cache is not None and cache_layout == "per_layer":
            # This layer's own head-major [B, G, S, K] cache: the new slots are written in place
            # and the attention dots read it as stored (no per-step slice or transpose copy).
            ck, cv = kv_cache
            start = (0, 0, index, 0)
            ck = jax.lax.dynamic_update_slice(ck, _heads_first(k_BxTxGxK, ck.dtype), start)
            cv = jax.lax.dynamic_update_slice(cv, _heads_first(v_BxTxGxK, cv.dtype), start)
            return self._attend(q_BxTxGxRxK, ck, cv, mask_BxTxS, "bgsk"), (ck, cv)
        if kv_cache is not None and len(kv_cache) == 3:
            # The whole stacked cache and this layer's index: write the new slots in place and
            # read the layer back, so a decode step never copies the cache (the stacked-slices
            # version rebuilt all L layers every token).
            ck, cv, layer = kv_cache
            start = (layer, 0, index, 0, 0)
            ck = jax.lax.dynamic_update_slice(ck, k_BxTxGxK.astype(ck.dtype)[None], start)
            cv = jax.lax.dynamic_update_slice(cv, v_BxTxGxK.astype(cv.dtype)[None], start)
            k_BxSxGxK, v_BxSxGxK = ck[layer], cv[layer]
            new_cache = (ck, cv)
        elif kv_cache is not None:
            ck, cv = kv_cache
            start = (0, index, 0, 0)
            k_BxSxGxK = jax.lax.dynamic_update_slice(ck, k_BxTxGxK.astype(ck.dtype), start)
            v_BxSxGxK = jax.lax.dynamic_update_slice(cv, v_BxTxGxK.astype(cv.dtype), start)
            new_cache = (k_BxSxGxK, v_BxSxGxK)
        else:
            if jnp.dtype(dtype) == jnp.float32 and T >= CAUSAL_SPLIT_MIN_LEN:
                return self._attend_causal(q_BxTxGxRxK, k_BxTxGxK, v_BxTxGxK, mask_BxTxS), None
            k_BxSxGxK, v_BxSxGxK, new_cache = k_BxTxGxK, v_BxTxGxK, None
        out = self._attend(q_BxTxGxRxK, k_BxSxGxK, v_BxSxGxK, mask_BxTxS, "bsgk")
        return out, new_cache

    def _attend_causal(self, q_BxTxGxRxK, k_BxTxGxK, v_BxTxGxK, mask_BxTxS):
        """Self-attention without a cache, whose mask is causal (`Decoder.hidden`'s): the first
        half of the queries reads only the first half of the keys (the rest is masked for them),
        so the score matrix is computed as two blocks, 3/4 of its area. Each block normalises
        after the value product (`_softmax_values`). float32 only; the same attention as
        `_attend` up to float rounding at every valid query (a padding query, which no valid
        query reads and no loss counts, gets the mean of its block's values rather than of all
        of them; docs/benchmarks.md, "Causal attention in two blocks")."""
        B, T, G, R, K = q_BxTxGxRxK.shape
        h = T // 2
        q = q_BxTxGxRxK * jnp.asarray(K**-0.5, q_BxTxGxRxK.dtype)
        first = _softmax_values(q[:, :h], k_BxTxGxK[:, :h], v_BxTxGxK[:, :h], mask_BxTxS[:, :h, :h])
        second = _softmax_values(q[:, h:], k_BxTxGxK, v_BxTxGxK, mask_BxTxS[:, h:])
        out_BxTxGxRxK = jnp.concatenate([first, second], axis=1)
        return self.o_proj(out_BxTxGxRxK.reshape(B, T, G * R * K))

    def _attend(self, q_BxTxGxRxK, k, v, mask_BxTxS, kv_dims):
        """Softmax attention; `kv_dims` names the key / value layout ("bsgk" or "bgsk")."""
        B, T, G, R, K = q_BxTxGxRxK.shape
        dtype = q_BxTxGxRxK.dtype
        scores = jnp.einsum(
            f"btgrk,{kv_dims}->bgrts",
            q_BxTxGxRxK,
            k.astype(dtype),
            preferred_element_type=jnp.float32,
        ) / jnp.sqrt(jnp.float32(K))
        scores = jnp.where(mask_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1)
        if jnp.dtype(dtype).itemsize == 2:
            # Out as [B, G, R, T, K], then moved: asked for [B, T, G, R, K] directly, XLA:CPU
            # turns the 16-bit x 16-bit -> f32 product over a head-major cache into a dot it
            # cannot run ("Unsupported element type for DotThunk: BF16 x BF16 = F32"; jax
            # 0.10.2). float32 keeps the direct form (and its last-digit results).
            out_BxGxRxTxK = jnp.einsum(
                f"bgrts,{kv_dims}->bgrtk",
                probs.astype(dtype),
                v.astype(dtype),
                preferred_element_type=jnp.float32,
            ).astype(dtype)
            out_BxTxGxRxK = jnp.transpose(out_BxGxRxTxK, (0, 3, 1, 2, 4))
        else:
            out_BxTxGxRxK = jnp.einsum(
                f"bgrts,{kv_dims}->btgrk",
                probs.astype(dtype),
                v.astype(dtype),
                preferred_element_type=jnp.float32,
            ).astype(dtype)
        return self.o_proj(out_BxTxGxRxK.reshape(B, T, G * R * K))


# Sequences at least this long take `Attention._attend_causal` when there is no cache (float32):
# at T 192-224 the default decoder's forward is 20-28% faster and its gradient ~15%; shorter
# ones gain little over the extra ops.
CAUSAL_SPLIT_MIN_LEN = 64


def _softmax_values(q_BxTxGxRxK, k_BxSxGxK, v_BxSxGxK, mask_BxTxS):
    """softmax(q k^T, masked) v, normalised after the value product: the division runs on the
    [B, T, G, R, K] output, not on the [B, G, R, T, S] probabilities, and the row maximum is a
    constant of the gradient (softmax does not depend on it). q comes pre-scaled by 1/sqrt(K);
    a row with no valid key gets the mean of the values (as `jax.nn.softmax` of a constant row).
    """
    scores = jnp.einsum(
        "btgrk,bsgk->bgrts", q_BxTxGxRxK, k_BxSxGxK, preferred_element_type=jnp.float32
    )
    scores = jnp.where(mask_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
    row_max = jax.lax.stop_gradient(scores.max(axis=-1, keepdims=True))
    weights = jnp.exp(scores - row_max)
    total_BxGxRxT = weights.sum(axis=-1)
    out = jnp.einsum("bgrts,bsgk->btgrk", weights, v_BxSxGxK, preferred_element_type=jnp.float32)
    return out / jnp.transpose(total_BxGxRxT, (0, 3, 1, 2))[..., None]


def _heads_first(x_BxTxGxK: jax.Array, dtype) -> jax.Array:
    return jnp.swapaxes(x_BxTxGxK, 1, 2).astype(dtype)


class MLP(nnx.Module):
    """GPT-2: down(act(up(x))); Llama: down(act(gate(x)) · up(x))."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        d, m, b = cfg.d_model, cfg.mlp_dim, cfg.mlp_bias
        self.gated = cfg.family == "llama"
        self.activation = cfg.activation
        if self.gated:
            self.gate_proj = make_proj(cfg, "gate_proj", d, m, ("embed", "mlp"), b, rngs)
        self.up_proj = make_proj(cfg, "up_proj", d, m, ("embed", "mlp"), b, rngs)
        self.down_proj = make_proj(cfg, "down_proj", m, d, ("mlp", "embed"), b, rngs)

    def __call__(self, x_BxTxD):
        h = self.up_proj(x_BxTxD)
        act = activation_fn(self.activation)
        h = act(self.gate_proj(x_BxTxD)) * h if self.gated else act(h)
        return self.down_proj(h)


ACTIVATION_AXES = ("batch", "length", "embed")


def constrain(x, axes):
    """Sharding constraint by logical names when a mesh is active (no-op otherwise)."""
    return _constrain(x, axes)


class Block(nnx.Module):
    """Pre-norm transformer block."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.attn_norm = make_norm(cfg)
        self.attn = Attention(cfg, rngs=rngs)
        self.mlp_norm = make_norm(cfg)
        self.mlp = MLP(cfg, rngs=rngs)

    def __call__(self, x_BxTxD, mask_BxTxS, rope, kv_cache, index, cache_layout=None):
        # Pin activations at block boundaries (batch over data x fsdp): without it XLA may
        # gather whole stacked weights inside the layer scan (61 GiB/chip for 7B on v5e-256).
        x_BxTxD = constrain(x_BxTxD, ACTIVATION_AXES)
        h, new_cache = self.attn(
            self.attn_norm(x_BxTxD), mask_BxTxS, rope, kv_cache, index, cache_layout
        )
        x_BxTxD = x_BxTxD + h
        x_BxTxD = x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD))
        x_BxTxD = constrain(x_BxTxD, ACTIVATION_AXES)
        return x_BxTxD, new_cache


def _block_fn(graphdef, remat: bool, cache_layout: str | None = None):
    """A pure (block_state, x, mask, rope, kv, index) -> (x, kv) function, rematerialised or not."""

    def fn(state, x, mask, rope, kv, index):
        return nnx.merge(graphdef, state)(x, mask, rope, kv, index, cache_layout)

    return jax.checkpoint(fn, prevent_cse=False) if remat else fn
