"""Decoder-only language model (GPT-2 and Llama families) with a KV cache.

Call contract::

    logits_BxTxV, aux = model(ids_BxT, attention_mask=None, positions=None, cache=None)

Without a cache, `attention_mask` [B, T] marks valid tokens (left or right padding) and
positions default to ``clip(cumsum(mask) - 1, 0)``. With a cache (``model.init_cache``),
`attention_mask` [B, S] marks the valid slots of the whole cache (the T slots written now
included), `positions` [B, T] is required, the new keys / values go to slots
``index .. index + T - 1`` and ``aux["cache"]`` is the updated cache. ``aux["hidden"]`` is
the final-normed hidden state; logits are always float32. The blocks (attention and its cache
writes, MLP, norms, RoPE) live in `girl_jax.models.decoder_blocks`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from girl_jax.errors import ConfigError, ModelError
from girl_jax.models.decoder_blocks import (  # noqa: F401 (re-exported: they lived here)
    ACTIVATION_AXES,
    MLP,
    Attention,
    Block,
    _block_fn,
    activation_fn,
    apply_rope,
    constrain,
    default_positions,
    make_norm,
    make_proj,
    rope_tables,
)
from girl_jax.models.layers import LAYERS_METADATA, Embed, Linear
from girl_jax.models.lora import TARGETS

FAMILIES = ("gpt2", "llama")
DTYPES = ("float32", "bfloat16")
ACTIVATIONS = ("gelu_new", "silu", "gelu", "relu")
Cache = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
    """Decoder shape and numerics; None fields take the family's default on construction."""

    family: str = "gpt2"
    vocab_size: int = 256
    max_len: int = 512
    d_model: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None  # None: num_heads; fewer: grouped-query attention
    head_dim: int | None = None  # None: d_model // num_heads
    mlp_dim: int | None = None  # None: 4·d (gpt2) or ~8/3·d rounded up to 64 (llama)
    norm_eps: float | None = None  # None: 1e-5 (gpt2), 1e-6 (llama)
    rope_theta: float = 10000.0
    tie_embeddings: bool | None = None  # None: True (gpt2), False (llama)
    attn_bias: bool | None = None  # q/k/v/o biases; None: True (gpt2), False (llama)
    mlp_bias: bool | None = None  # None: True (gpt2), False (llama)
    activation: str | None = None  # None: gelu_new (gpt2, tanh approximation), silu (llama)
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"
    # None (or ""): the compute dtype. "bfloat16" with float32 compute: the projections and the
    # LM head multiply bf16 operands with float32 accumulation (mixed precision; attention,
    # norms, softmax and the residual stream stay float32). Fast on CPUs with bf16 matrix units.
    matmul_dtype: str | None = None
    remat: bool = False
    scan_layers: bool = False
    lora_rank: int = 0
    lora_alpha: float = 16.0
    lora_targets: tuple[str, ...] = TARGETS

    def __post_init__(self):
        if self.matmul_dtype == "":  # the config files' "unset"
            object.__setattr__(self, "matmul_dtype", None)
        if self.family not in FAMILIES:
            raise ConfigError(
                f"DecoderConfig.family must be one of {FAMILIES}, got {self.family!r}"
            )
        gpt2 = self.family == "gpt2"
        defaults = {
            "num_kv_heads": self.num_heads,
            "head_dim": self.d_model // max(self.num_heads, 1),
            "norm_eps": 1e-5 if gpt2 else 1e-6,
            "tie_embeddings": gpt2,
            "attn_bias": gpt2,
            "mlp_bias": gpt2,
            "activation": "gelu_new" if gpt2 else "silu",
        }
        for name, value in defaults.items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.mlp_dim is None:
            mlp = 4 * self.d_model if gpt2 else 64 * math.ceil(8 * self.d_model / 3 / 64)
            object.__setattr__(self, "mlp_dim", mlp)
        object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
        self._validate()

    def _validate(self):
        for name in ("vocab_size", "max_len", "d_model", "num_layers", "num_heads"):
            _positive(self, name)
        for name in ("num_kv_heads", "head_dim", "mlp_dim"):
            _positive(self, name)
        if self.head_dim * self.num_heads != self.d_model and self.family == "gpt2":
            raise ConfigError(
                f"DecoderConfig.head_dim: gpt2 needs head_dim·num_heads == d_model "
                f"({self.head_dim}·{self.num_heads} != {self.d_model})"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"DecoderConfig.num_kv_heads={self.num_kv_heads} must divide "
                f"num_heads={self.num_heads}"
            )
        if self.family == "llama" and self.head_dim % 2:
            raise ConfigError(f"DecoderConfig.head_dim={self.head_dim} must be even for RoPE")
        if not self.norm_eps > 0:
            raise ConfigError(f"DecoderConfig.norm_eps must be > 0, got {self.norm_eps}")
        if not self.rope_theta > 0:
            raise ConfigError(f"DecoderConfig.rope_theta must be > 0, got {self.rope_theta}")
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"DecoderConfig.activation must be one of {ACTIVATIONS}, got {self.activation!r}"
            )
        for name in ("dtype", "param_dtype"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(
                    f"DecoderConfig.{name} must be one of {DTYPES}, got {getattr(self, name)!r}"
                )
        if self.matmul_dtype is not None and self.matmul_dtype not in DTYPES:
            raise ConfigError(
                f"DecoderConfig.matmul_dtype must be None or one of {DTYPES}, "
                f"got {self.matmul_dtype!r}"
            )
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ConfigError(f"DecoderConfig.lora_rank must be an int >= 0, got {self.lora_rank}")
        if self.lora_rank and not self.lora_alpha > 0:
            raise ConfigError(f"DecoderConfig.lora_alpha must be > 0, got {self.lora_alpha}")
        unknown = set(self.lora_targets) - set(TARGETS)
        if unknown:
            raise ConfigError(
                f"DecoderConfig.lora_targets: unknown {sorted(unknown)}; choose from {TARGETS}"
            )

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["lora_targets"] = list(self.lora_targets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DecoderConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"DecoderConfig: unknown keys {unknown}")
        return cls(**d)


def _i0() -> jax.Array:
    return jnp.zeros((), jnp.int32)


def _positive(cfg: DecoderConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ConfigError(f"DecoderConfig.{name} must be a positive int, got {value!r}")


class Transformer(nnx.Module):
    """Embeddings, blocks and the final norm: the trunk every decoder role shares."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embed = Embed(
            cfg.vocab_size,
            cfg.d_model,
            rngs=rngs,
            dtype=cfg.dtype,
            param_dtype=cfg.param_dtype,
            matmul_dtype=cfg.matmul_dtype,
        )
        if cfg.family == "gpt2":
            self.pos_embed = Embed(
                cfg.max_len,
                cfg.d_model,
                axes=("pos", "embed"),
                rngs=rngs,
                embedding_init=nnx.initializers.normal(0.01),
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
            )
        if cfg.scan_layers:

            @nnx.split_rngs(splits=cfg.num_layers)
            @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata=LAYERS_METADATA)
            def make_blocks(r):
                return Block(cfg, rngs=r)

            self.layers = make_blocks(rngs)
        else:
            self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
        self.final_norm = make_norm(cfg)

    def init_cache(
        self, batch_size: int, max_len: int | None = None, dtype=None, *, layout: str = "stacked"
    ) -> Cache:
        """Zeros in the compute dtype (or `dtype`), index 0.

        ``layout="stacked"``: k, v [L, B, S, Hkv, Dh]. ``layout="per_layer"`` (decoding with
        ``scan_layers=False``): k, v are tuples of L head-major [B, Hkv, S, Dh] arrays, which a
        decode step updates in place and attends over without copying or transposing them
        (what `girl_jax.sampling.decoder_fns` uses).
        """
        cfg = self.cfg
        S = max_len or cfg.max_len
        dtype = jnp.dtype(dtype or cfg.dtype)
        if layout == "per_layer":
            if cfg.scan_layers:
                raise ConfigError("init_cache: layout='per_layer' needs scan_layers=False")
            shape = (batch_size, cfg.num_kv_heads, S, cfg.head_dim)
            zeros = tuple(jnp.zeros(shape, dtype) for _ in range(cfg.num_layers))
            return {"k": zeros, "v": tuple(jnp.zeros(shape, dtype) for _ in zeros), "index": _i0()}
        if layout != "stacked":
            raise ConfigError(
                f"init_cache: layout must be 'stacked' or 'per_layer', got {layout!r}"
            )
        shape = (cfg.num_layers, batch_size, S, cfg.num_kv_heads, cfg.head_dim)
        return {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype), "index": _i0()}

    def hidden(
        self,
        ids_BxT,
        attention_mask=None,
        positions=None,
        cache: Cache | None = None,
        depth: int | None = None,
    ):
        """Final-normed hidden states [B, T, D] and the updated cache (None without one).

        `depth=k` (1 <= k < num_layers, no cache) returns the residual stream after the first
        k blocks instead, not normed, and runs no later block: a reward head reads a middle
        layer (the last one is specialised for next-token prediction).
        """
        cfg = self.cfg
        B, T = ids_BxT.shape
        if depth is not None and depth >= cfg.num_layers:
            depth = None
        if depth is not None and (depth < 1 or cache is not None):
            raise ModelError(
                f"Decoder.hidden: depth must be in [1, {cfg.num_layers}] and used without a "
                f"cache, got depth={depth}"
            )
        per_layer = cache is not None and isinstance(cache["k"], (tuple, list))
        if cache is None:
            if positions is None:
                positions = default_positions(attention_mask, B, T)
            causal_TxT = jnp.tril(jnp.ones((T, T), bool))
            mask_BxTxS = jnp.broadcast_to(causal_TxT, (B, T, T))
            if attention_mask is not None:
                mask_BxTxS = mask_BxTxS & attention_mask.astype(bool)[:, None, :]
            index = jnp.zeros((), jnp.int32)
        else:
            if positions is None:
                raise ValueError("Decoder: `positions` [B, T] is required with a cache")
            index = cache["index"]
            S = cache["k"][0].shape[2] if per_layer else cache["k"].shape[2]
            slot_S = jnp.arange(S)
            query_T = index + jnp.arange(T)
            mask_BxTxS = jnp.broadcast_to(slot_S[None, :] <= query_T[:, None], (B, T, S))
            if attention_mask is not None:
                mask_BxTxS = mask_BxTxS & attention_mask.astype(bool)[:, None, :]
        x = self.embed(ids_BxT)
        if cfg.family == "gpt2":
            x = x + self.pos_embed(positions)
            rope = None
        else:
            rope = rope_tables(positions, cfg.head_dim, cfg.rope_theta)
        x = x.astype(cfg.dtype)
        kv = None if cache is None else (cache["k"], cache["v"])
        if per_layer:
            if cfg.scan_layers:
                raise ConfigError("Decoder: a per-layer cache needs scan_layers=False")
            new_k, new_v = [], []
            for i, block in enumerate(self.layers):
                graphdef, state = nnx.split(block)
                fn = _block_fn(graphdef, cfg.remat, "per_layer")
                x, (k_i, v_i) = fn(state, x, mask_BxTxS, rope, (kv[0][i], kv[1][i]), index)
                new_k.append(k_i)
                new_v.append(v_i)
            new_kv = (tuple(new_k), tuple(new_v))
        elif cfg.scan_layers:
            graphdef, state = nnx.split(self.layers)
            if depth is not None:
                state = jax.tree.map(lambda a: a[:depth], state)
            fn = _block_fn(graphdef, cfg.remat)

            def body(x, xs):
                layer_state, layer_kv = xs
                return fn(layer_state, x, mask_BxTxS, rope, layer_kv, index)

            x, new_kv = jax.lax.scan(body, x, (state, kv))
        else:
            blocks = list(self.layers)[: depth or cfg.num_layers]
            for i, block in enumerate(blocks):
                graphdef, state = nnx.split(block)
                layer_kv = None if kv is None else (kv[0], kv[1], i)
                x, out_kv = _block_fn(graphdef, cfg.remat)(
                    state, x, mask_BxTxS, rope, layer_kv, index
                )
                if out_kv is not None:
                    kv = out_kv
            new_kv = kv
        if depth is not None:
            return x, None
        h = self.final_norm(x)
        new_cache = None
        if cache is not None:
            new_cache = {"k": new_kv[0], "v": new_kv[1], "index": index + T}
        return h, new_cache


class Decoder(Transformer):
    """Causal LM: trunk + LM head (tied to the token embedding or its own `lm_head`)."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        if not cfg.tie_embeddings:
            self.lm_head = Linear(
                cfg.d_model,
                cfg.vocab_size,
                axes=("embed", "vocab"),
                use_bias=False,
                rngs=rngs,
                dtype=cfg.dtype,
                param_dtype=cfg.param_dtype,
                matmul_dtype=cfg.matmul_dtype,
            )

    def logits(self, h_BxTxD: jax.Array) -> jax.Array:
        out = self.embed.attend(h_BxTxD) if self.cfg.tie_embeddings else self.lm_head(h_BxTxD)
        return out.astype(jnp.float32)

    def __call__(self, ids_BxT, attention_mask=None, positions=None, cache: Cache | None = None):
        h, new_cache = self.hidden(ids_BxT, attention_mask, positions, cache)
        aux = {"hidden": h}
        if new_cache is not None:
            aux["cache"] = new_cache
        return self.logits(h), aux


def apply(graphdef: nnx.GraphDef, params: Any, *args, **kwargs):
    """Pure call of a split module: ``nnx.merge(graphdef, params)(*args, **kwargs)``."""
    return nnx.merge(graphdef, params)(*args, **kwargs)
