"""The reward stage's pure step: `scores` (a reward model's score per sequence), the pointwise /
pairwise losses (`LOSSES`) and the jittable `train_step` (one optimizer update, refused when the
loss or gradients are not finite). The driver jits it with the state sharded and donated.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from girl_jax.models.heads import sequence_score
from girl_jax.stages import common
from girl_jax.stages.reward.config import RewardConfig


def scores(params, graphdef, ids, mask, response_mask=None):
    """Reward score per sequence [B] float32 (`RewardModel`, or a `ScoreModel`'s last token)."""
    return sequence_score(nnx.merge(graphdef, params), ids, mask, response_mask)


def pointwise_loss(params, graphdef, batch, cfg: RewardConfig):
    s = scores(
        params,
        graphdef,
        batch["input_ids"],
        batch["attention_mask"],
        batch.get("response_mask"),
    )
    y = batch["label"].astype(jnp.float32)
    loss = optax.sigmoid_binary_cross_entropy(s, y).mean() + cfg.center_coef * s.mean() ** 2
    acc = ((s > 0) == (y > 0.5)).mean()
    return loss, dict(accuracy=acc, score_mean=s.mean())


def pairwise_loss(params, graphdef, batch, cfg: RewardConfig):
    sc = scores(
        params,
        graphdef,
        batch["chosen_ids"],
        batch["chosen_mask"],
        batch.get("chosen_response_mask"),
    )
    sr = scores(
        params,
        graphdef,
        batch["rejected_ids"],
        batch["rejected_mask"],
        batch.get("rejected_response_mask"),
    )
    loss = -jax.nn.log_sigmoid(sc - sr - cfg.margin).mean()
    loss = loss + cfg.center_coef * ((sc + sr) / 2).mean() ** 2
    return loss, dict(accuracy=(sc > sr).mean(), score_mean=(sc + sr).mean() / 2)


LOSSES = {"pointwise": pointwise_loss, "pairwise": pairwise_loss}


def train_step(state, batch, rng, *, graphdef, tx, cfg: RewardConfig):
    del rng
    loss_fn = LOSSES[cfg.objective]
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, graphdef, batch, cfg
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = common.all_finite(loss, grads)
    new_state = state.replace(
        step=state.step + 1,
        params=common.select_tree(finite, params, state.params),
        opt_state=common.select_tree(finite, opt_state, state.opt_state),
    )
    return new_state, dict(
        loss=loss, **aux, grad_norm=optax.global_norm(grads), finite=finite.astype(jnp.float32)
    )
