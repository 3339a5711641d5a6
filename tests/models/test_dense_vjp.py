"""`layers.dense`: the projection with a written-out backward (the weight gradient as one
contraction over the token rows). Values and gradients against float64 NumPy; the bf16 path
against the product of bf16-rounded operands; under jit, vmap, remat, second order and a
sharded mesh."""

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from girl_jax.models import layers


def _data(shape_x, i, o, transposed, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((*shape_x, i)).astype(np.float32)
    w = rng.standard_normal((o, i) if transposed else (i, o)).astype(np.float32)
    g = rng.standard_normal((*shape_x, o)).astype(np.float32)
    return x, w, g


@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("shape_x", [(7,), (3, 5), (2, 3, 4)])
def test_value_and_gradients_match_float64(transposed, shape_x):
    x, w, g = _data(shape_x, 6, 9, transposed)
    w64 = w.astype(np.float64).T if transposed else w.astype(np.float64)
    fn = lambda a, b: layers.dense(a, b, transposed, None)  # noqa: E731
    y, pull = jax.vjp(fn, jnp.asarray(x), jnp.asarray(w))
    dx, dw = pull(jnp.asarray(g))
    x2, g2 = x.reshape(-1, 6).astype(np.float64), g.reshape(-1, 9).astype(np.float64)
    want_dw = x2.T @ g2
    np.testing.assert_allclose(np.asarray(y), x.astype(np.float64) @ w64, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), g.astype(np.float64) @ w64.T, rtol=1e-5, atol=1e-5)
    want_dw = want_dw.T if transposed else want_dw
    np.testing.assert_allclose(np.asarray(dw), want_dw, rtol=1e-5, atol=1e-5)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32


def test_equals_autodiff_of_the_plain_dot_under_jit():
    x, w, g = _data((4, 8), 16, 24, False, seed=1)

    def ours(a, b):
        return jnp.sum(jnp.tanh(layers.matmul(a, b, jnp.float32)) * g)

    def plain(a, b):
        return jnp.sum(jnp.tanh(a @ b) * g)

    got = jax.jit(jax.grad(ours, argnums=(0, 1)))(x, w)
    want = jax.jit(jax.grad(plain, argnums=(0, 1)))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)


def test_bf16_operands_in_every_product():
    """md=bfloat16: forward, dx and dw are float32 sums of bf16-rounded operands."""
    x, w, g = _data((5,), 32, 12, False, seed=2)
    fn = lambda a, b: layers.dense(a, b, False, jnp.dtype("bfloat16"))  # noqa: E731
    y, pull = jax.vjp(fn, jnp.asarray(x), jnp.asarray(w))
    dx, dw = pull(jnp.asarray(g))
    r = lambda a: a.astype(ml_dtypes.bfloat16).astype(np.float64)  # noqa: E731
    np.testing.assert_allclose(np.asarray(y), r(x) @ r(w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), r(g) @ r(w).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dw), r(x).T @ r(g), rtol=1e-5, atol=1e-5)
    assert y.dtype == dx.dtype == dw.dtype == jnp.float32


def test_vmap_remat_and_second_order():
    x, w, g = _data((3, 4), 5, 6, True, seed=3)
    f = lambda a, b: jnp.sum(layers.dense(a, b, True, None) ** 2)  # noqa: E731
    plain = lambda a, b: jnp.sum((a @ b.T) ** 2)  # noqa: E731
    # remat
    np.testing.assert_allclose(
        np.asarray(jax.grad(jax.checkpoint(f), argnums=1)(x, w)),
        np.asarray(jax.grad(plain, argnums=1)(x, w)),
        rtol=1e-5,
    )
    # vmap over a leading batch of weights
    ws = np.stack([w, 2 * w])
    got = jax.vmap(jax.grad(f, argnums=1), in_axes=(None, 0))(x, ws)
    want = jax.vmap(jax.grad(plain, argnums=1), in_axes=(None, 0))(x, ws)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)
    # reverse over reverse (a Hessian-vector product)
    hvp = lambda fn: jax.grad(lambda b: jnp.vdot(jax.grad(fn, argnums=1)(x, b), w))(w)  # noqa: E731
    np.testing.assert_allclose(np.asarray(hvp(f)), np.asarray(hvp(plain)), rtol=1e-4)


def test_sharded_gradients_equal_single_device():
    devices = jax.devices()
    if len(devices) < 4:
        pytest.skip("needs 4 devices")
    mesh = jax.sharding.Mesh(np.asarray(devices[:4]).reshape(2, 2), ("data", "model"))
    x, w, g = _data((8, 6), 16, 12, False, seed=4)
    loss = lambda a, b: jnp.sum(layers.dense(a, b, False, None) * g)  # noqa: E731
    want = jax.grad(loss, argnums=(0, 1))(x, w)
    xs = jax.device_put(x, NamedSharding(mesh, PartitionSpec("data", None, None)))
    ws = jax.device_put(w, NamedSharding(mesh, PartitionSpec(None, "model")))
    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(xs, ws)
    for a, b in zip(got, want):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
