"""BERT text encoder (post-LN, as HF `BertModel`) with mean / CLS pooling for sentence embeddings.

Parameter layout (logical axis names in brackets)::

    embeddings/word/embedding        [vocab, embed]
    embeddings/position/embedding    [pos, embed]
    embeddings/token_type/embedding  [None, embed]
    embeddings/norm/{scale,bias}     [embed]
    layers/<i>/attention/{query,key,value}/kernel  [embed, heads, head_dim]   bias [heads, head_dim]
    layers/<i>/attention/out/kernel                [heads, head_dim, embed]   bias [embed]
    layers/<i>/attention_norm/{scale,bias}         [embed]
    layers/<i>/mlp_in/{kernel,bias}                [embed, mlp] / [mlp]
    layers/<i>/mlp_out/{kernel,bias}               [mlp, embed] / [embed]
    layers/<i>/mlp_norm/{scale,bias}               [embed]
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from girl_jax.errors import ConfigError, ModelError
from girl_jax.models.layers import (
    Embed,
    LayerNorm,
    Linear,
    default_kernel_init,
    matmul,
    param,
)

POOLINGS = ("mean", "cls")
DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class BertConfig:
    """Shape and numerics of a BERT encoder; field names follow the rest of girl_jax."""

    vocab_size: int = 30522
    max_len: int = 512
    type_vocab_size: int = 2
    d_model: int = 384
    num_layers: int = 6
    num_heads: int = 12
    mlp_dim: int = 1536
    norm_eps: float = 1e-12
    pooling: str = "mean"
    normalize: bool = True
    dtype: str = "float32"

    def __post_init__(self):
        for name in ("vocab_size", "max_len", "type_vocab_size", "d_model", "num_layers"):
            _check_positive_int(name, getattr(self, name))
        _check_positive_int("num_heads", self.num_heads)
        _check_positive_int("mlp_dim", self.mlp_dim)
        if self.d_model % self.num_heads:
            raise ConfigError(
                f"BertConfig.d_model={self.d_model} is not divisible by "
                f"BertConfig.num_heads={self.num_heads}"
            )
        bad_eps = isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float))
        if bad_eps or not self.norm_eps > 0:
            raise ConfigError(f"BertConfig.norm_eps must be > 0, got {self.norm_eps!r}")
        if self.pooling not in POOLINGS:
            raise ConfigError(f"BertConfig.pooling must be one of {POOLINGS}, got {self.pooling!r}")
        if not isinstance(self.normalize, bool):
            raise ConfigError(f"BertConfig.normalize must be a bool, got {self.normalize!r}")
        if not isinstance(self.dtype, str):  # accept jnp.bfloat16 / np.dtype, store the name
            try:
                object.__setattr__(self, "dtype", jnp.dtype(self.dtype).name)
            except TypeError as exc:
                raise ConfigError(f"BertConfig.dtype: not a dtype: {self.dtype!r}") from exc
        if self.dtype not in DTYPES:
            raise ConfigError(f"BertConfig.dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BertConfig:
        """Builds a config from a dict; unknown keys raise `ConfigError` naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown BertConfig keys: {unknown}")
        return cls(**d)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"BertConfig.{name} must be a positive int, got {value!r}")


class HeadsProjection(nnx.Module):
    """x [..., D] -> [..., H, Dh] with kernel [embed, heads, head_dim]."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, *, rngs: nnx.Rngs, dtype):
        self.dtype = dtype
        shape = (d_model, num_heads, head_dim)
        self.kernel = param(
            default_kernel_init(rngs.params(), shape, jnp.float32), ("embed", "heads", "head_dim")
        )
        self.bias = param(jnp.zeros((num_heads, head_dim), jnp.float32), ("heads", "head_dim"))

    def __call__(self, x_BxTxD: jax.Array) -> jax.Array:
        D, H, K = self.kernel.shape
        y = matmul(x_BxTxD, self.kernel[...].reshape(D, H * K), self.dtype)  # layers.dense
        return y.reshape(*y.shape[:-1], H, K) + self.bias[...].astype(self.dtype)


class HeadsOutput(nnx.Module):
    """[..., H, Dh] -> [..., D] with kernel [heads, head_dim, embed]."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, *, rngs: nnx.Rngs, dtype):
        self.dtype = dtype
        shape = (num_heads, head_dim, d_model)
        self.kernel = param(
            default_kernel_init(rngs.params(), shape, jnp.float32), ("heads", "head_dim", "embed")
        )
        self.bias = param(jnp.zeros((d_model,), jnp.float32), ("embed",))

    def __call__(self, x_BxTxHxK: jax.Array) -> jax.Array:
        H, K, D = self.kernel.shape
        x = x_BxTxHxK.reshape(*x_BxTxHxK.shape[:-2], H * K)
        y = matmul(x, self.kernel[...].reshape(H * K, D), self.dtype)  # layers.dense
        return y + self.bias[...].astype(self.dtype)


class SelfAttention(nnx.Module):
    """Bidirectional multi-head attention; padded keys get no weight."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        args = (cfg.d_model, cfg.num_heads, cfg.head_dim)
        self.query = HeadsProjection(*args, rngs=rngs, dtype=dtype)
        self.key = HeadsProjection(*args, rngs=rngs, dtype=dtype)
        self.value = HeadsProjection(*args, rngs=rngs, dtype=dtype)
        self.out = HeadsOutput(*args, rngs=rngs, dtype=dtype)
        self.scale = 1.0 / math.sqrt(cfg.head_dim)

    def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array) -> jax.Array:
        q_BxTxHxK = self.query(x_BxTxD) * jnp.asarray(self.scale, x_BxTxD.dtype)
        k_BxSxHxK = self.key(x_BxTxD)
        v_BxSxHxK = self.value(x_BxTxD)
        # Scores and softmax in float32 whatever the compute dtype, like HF's eager path.
        scores_BxHxTxS = jnp.einsum(
            "bthk,bshk->bhts", q_BxTxHxK, k_BxSxHxK, preferred_element_type=jnp.float32
        )
        # A large finite negative (not -inf): an all-padding row then averages uniformly
        # instead of producing NaN, exactly as HF's additive mask does.
        keep_Bx1x1xS = mask_BxT[:, None, None, :].astype(bool)
        scores_BxHxTxS = jnp.where(keep_Bx1x1xS, scores_BxHxTxS, jnp.finfo(jnp.float32).min)
        # softmax(s) @ v with the division after the value product: it runs on [B, T, H, K]
        # instead of the [B, H, T, S] probabilities (7% of the recommender's encoder step on a
        # CPU, docs/benchmarks.md). The row maximum only keeps exp() in range: a constant of the
        # gradient.
        max_BxHxTx1 = jax.lax.stop_gradient(scores_BxHxTxS.max(-1, keepdims=True))
        weights_BxHxTxS = jnp.exp(scores_BxHxTxS - max_BxHxTx1)
        total_BxTxHx1 = weights_BxHxTxS.sum(-1).transpose(0, 2, 1)[..., None]
        ctx_BxTxHxK = jnp.einsum(
            "bhts,bshk->bthk", weights_BxHxTxS.astype(v_BxSxHxK.dtype), v_BxSxHxK
        )
        ctx_BxTxHxK = (ctx_BxTxHxK.astype(jnp.float32) / total_BxTxHx1).astype(v_BxSxHxK.dtype)
        return self.out(ctx_BxTxHxK)


class BertLayer(nnx.Module):
    """Post-LN block: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.attention = SelfAttention(cfg, rngs=rngs)
        self.attention_norm = LayerNorm(cfg.d_model, cfg.norm_eps, rngs=rngs, dtype=dtype)
        self.mlp_in = Linear(
            cfg.d_model, cfg.mlp_dim, axes=("embed", "mlp"), rngs=rngs, dtype=dtype
        )
        self.mlp_out = Linear(
            cfg.mlp_dim, cfg.d_model, axes=("mlp", "embed"), rngs=rngs, dtype=dtype
        )
        self.mlp_norm = LayerNorm(cfg.d_model, cfg.norm_eps, rngs=rngs, dtype=dtype)

    def __call__(self, x_BxTxD: jax.Array, mask_BxT: jax.Array) -> jax.Array:
        x_BxTxD = self.attention_norm(x_BxTxD + self.attention(x_BxTxD, mask_BxT))
        # BERT's "gelu" is the exact erf form, not the tanh approximation.
        h_BxTxF = jax.nn.gelu(self.mlp_in(x_BxTxD), approximate=False)
        return self.mlp_norm(x_BxTxD + self.mlp_out(h_BxTxF))


class BertEmbeddings(nnx.Module):
    """Word + absolute position + token-type embeddings, then LayerNorm."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(cfg.dtype)
        self.max_len = cfg.max_len
        self.word = Embed(cfg.vocab_size, cfg.d_model, axes=("vocab", "embed"), rngs=rngs)
        self.position = Embed(cfg.max_len, cfg.d_model, axes=("pos", "embed"), rngs=rngs)
        self.token_type = Embed(cfg.type_vocab_size, cfg.d_model, axes=(None, "embed"), rngs=rngs)
        self.norm = LayerNorm(cfg.d_model, cfg.norm_eps, rngs=rngs, dtype=dtype)

    def __call__(self, ids_BxT: jax.Array, token_type_BxT: jax.Array) -> jax.Array:
        seq_len = ids_BxT.shape[1]
        if seq_len > self.max_len:
            raise ModelError(f"sequence length {seq_len} exceeds BertConfig.max_len={self.max_len}")
        pos_T = jnp.arange(seq_len)
        x_BxTxD = self.word(ids_BxT) + self.token_type(token_type_BxT) + self.position(pos_T)
        return self.norm(x_BxTxD)


def pool(hidden_BxTxD: jax.Array, mask_BxT: jax.Array, pooling: str, normalize: bool) -> jax.Array:
    """Sentence embedding [B, D] in float32: mean over valid tokens or the first token."""
    h_BxTxD = hidden_BxTxD.astype(jnp.float32)
    if pooling == "cls":
        out_BxD = h_BxTxD[:, 0]
    else:
        m_BxTx1 = mask_BxT[..., None].astype(jnp.float32)
        # Same clamp as sentence-transformers so an all-padding row gives zeros, not NaN.
        out_BxD = (h_BxTxD * m_BxTx1).sum(1) / jnp.maximum(m_BxTx1.sum(1), 1e-9)
    if normalize:
        norm_Bx1 = jnp.linalg.norm(out_BxD, axis=-1, keepdims=True)
        out_BxD = out_BxD / jnp.maximum(norm_Bx1, 1e-12)
    return out_BxD


class BertEncoder(nnx.Module):
    """BERT encoder: `hidden_BxTxD, {"pooled": [B, D]} = model(ids, mask, token_types)`."""

    def __init__(self, cfg: BertConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs) for _ in range(cfg.num_layers)])

    def __call__(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Args: input_ids [B, T] int; attention_mask [B, T] (1 = token, 0 = padding).

        Returns: hidden [B, T, D] in the config's dtype, and aux with "pooled" [B, D] float32.
        """
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x_BxTxD = self.embeddings(input_ids, token_type_ids)
        for layer in self.layers:
            x_BxTxD = layer(x_BxTxD, attention_mask)
        pooled_BxD = pool(x_BxTxD, attention_mask, self.cfg.pooling, self.cfg.normalize)
        return x_BxTxD, {"pooled": pooled_BxD}

    def embed(
        self,
        input_ids: jax.Array,
        attention_mask: jax.Array | None = None,
        token_type_ids: jax.Array | None = None,
    ) -> jax.Array:
        """Sentence embeddings [B, D] (float32) per the config's pooling / normalisation."""
        return self(input_ids, attention_mask, token_type_ids)[1]["pooled"]
