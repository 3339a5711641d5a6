"""Building blocks shared by the decoder and BERT: Linear, Embed, LayerNorm, RMSNorm.

Every parameter carries its logical axis names (``vocab``, ``embed``, ``heads``,
``kv_heads``, ``head_dim``, ``mlp``, ``layers``, ``pos``) as Variable metadata under
the key ``logical_axes``. Flax acts on its own ``out_sharding`` key eagerly (it needs a
mesh whose axes are those names), so we use a key flax ignores: modules build the
same way with no mesh, under ``nnx.eval_shape`` and under ``jax.set_mesh``, and
``logical_axes(state)`` turns the names into ``PartitionSpec``s for the parallel layer.
"""

from __future__ import annotations

import functools
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


def matmul(
    x: jax.Array, w: jax.Array, dtype: Any, matmul_dtype: Any = None, *, w_transposed=False
) -> jax.Array:
    """``x @ w`` (``x @ w.T`` with `w_transposed`) in `dtype`; with a narrower `matmul_dtype`
    (bfloat16) the two operands are cast to it and the products accumulate in float32
    (``preferred_element_type``), the result cast back to `dtype`: mixed precision. XLA:CPU runs
    a bf16 x bf16 -> f32 dot on the CPU's bf16 matrix units (AMX / AVX512-BF16) where they exist
    (docs/benchmarks.md, "bf16 matmuls").

    A 2-D `w` goes through `dense`, whose backward writes the weight gradient as one contraction
    over the token rows (see there)."""
    x, w = jnp.asarray(x, dtype), jnp.asarray(w, dtype)  # a NumPy weight (a frozen head) too
    md = None if matmul_dtype is None else jnp.dtype(matmul_dtype)
    md = None if md == jnp.dtype(dtype) else md
    if w.ndim == 2:
        return dense(x, w, w_transposed, md)
    w = jnp.swapaxes(w, -1, -2) if w_transposed else w
    if md is None:
        return jnp.dot(x, w)
    return jnp.dot(x.astype(md), w.astype(md), preferred_element_type=jnp.float32).astype(dtype)


def _cast(md, *arrays):
    return arrays if md is None else tuple(a.astype(md) for a in arrays)


def _dense_dot(x, w, w_transposed, md):
    """x [..., i] . w [i, o] (w [o, i] when transposed) -> [..., o]; operands already in `md`
    (if set), accumulated in float32 then."""
    dims = (((x.ndim - 1,), (1 if w_transposed else 0,)), ((), ()))
    return jax.lax.dot_general(
        x, w, dims, preferred_element_type=None if md is None else jnp.float32
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def dense(x: jax.Array, w: jax.Array, w_transposed: bool, md: Any) -> jax.Array:
    """The projection every Linear and tied LM head runs: ``x @ w`` (``x @ w.T``), in x's dtype.

    The same values and gradients as autodiff of the dot; the backward is written out because
    XLA:CPU lays out autodiff's weight gradient (a dot contracting the token rows of both
    operands, reached through a transpose) by first copying the output gradient or the input
    into a transposed [out, tokens] buffer: 20-30 ms a projection at PPO's 8192 rows on a
    2-core CPU, with one core idle. Written as ``einsum("ni,no->io")`` on the rows it is one dot
    with no copy (`benchmarks/bench_dense_vjp.py`; docs/benchmarks.md). `md` (bfloat16) casts
    both operands of all three products and accumulates in float32, as the forward does.
    """
    return _dense_dot(*_cast(md, x, w), w_transposed, md).astype(x.dtype)


def _dense_fwd(x, w, w_transposed, md):
    # The residuals are the operands as the dots read them (bf16 under `md`: half the memory).
    xc, wc = _cast(md, x, w)
    return _dense_dot(xc, wc, w_transposed, md).astype(x.dtype), (xc, wc)


def _dense_bwd(w_transposed, md, res, g):
    # `matmul` hands `dense` x and w in one dtype, the output's: g's.
    x, w = res
    (gc,) = _cast(md, g)
    # dx = g . w^T: the forward's dot with w read the other way round.
    dx = _dense_dot(gc, w, not w_transposed, md)
    # dw: one contraction over the token rows, written so XLA:CPU needs no transposed copy.
    x2, g2 = x.reshape(-1, x.shape[-1]), gc.reshape(-1, g.shape[-1])
    spec, args = ("no,ni->oi", (g2, x2)) if w_transposed else ("ni,no->io", (x2, g2))
    dw = jnp.einsum(spec, *args, preferred_element_type=None if md is None else jnp.float32)
    return dx.astype(g.dtype), dw.astype(g.dtype)


dense.defvjp(_dense_fwd, _dense_bwd)


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
        return matmul(x, table, dtype, self.matmul_dtype, w_transposed=True)


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
