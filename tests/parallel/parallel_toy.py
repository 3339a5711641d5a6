"""A tiny NNX causal LM with girl_jax logical-axis metadata, shared by the parallel tests."""

import jax
import numpy as np
from flax import nnx

from girl_jax.models.layers import Embed, Linear
from girl_jax.parallel.rules import constrain


class ToyLM(nnx.Module):
    """Embed -> N x (residual MLP) -> tied logits; every Param carries logical names."""

    def __init__(self, vocab=64, d=32, mlp=64, layers=2, *, rngs: nnx.Rngs):
        self.embed = Embed(vocab, d, rngs=rngs)
        self.ups = nnx.List(
            [Linear(d, mlp, axes=("embed", "mlp"), rngs=rngs) for _ in range(layers)]
        )
        self.downs = nnx.List(
            [Linear(mlp, d, axes=("mlp", "embed"), rngs=rngs) for _ in range(layers)]
        )

    def __call__(self, tokens_BxT):
        x_BxTxD = constrain(self.embed(tokens_BxT), ("batch", "length", "embed"))
        for up, down in zip(self.ups, self.downs):
            h_BxTxF = constrain(jax.nn.gelu(up(x_BxTxD)), ("batch", "length", "mlp"))
            x_BxTxD = constrain(x_BxTxD + down(h_BxTxF), ("batch", "length", "embed"))
        return self.embed.attend(x_BxTxD), {}


def toy_fn(vocab=64, d=32, mlp=64, layers=2):
    return lambda rngs: ToyLM(vocab, d, mlp, layers, rngs=rngs)


def toy_batch(batch=8, length=12, vocab=64, seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(0, vocab, size=(batch, length), dtype=np.int32)
    mask = (rng.random((batch, length)) < 0.8).astype(np.int32)
    return dict(tokens=tokens, loss_mask=mask)


def as_numpy(tree):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), tree)
