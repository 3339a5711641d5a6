"""Sharded train-state creation, frozen params, batches and per-device bytes."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec

from girl_jax.errors import ConfigError
from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.parallel.mesh import make_mesh
from girl_jax.parallel.state import (
    abstract_train_state,
    batch_sharding,
    create_train_state,
    put_batch,
    shard_params,
    state_bytes_per_device,
    state_bytes_total,
)


def decoder_cfg(**overrides):
    cfg = dict(family="llama", vocab_size=64, d_model=32, num_layers=2, num_heads=4)
    return DecoderConfig(**{**cfg, "num_kv_heads": 2, "mlp_dim": 64, "max_len": 16, **overrides})


def decoder_fn(**overrides):
    cfg = decoder_cfg(**overrides)
    return lambda rngs: Decoder(cfg, rngs=rngs)


def _by_path(tree):
    return {
        jax.tree_util.keystr(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_params_and_moments_are_sharded_counters_replicated():
    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    _, state, shardings = create_train_state(decoder_fn(), optax.adamw(1e-3), mesh, seed=0)
    params = _by_path(state.params)
    assert params["['lm_head']['kernel'].value"].sharding.spec == PartitionSpec("fsdp", "tensor")
    assert params["['embed']['embedding'].value"].sharding.spec == PartitionSpec("tensor", "fsdp")
    adam = state.opt_state[0]
    for moments in (adam.mu, adam.nu):
        for path, leaf in _by_path(moments).items():
            assert leaf.sharding.spec == params[path].sharding.spec, path
            assert leaf.shape == params[path].shape
    assert adam.count.sharding.is_fully_replicated
    assert state.step.sharding.is_fully_replicated and state.step.dtype == jnp.int32
    # the returned shardings are the ones the arrays have
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
        assert leaf.sharding == sharding


def test_same_values_as_unsharded_init():
    mesh = make_mesh(dict(data=1, fsdp=4, tensor=2))
    graphdef, state, _ = create_train_state(decoder_fn(), optax.adam(1e-3), mesh, seed=3)
    reference = _by_path(nnx.state(Decoder(decoder_cfg(), rngs=nnx.Rngs(3))))
    for path, leaf in _by_path(state.params).items():
        # jit may fuse `normal * std` differently from eager: equal up to f32 rounding
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(reference[path]), rtol=1e-6)
    model = nnx.merge(graphdef, state.params, state.rest)
    logits, _ = model(jnp.zeros((2, 5), jnp.int32))
    assert logits.shape == (2, 5, 64)


def test_fsdp8_per_device_bytes():
    mesh = make_mesh(dict(data=1, fsdp=8, tensor=1))
    fn = decoder_fn(d_model=64, num_heads=8, num_kv_heads=8, mlp_dim=128, vocab_size=128)
    _, state, _ = create_train_state(fn, optax.adamw(1e-3), mesh, seed=0)
    sharded_bytes = state_bytes_per_device((state.params, state.opt_state))
    total = state_bytes_total((state.params, state.opt_state))
    # measured from the device buffers, not only from the sharding arithmetic
    on_device0 = sum(
        s.data.nbytes
        for leaf in jax.tree.leaves((state.params, state.opt_state))
        for s in leaf.addressable_shards
        if s.device == jax.devices()[0]
    )
    assert on_device0 == sharded_bytes
    assert sharded_bytes <= total / 8 * 1.10, (sharded_bytes, total)


def test_abstract_state_allocates_nothing():
    mesh = make_mesh(dict(fsdp=-1))
    before = len(jax.live_arrays())
    fn = decoder_fn(d_model=256, mlp_dim=1024, num_layers=4)
    _, abstract, shardings, _ = abstract_train_state(fn, optax.adamw(1e-3), mesh)
    assert len(jax.live_arrays()) <= before + 1  # at most the init key
    leaf = _by_path(abstract.params)["['lm_head']['kernel'].value"]
    assert isinstance(leaf, jax.ShapeDtypeStruct) and leaf.sharding.spec == PartitionSpec(
        "fsdp", None
    )
    assert state_bytes_per_device(abstract) * 7 < state_bytes_total(abstract)


def test_optimizer_without_per_param_state_and_factored_state():
    mesh = make_mesh(dict(fsdp=-1))
    _, state, _ = create_train_state(decoder_fn(), optax.sgd(1e-2), mesh)
    assert jax.tree.leaves(state.opt_state) == []
    _, state, _ = create_train_state(decoder_fn(), optax.adafactor(1e-2), mesh)
    for leaf in jax.tree.leaves(state.opt_state):  # factored rows / cols must still be valid
        assert leaf.sharding.shard_shape(leaf.shape) is not None


def test_scanned_layers_keep_layers_dim_unsharded():
    mesh = make_mesh(dict(data=1, fsdp=4, tensor=2))
    _, state, _ = create_train_state(decoder_fn(scan_layers=True), optax.adamw(1e-3), mesh)
    kernel = _by_path(state.params)["['layers']['mlp']['up_proj']['kernel'].value"]
    assert kernel.shape == (2, 32, 64)
    assert kernel.sharding.spec == PartitionSpec(None, "fsdp", "tensor")


def test_shard_params_for_frozen_roles():
    mesh = make_mesh(dict(data=2, fsdp=4, tensor=1))
    graphdef, params, shardings = shard_params(decoder_fn(), mesh, seed=1)
    kernel = _by_path(params)["['lm_head']['kernel'].value"]
    assert kernel.sharding.spec == PartitionSpec("fsdp", None)
    _, state, _ = create_train_state(decoder_fn(), optax.sgd(0.1), mesh, seed=1)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert nnx.merge(graphdef, params) is not None


def test_put_batch_shards_rows():
    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    tokens = np.arange(8 * 6, dtype=np.int32).reshape(8, 6)
    batch = put_batch(dict(tokens=tokens, weights=np.ones(8, np.float32)), mesh)
    assert batch["tokens"].sharding == batch_sharding(mesh, 2)
    assert batch["tokens"].sharding.shard_shape((8, 6)) == (2, 6)
    np.testing.assert_array_equal(np.asarray(batch["tokens"]), tokens)
    assert batch["weights"].sharding.spec == PartitionSpec(("data", "fsdp"))
    with pytest.raises(ConfigError, match="'scalar'"):
        put_batch(dict(scalar=np.float32(1.0)), mesh)
    with pytest.raises(ValueError):
        put_batch(dict(tokens=tokens[:6]), mesh)  # 6 rows do not split over 4 shards


def test_apply_gradients_steps_the_counter():
    mesh = make_mesh(dict(data=-1))
    tx = optax.sgd(0.5)
    _, state, _ = create_train_state(decoder_fn(), tx, mesh)
    before = np.asarray(jax.tree.leaves(state.params)[0])
    grads = jax.tree.map(jnp.ones_like, state.params)
    new = state.apply_gradients(grads, tx)
    assert int(new.step) == 1
    np.testing.assert_allclose(np.asarray(jax.tree.leaves(new.params)[0]), before - 0.5)
