"""The recommender's predictors (MLP, Dot) and `Recommender` = shared BERT encoder + predictor.

Inputs are embeddings in a fixed order: `embs[0]` the CV, `embs[1]` the candidate JD and,
for GIRL-SFT / GIRL, `embs[2]` the JD generated for that CV.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from girl_jax.errors import ConfigError
from girl_jax.models.bert import BertConfig, BertEncoder
from girl_jax.models.layers import Linear, param

PREDICTORS = ("mlp", "dot")
SIMILARITIES = ("dot", "cosine")
MAX_LOGIT_SCALE = 100.0  # as in CLIP: a runaway temperature makes the loss spiky


def _check_inputs(num_inputs: int) -> None:
    if num_inputs not in (2, 3):
        raise ConfigError(
            f"num_inputs must be 2 (CV, JD) or 3 (CV, JD, generated JD), got {num_inputs!r}"
        )


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")


def _check_embs(embs: Sequence[jax.Array], num_inputs: int, dim: int) -> None:
    if len(embs) != num_inputs:
        raise ValueError(f"expected {num_inputs} embeddings, got {len(embs)}")
    for i, e in enumerate(embs):
        if e.ndim != 2 or e.shape[-1] != dim or e.shape[0] != embs[0].shape[0]:
            raise ValueError(f"embedding {i} has shape {e.shape}, expected [B, {dim}]")


def interaction_features(embs: Sequence[jax.Array]) -> jax.Array:
    """[B, F]: the embeddings, CV×JD products and |CV−JD|, and generated×candidate terms."""
    cv_BxD, jd_BxD = embs[0], embs[1]
    feats = list(embs)
    for other_BxD in embs[1:]:
        feats += [cv_BxD * other_BxD, jnp.abs(cv_BxD - other_BxD)]
    if len(embs) == 3:
        gen_BxD = embs[2]
        feats += [gen_BxD * jd_BxD, jnp.abs(gen_BxD - jd_BxD)]
    return jnp.concatenate(feats, axis=-1)


def num_interaction_features(dim: int, num_inputs: int) -> int:
    extra = 2 if num_inputs == 3 else 0
    return dim * (num_inputs + 2 * (num_inputs - 1) + extra)


class MLPPredictor(nnx.Module):
    """logit = MLP([embs, CV⊙JD, |CV−JD|, ...]) -> [B]."""

    def __init__(
        self,
        dim: int,
        num_inputs: int,
        hidden_dims: Sequence[int] = (256,),
        *,
        rngs: nnx.Rngs,
        dropout: float = 0.0,
    ):
        _check_inputs(num_inputs)
        _check_dropout(dropout)
        self.dim, self.num_inputs = dim, num_inputs
        sizes = [num_interaction_features(dim, num_inputs), *hidden_dims]
        self.hidden = nnx.List(
            [
                Linear(a, b, axes=("embed", "mlp") if i == 0 else (None, "mlp"), rngs=rngs)
                for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))
            ]
        )
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        out_axis = "mlp" if hidden_dims else "embed"
        self.out = Linear(sizes[-1], 1, axes=(out_axis, None), rngs=rngs)

    def __call__(self, embs: Sequence[jax.Array]) -> jax.Array:
        _check_embs(embs, self.num_inputs, self.dim)
        x_BxF = interaction_features([e.astype(jnp.float32) for e in embs])
        for layer in self.hidden:
            x_BxF = self.dropout(jax.nn.gelu(layer(x_BxF)))
        return self.out(x_BxF)[:, 0]


class Tower(nnx.Module):
    """Linear -> GELU -> Linear projection of a tower's input to `proj_dim`."""

    def __init__(self, in_dim: int, proj_dim: int, *, rngs: nnx.Rngs, dropout: float = 0.0):
        self.inner = Linear(in_dim, proj_dim, axes=("embed", "mlp"), rngs=rngs)
        self.dropout = nnx.Dropout(dropout, rngs=rngs)
        self.outer = Linear(proj_dim, proj_dim, axes=("mlp", None), rngs=rngs)

    def __call__(self, x_BxI: jax.Array) -> jax.Array:
        return self.outer(self.dropout(jax.nn.gelu(self.inner(x_BxI))))


class DotPredictor(nnx.Module):
    """Two towers: user = [CV (, generated JD)], item = candidate JD; logit = s·sim(u, v) + b."""

    def __init__(
        self,
        dim: int,
        num_inputs: int,
        proj_dim: int,
        *,
        rngs: nnx.Rngs,
        similarity: str = "dot",
        dropout: float = 0.0,
    ):
        _check_inputs(num_inputs)
        _check_dropout(dropout)
        if similarity not in SIMILARITIES:
            raise ConfigError(f"similarity must be one of {SIMILARITIES}, got {similarity!r}")
        self.dim, self.num_inputs, self.similarity_kind = dim, num_inputs, similarity
        self.user = Tower(dim * (num_inputs - 1), proj_dim, rngs=rngs, dropout=dropout)
        self.item = Tower(dim, proj_dim, rngs=rngs, dropout=dropout)
        # Cosine lives in [-1, 1] and needs a large scale to reach confident logits; a dot
        # product of two proj_dim vectors grows like sqrt(proj_dim).
        init_scale = 10.0 if similarity == "cosine" else 1.0 / math.sqrt(proj_dim)
        self.log_scale = param(jnp.asarray(math.log(init_scale), jnp.float32), ())
        self.bias = param(jnp.zeros((), jnp.float32), ())

    def similarity(self, embs: Sequence[jax.Array]) -> jax.Array:
        """Unscaled similarity [B] (in [-1, 1] for cosine)."""
        _check_embs(embs, self.num_inputs, self.dim)
        embs = [e.astype(jnp.float32) for e in embs]
        user_BxP = self.user(jnp.concatenate([embs[0], *embs[2:]], axis=-1))
        item_BxP = self.item(embs[1])
        if self.similarity_kind == "cosine":
            user_BxP = user_BxP / jnp.maximum(
                jnp.linalg.norm(user_BxP, axis=-1, keepdims=True), 1e-6
            )
            item_BxP = item_BxP / jnp.maximum(
                jnp.linalg.norm(item_BxP, axis=-1, keepdims=True), 1e-6
            )
        return (user_BxP * item_BxP).sum(-1)

    def scale(self) -> jax.Array:
        return jnp.minimum(jnp.exp(self.log_scale[...]), MAX_LOGIT_SCALE)

    def __call__(self, embs: Sequence[jax.Array]) -> jax.Array:
        return self.scale() * self.similarity(embs) + self.bias[...]


class Recommender(nnx.Module):
    """One BERT encoder shared by all texts + a predictor: token ids [N, B, T] -> logits [B].

    `encoder` lets a pretrained `BertEncoder` (e.g. from `hf_bert.load_bert`) replace the one
    built from `encoder_cfg`. N = `num_inputs`: CV, candidate JD (, generated JD).
    """

    def __init__(
        self,
        encoder_cfg: BertConfig,
        predictor: str = "mlp",
        num_inputs: int = 2,
        *,
        rngs: nnx.Rngs,
        hidden_dims: Sequence[int] = (256,),
        proj_dim: int = 128,
        similarity: str = "dot",
        dropout: float = 0.0,
        encoder: BertEncoder | None = None,
    ):
        _check_inputs(num_inputs)
        if predictor not in PREDICTORS:
            raise ConfigError(f"predictor must be one of {PREDICTORS}, got {predictor!r}")
        if encoder is not None and encoder.cfg.d_model != encoder_cfg.d_model:
            raise ConfigError(
                f"encoder.cfg.d_model={encoder.cfg.d_model} differs from "
                f"encoder_cfg.d_model={encoder_cfg.d_model}"
            )
        self.num_inputs = num_inputs
        self.encoder = encoder if encoder is not None else BertEncoder(encoder_cfg, rngs=rngs)
        dim = encoder_cfg.d_model
        if predictor == "mlp":
            self.predictor = MLPPredictor(dim, num_inputs, hidden_dims, rngs=rngs, dropout=dropout)
        else:
            self.predictor = DotPredictor(
                dim, num_inputs, proj_dim, rngs=rngs, similarity=similarity, dropout=dropout
            )

    def encode(self, input_ids_NxBxT: jax.Array, mask_NxBxT: jax.Array) -> jax.Array:
        """Pooled embeddings [N, B, D]: all N·B texts go through the encoder in one batch."""
        n, b, t = input_ids_NxBxT.shape
        pooled = self.encoder.embed(input_ids_NxBxT.reshape(n * b, t), mask_NxBxT.reshape(n * b, t))
        return pooled.reshape(n, b, -1)

    def __call__(self, input_ids_NxBxT: jax.Array, mask_NxBxT: jax.Array) -> jax.Array:
        """Args: input_ids, attention masks [num_inputs, B, T]. Returns logits [B] (float32)."""
        if input_ids_NxBxT.ndim != 3 or input_ids_NxBxT.shape[0] != self.num_inputs:
            raise ValueError(
                f"input_ids has shape {input_ids_NxBxT.shape}, expected [{self.num_inputs}, B, T]"
            )
        embs_NxBxD = self.encode(input_ids_NxBxT, mask_NxBxT)
        return self.predictor([embs_NxBxD[i] for i in range(self.num_inputs)])
