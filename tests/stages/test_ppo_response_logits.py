"""`ppo.forward.response_logits` applies the LM head to the response positions only; it must equal
the slice of a full forward pass (values and gradients)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.stages import ppo


def _full_slice(graphdef, params, ids, mask, P):
    logits, _ = nnx.merge(graphdef, params)(ids, mask)
    return logits[:, P - 1 : -1]


@pytest.mark.parametrize(
    "kw",
    [dict(family="gpt2"), dict(family="llama", num_kv_heads=2, lora_rank=4)],
    ids=["gpt2_tied", "llama_lora_head"],
)
def test_response_logits_equal_full_forward_slice(kw):
    cfg = DecoderConfig(vocab_size=97, max_len=32, d_model=32, num_layers=2, num_heads=4, **kw)
    graphdef, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)))
    rng = np.random.default_rng(0)
    B, P, N = 3, 7, 5
    ids = jnp.asarray(rng.integers(1, 97, (B, P + N)), jnp.int32)
    mask = np.ones((B, P + N), np.int32)
    mask[1, :3] = 0  # left padding
    mask[2, -2:] = 0  # masked response tail (after EOS)
    mask = jnp.asarray(mask)
    got = ppo.forward.response_logits(graphdef, params, ids, mask, P)
    want = _full_slice(graphdef, params, ids, mask, P)
    assert got.shape == (B, N, 97) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

    def loss(fn, p):
        return jnp.sum(
            jax.nn.log_softmax(fn(graphdef, p, ids, mask, P)) * jnp.cos(ids[:, P:])[..., None]
        )

    g_got = jax.grad(lambda p: loss(ppo.forward.response_logits, p))(params)
    g_want = jax.grad(lambda p: loss(_full_slice, p))(params)
    for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)
