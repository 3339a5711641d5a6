"""The decoder called per shard inside `jax.shard_map`, under an active mesh and rules.

Its activation constraints (`rules.constrain`) must drop the Manual axes shard_map maps over
(each shard already is the placement along them) and keep the Auto ones, so a researcher's
per-shard function (a custom sampler, a sequence-parallel loss) can call the model as is.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from girl_jax.models.decoder import Decoder, DecoderConfig, apply
from girl_jax.parallel.mesh import make_mesh
from girl_jax.parallel.rules import activate


@pytest.mark.parametrize("manual", [("data", "fsdp"), ("data", "fsdp", "tensor")])
def test_decoder_inside_shard_map_matches_the_plain_forward(manual):
    cfg = DecoderConfig(vocab_size=61, max_len=32, d_model=32, num_layers=2, num_heads=4)
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    ids = jnp.asarray(rng.integers(1, 61, size=(8, 12)).astype(np.int32))
    mask = jnp.ones((8, 12), jnp.int32)
    want, _ = jax.jit(lambda p, i, m: apply(graphdef, p, i, m))(params, ids, mask)

    mesh = make_mesh(dict(data=2, fsdp=2, tensor=2))
    rows = PartitionSpec(("data", "fsdp"))

    def per_shard(p, i, m):
        logits, _ = apply(graphdef, p, i, m)
        return logits

    with activate(mesh):
        fn = jax.shard_map(
            per_shard,
            in_specs=(PartitionSpec(), rows, rows),
            out_specs=rows,
            axis_names=set(manual),
        )
        put = lambda x, spec: jax.device_put(x, NamedSharding(mesh, spec))  # noqa: E731
        got = jax.jit(fn)(put(params, PartitionSpec()), put(ids, rows), put(mask, rows))
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-5)
