"""Mesh construction, config errors and the logical-axis rules."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec

from girl_jax.errors import ConfigError
from girl_jax.parallel.mesh import check_batch, make_mesh, resolve_mesh_shape
from girl_jax.parallel.rules import (
    DEFAULT_RULES,
    activate,
    check_rules,
    constrain,
    logical_to_mesh_spec,
    normalize_rules,
    tree_shardings,
)


@pytest.mark.parametrize(
    "cfg, expected",
    [
        (dict(data=-1, fsdp=1, tensor=1), (8, 1, 1)),
        (dict(data=2, fsdp=-1, tensor=2), (2, 2, 2)),
        (dict(data=1, fsdp=1, tensor=-1), (1, 1, 8)),
        (dict(data=2, fsdp=4, tensor=1), (2, 4, 1)),
        (dict(fsdp=-1), (1, 8, 1)),
    ],
)
def test_make_mesh_resolves_the_rest(cfg, expected):
    mesh = make_mesh(cfg)
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert tuple(mesh.shape.values()) == expected
    assert all(t == AxisType.Auto for t in mesh.axis_types)
    assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in jax.devices())


def test_make_mesh_on_a_device_subset():
    mesh = make_mesh(dict(data=-1), devices=jax.devices()[:2])
    assert mesh.devices.size == 2


@pytest.mark.parametrize(
    "cfg, needle",
    [
        (dict(data=3, fsdp=1, tensor=1), "mesh.data=3"),
        (dict(data=-1, fsdp=3, tensor=1), "mesh.fsdp=3"),
        (dict(data=-1, fsdp=-1, tensor=1), "mesh.data"),
        (dict(data=2, fsdp=2, tensor=1), "product 4 != 8"),
        (dict(data=0, fsdp=-1, tensor=1), "mesh.data"),
        (dict(data="2", fsdp=-1, tensor=1), "mesh.data"),
    ],
)
def test_bad_mesh_names_the_key(cfg, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        make_mesh(cfg)


def test_resolve_needs_no_devices():
    assert resolve_mesh_shape(dict(data=2, fsdp=-1, tensor=4), 256) == (2, 32, 4)


def test_check_batch_names_the_key():
    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    check_batch(8, mesh)
    check_batch(4, mesh, key="ppo.batch_size")
    with pytest.raises(ConfigError, match=r"ppo\.batch_size=6 .* 2 x 2 = 4"):
        check_batch(6, mesh, key="ppo.batch_size")
    with pytest.raises(ConfigError, match=r"sft\.batch_size"):
        check_batch(0, mesh)


# ----------------------------------------------------------------------------- rules


def test_default_rules_map_names():
    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    spec = logical_to_mesh_spec(("embed", "mlp"), DEFAULT_RULES, mesh, (16, 32))
    assert spec == PartitionSpec("fsdp", "tensor")
    spec = logical_to_mesh_spec(("batch", "length", "embed"), DEFAULT_RULES, mesh, (8, 5, 16))
    assert spec == PartitionSpec(("data", "fsdp"), None, None)  # fsdp already used by batch
    assert logical_to_mesh_spec(("layers", "head_dim"), DEFAULT_RULES, mesh, (4, 6)) == (
        PartitionSpec(None, None)
    )


def test_non_divisible_axis_is_dropped():
    mesh = make_mesh(dict(data=2, fsdp=4, tensor=1))
    # 6 splits over data (2) but not over data x fsdp (8): keep data only.
    assert logical_to_mesh_spec(("batch",), DEFAULT_RULES, mesh, (6,)) == PartitionSpec("data")
    # 10 is not divisible by fsdp = 4: replicated.
    assert logical_to_mesh_spec(("embed",), DEFAULT_RULES, mesh, (10,)) == PartitionSpec(None)
    assert logical_to_mesh_spec(("embed",), DEFAULT_RULES, mesh, (12,)) == PartitionSpec("fsdp")


def test_mesh_axis_never_used_twice():
    mesh = make_mesh(dict(data=1, fsdp=8, tensor=1))
    rules = (("a", "fsdp"), ("b", "fsdp"))
    assert logical_to_mesh_spec(("a", "b"), rules, mesh, (8, 8)) == PartitionSpec("fsdp", None)
    # a fallback rule for the same name is tried when the first one's axis is taken
    rules = (("a", "fsdp"), ("b", "fsdp"), ("b", "data"))
    mesh = make_mesh(dict(data=2, fsdp=4, tensor=1))
    assert logical_to_mesh_spec(("a", "b"), rules, mesh, (8, 8)) == PartitionSpec("fsdp", "data")


def test_every_produced_spec_is_valid():
    rng = np.random.default_rng(0)
    names = ["batch", "embed", "mlp", "heads", "vocab", "layers", None]
    for shape_cfg in [(2, 2, 2), (1, 8, 1), (1, 1, 8), (2, 4, 1)]:
        mesh = make_mesh(dict(zip(("data", "fsdp", "tensor"), shape_cfg)))
        for _ in range(50):
            ndim = int(rng.integers(1, 4))
            logical = tuple(rng.choice(np.array(names, dtype=object), ndim))
            shape = tuple(int(rng.choice([1, 2, 3, 4, 6, 8, 12, 16])) for _ in range(ndim))
            spec = logical_to_mesh_spec(logical, DEFAULT_RULES, mesh, shape)
            used = [a for entry in spec if entry for a in np.atleast_1d(entry)]
            assert len(used) == len(set(used))
            NamedSharding(mesh, spec).shard_shape(shape)  # raises when invalid


def test_normalize_and_check_rules():
    rules = normalize_rules([["batch", ["data", "fsdp"]], ["embed", None], ("mlp", "tensor")])
    assert rules == (("batch", ("data", "fsdp")), ("embed", None), ("mlp", "tensor"))
    assert normalize_rules(None) == DEFAULT_RULES
    with pytest.raises(ConfigError, match=r"logical_axis_rules\[1\]"):
        normalize_rules([("batch", "data"), ("embed", 3)])
    with pytest.raises(ConfigError, match=r"logical_axis_rules\[0\]"):
        normalize_rules(["embed"])
    mesh = make_mesh(dict(data=-1))
    with pytest.raises(ConfigError, match="'model'"):
        check_rules((("embed", "model"),), mesh)


def test_tree_shardings_follow_specs():
    mesh = make_mesh(dict(data=1, fsdp=4, tensor=2))
    tree = dict(w=jax.ShapeDtypeStruct((8, 6), jnp.float32), b=jax.ShapeDtypeStruct((6,), "f4"))
    specs = dict(w=PartitionSpec("embed", "mlp"), b=PartitionSpec("mlp"))
    out = tree_shardings(tree, specs, mesh, DEFAULT_RULES)
    assert out["w"].spec == PartitionSpec("fsdp", "tensor")
    assert out["b"].spec == PartitionSpec("tensor")
    with pytest.raises(ConfigError, match="leaves"):
        tree_shardings(tree, dict(w=PartitionSpec()), mesh)


def test_constrain_is_identity_without_mesh_and_shards_with_one():
    x = jnp.arange(64.0).reshape(8, 8)
    assert constrain(x, ("batch", "embed")) is x

    def f(x):
        return constrain(x * 2, ("batch", "mlp"))

    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    with activate(mesh):
        y = jax.jit(f)(x)
    assert y.sharding.spec == PartitionSpec(("data", "fsdp"), "tensor")
    np.testing.assert_array_equal(np.asarray(y), np.asarray(x) * 2)
    # outside `activate` nothing is constrained
    assert jax.jit(f)(x).sharding.is_fully_replicated
