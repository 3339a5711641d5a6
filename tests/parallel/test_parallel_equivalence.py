"""A causal-LM train step on 8 simulated devices matches 1 device, for every mesh layout."""

import jax
import numpy as np
import optax
import pytest

from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.parallel.mesh import make_mesh
from girl_jax.parallel.plan import make_lm_train_step
from girl_jax.parallel.rules import activate, replicated
from girl_jax.parallel.state import batch_sharding, create_train_state, put_batch

CFG = DecoderConfig(
    family="llama", vocab_size=64, d_model=32, num_layers=2, num_heads=4, num_kv_heads=2,
    mlp_dim=64, max_len=16, scan_layers=True,
)  # fmt: skip
STEPS = 3


def _batch(i):
    del i  # the same rows every step, so the loss must go down
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, CFG.vocab_size, size=(8, 12), dtype=np.int32)
    return dict(tokens=tokens, loss_mask=(rng.random((8, 12)) < 0.8).astype(np.int32))


def _train(mesh):
    tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(1e-2, weight_decay=0.1))
    graphdef, state, shardings = create_train_state(
        lambda rngs: Decoder(CFG, rngs=rngs), tx, mesh, seed=0
    )
    rep = replicated(mesh)
    with activate(mesh):
        step = jax.jit(
            make_lm_train_step(graphdef, tx),
            in_shardings=(shardings, batch_sharding(mesh, 2), rep),
            out_shardings=(shardings, rep),
            donate_argnums=0,
        )
        losses = []
        for i in range(STEPS):
            state, metrics = step(state, put_batch(_batch(i), mesh), jax.random.key(i))
            losses.append(float(metrics["loss"]))
    for leaf, sharding in zip(jax.tree.leaves(state), jax.tree.leaves(shardings)):
        assert leaf.sharding == sharding  # the step keeps the layout
    return np.array(losses), jax.tree.map(np.asarray, state.params)


@pytest.fixture(scope="module")
def single_device():
    return _train(make_mesh(dict(data=1), devices=jax.devices()[:1]))


@pytest.mark.parametrize("shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2), (1, 1, 8)])
def test_mesh_matches_one_device(shape, single_device):
    ref_losses, ref_params = single_device
    losses, params = _train(make_mesh(dict(zip(("data", "fsdp", "tensor"), shape))))
    assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
    np.testing.assert_allclose(losses, ref_losses, atol=1e-5, rtol=0)
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=0)
