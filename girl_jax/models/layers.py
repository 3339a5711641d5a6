"""Building blocks shared by the decoder and BERT: Linear, Embed, LayerNorm, RMSNorm.

Every parameter carries its logical axis names (``vocab``, ``embed``, ``heads``,
``kv_heads``, ``head_dim``, ``mlp``, ``layers``, ``pos``) as Variable metadata under
the key ``logical_axes``. Flax acts on its own ``out_sharding`` key eagerly (it needs a
mesh whose axes are those names), so we use a key flax ignores: modules build the
same way with no mesh, under ``nnx.eval_shape`` and under ``jax.set_mesh``, and
``logical_axes(state)`` turns the names into ``PartitionSpec``s for the parallel layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec

AXES_KEY = "logical_axes"
# Pass as `transform_metadata` to nnx.vmap / nnx.scan so stacked layers get a leading axis name.
LAYERS_METADATA = {nnx.PARTITION_NAME: "layers", AXES_KEY: "layers"}

Initializer = Callable[..., jax.Array]
default_kernel_init = nnx.initializers.normal(0.02)
default_embed_init = nnx.initializers.normal(0.02)
zeros_init = nnx.initializers.zeros_init()


def param(
    value: jax.Array, axes: Sequence[str | None], *, kind: type[nnx.Param] = nnx.Param
) -> nnx.Param:
    """Wraps `value` in a Param (or subclass) tagged with logical axis names, one per dim."""
    axes = tuple(axes)
    if len(axes) != value.ndim:
        raise ValueError(f"logical axes {axes} do not match the shape {value.shape}")
    return kind(value, **{AXES_KEY: axes})


def axes_of(variable: nnx.Variable) -> tuple[str | None, ...] | None:
    """The logical axis names of one Variable, or None when it has none."""
    return variable.get_metadata().get(AXES_KEY)


def logical_axes(tree: Any) -> Any:
    """Maps each Variable of a state (or module) to a Variable holding its logical PartitionSpec.

    The result has the same structure as ``nnx.state(model, nnx.Param)`` (like
    ``nnx.get_partition_spec``); a Variable without names gets ``PartitionSpec()``.
    """
    if isinstance(tree, nnx.Module):
        tree = nnx.state(tree)

    def to_spec(x):
        if isinstance(x, nnx.Variable):
            names = axes_of(x)
            return x.replace(PartitionSpec(*names) if names else PartitionSpec())
        return PartitionSpec() if hasattr(x, "shape") else None

    return jax.tree.map(to_spec, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def _dtype(name: Any) -> Any:
    return None if name is None else jnp.dtype(name)


def matmul(x: jax.Array, w: jax.Array, dtype: Any, matmul_dtype: Any = None) -> jax.Array:
    """``x @ w`` in `dtype`; with a narrower `matmul_dtype` (bfloat16) the two operands are cast
    to it and the products accumulate in float32 (``preferred_element_type``), the result cast
    back to `dtype`: mixed precision. XLA:CPU runs a bf16 x bf16 -> f32 dot on the CPU's bf16
    matrix units (AMX / AVX512-BF16) where they exist (docs/benchmarks.md, "bf16 matmuls")."""
    if matmul_dtype is None or jnp.dtype(matmul_dtype) == jnp.dtype(dtype):
        return jnp.dot(x.astype(dtype), w.astype(dtype))
    y = jnp.dot(x.astype(matmul_dtype), w.astype(matmul_dtype), preferred_element_type=jnp.float32)
    return y.astype(dtype)


class Linear(nnx.Module):
    """y = x @ kernel + bias with kernel (in, out) named by `axes`."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        axes: tuple[str | None, str | None] = ("embed", "mlp"),
        use_bias: bool = True,
        rngs: nnx.Rngs,
        kernel_init: Initializer = default_kernel_init,
        bias_init: Initializer = zeros_init,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        matmul_dtype: Any = None,
    ):
        self.in_features, self.out_features = in_features, out_features
        self.dtype, self.matmul_dtype = _dtype(dtype), _dtype(matmul_dtype)
        self.kernel = param(
            kernel_init(rngs.params(), (in_features, out_features), param_dtype), axes
        )
        self.bias = (
            param(bias_init(rngs.params(), (out_features,), param_dtype), (axes[1],))
            if use_bias
            else None
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...]
        dtype = self.dtype or jnp.result_type(x, kernel)
        y = matmul(x, kernel, dtype, self.matmul_dtype)
        if self.bias is not None:
            y = y + self.bias[...].astype(dtype)
        return y


class Embed(nnx.Module):
    """Token / position table (num, dim); `attend` gives tied-head logits."""

    def __init__(
        self,
        num_embeddings: int,
        features: int,
        *,
        axes: tuple[str | None, str | None] = ("vocab", "embed"),
        rngs: nnx.Rngs,
        embedding_init: Initializer = default_embed_init,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        matmul_dtype: Any = None,
    ):
        self.num_embeddings, self.features = num_embeddings, features
        self.dtype, self.matmul_dtype = _dtype(dtype), _dtype(matmul_dtype)
        self.embedding = param(
            embedding_init(rngs.params(), (num_embeddings, features), param_dtype), axes
        )

    def __call__(self, ids: jax.Array) -> jax.Array:
        table = self.embedding[...]
        # clip, not jnp.take's default NaN fill: an out-of-range id must not poison a batch
        out = jnp.take(table, ids, axis=0, mode="clip")
        return out.astype(self.dtype) if self.dtype else out

    def attend(self, x: jax.Array) -> jax.Array:
        """x [..., dim] -> x @ table.T [..., num] in x's (or the module's) dtype."""
        table = self.embedding[...]
        dtype = self.dtype or jnp.result_type(x, table)
        return matmul(x, table.T, dtype, self.matmul_dtype)


class LayerNorm(nnx.Module):
    """LayerNorm with scale and bias; statistics in float32 whatever the input dtype."""

    def __init__(
        self,
        dim: int,
        eps: float = 1e-5,
        *,
        axes: tuple[str | None] = ("embed",),
        use_bias: bool = True,
        rngs: nnx.Rngs | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ):
        self.eps, self.dtype = eps, _dtype(dtype)
        self.scale = param(jnp.ones((dim,), param_dtype), axes)
        self.bias = param(jnp.zeros((dim,), param_dtype), axes) if use_bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = self.dtype or x.dtype
        x32 = x.astype(jnp.float32)
        mean = x32.mean(-1, keepdims=True)
        var = jnp.square(x32 - mean).mean(-1, keepdims=True)
        y = (x32 - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...].astype(jnp.float32)
        if self.bias is not None:
            y = y + self.bias[...].astype(jnp.float32)
        return y.astype(out_dtype)


class RMSNorm(nnx.Module):
    """RMSNorm as in HF Llama: normalise in float32, cast back, then multiply by the scale."""

    def __init__(
        self,
        dim: int,
        eps: float = 1e-6,
        *,
        axes: tuple[str | None] = ("embed",),
        rngs: nnx.Rngs | None = None,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
    ):
        self.eps, self.dtype = eps, _dtype(dtype)
        self.scale = param(jnp.ones((dim,), param_dtype), axes)

    def __call__(self, x: jax.Array) -> jax.Array:
        out_dtype = self.dtype or x.dtype
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.square(x32).mean(-1, keepdims=True) + self.eps)
        return (self.scale[...].astype(out_dtype) * y.astype(out_dtype)).astype(out_dtype)
