"""PPO's pure forward helpers: the actor's logits and the critic's values on the response
positions (apart, or from one shared trunk pass: `policy_outputs`), whether the update's first
epoch reuses the rollout's forward, and the critic's explained variance. Pure functions of a
graphdef, params and arrays. (The reward model's per-sequence scores are
`girl_jax.stages.scoring.sequence_scores`, shared with generation.)
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from girl_jax.models import lora
from girl_jax.rl import losses as loss_mod
from girl_jax.stages.ppo.config import PPOConfig
from girl_jax.stages.ppo.state import Graphs


def response_logits(graphdef, params, ids, mask, prompt_len):
    """Logits that predict each response token: positions P-1 .. P+N-2 of the full sequence.

    The LM head runs on those positions only (a decoder's `hidden` then `logits`), not on
    the prompt's: at P = N that halves the head's FLOPs, forward and backward.
    """
    model = nnx.merge(graphdef, params)
    if hasattr(model, "hidden") and hasattr(model, "logits"):
        h_BxTxD, _ = model.hidden(ids, mask)
        return model.logits(h_BxTxD[:, prompt_len - 1 : -1])
    logits, _ = model(ids, mask)
    return logits[:, prompt_len - 1 : -1]


def response_values(graphdef, params, ids, mask, prompt_len):
    values, _ = nnx.merge(graphdef, params)(ids, mask)
    return values[:, prompt_len - 1 : -1].astype(jnp.float32)


def response_logits_and_values(graphs: Graphs, actor_params, head_params, ids, mask, prompt_len):
    """`critic=value_head`: one trunk pass gives the LM logits and the shared-trunk values.

    The value head reads the policy's final hidden states, so the value loss also trains the
    policy trunk (TRL's `AutoModelForCausalLMWithValueHead`, lm-human-preferences).
    """
    actor = nnx.merge(graphs.actor, actor_params)
    h_BxTxD, _ = actor.hidden(ids, mask)
    h_resp = h_BxTxD[:, prompt_len - 1 : -1]
    logits = actor.logits(h_resp)
    values = nnx.merge(graphs.critic, head_params)(h_resp).astype(jnp.float32)
    return logits, values


def sequences(batch, out):
    """(ids, mask, P): each prompt followed by its sampled response, and the prompt width."""
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    ids = jnp.concatenate([prompt_ids, out.tokens], axis=1)
    mask = jnp.concatenate([prompt_mask, out.mask.astype(prompt_mask.dtype)], axis=1)
    return ids, mask, prompt_ids.shape[1]


def reuses_rollout_forward(cfg: PPOConfig) -> bool:
    """Whether the update's first epoch reuses the rollout's actor (and critic) forward.

    With one minibatch the first epoch's forward is the rollout's own (the same params on the
    same rows), so `update_step` runs it once with `jax.vjp` and pulls the first epoch's
    gradient back through it: one forward fewer per iteration, and the first epoch's ratio is
    exactly 1. Needs `old_logprobs=recompute` (the rollout runs that forward). A `value_head`
    critic is part of the same pass (`policy_outputs`): its value loss reaches the actor's
    trunk through the same vjp, as in a fresh forward.
    """
    return cfg.reuse_rollout_forward and cfg.minibatches == 1 and cfg.old_logprobs == "recompute"


def trainable_params(actor_params, cfg: PPOConfig):
    """(the actor's differentiated params, a function from them back to every param)."""
    if cfg.shared_base:
        adapters, base = lora.split_adapters(actor_params)
        return adapters, lambda a: lora.join_adapters(base, a)
    return actor_params, lambda a: a


def policy_outputs(actor_params, critic_params, ids, mask, P, *, graphs: Graphs, cfg: PPOConfig):
    """The actor's response logits and the critic's raw values (None without a critic)."""
    if cfg.needs_critic and cfg.critic == "value_head":
        return response_logits_and_values(graphs, actor_params, critic_params, ids, mask, P)
    logits = response_logits(graphs.actor, actor_params, ids, mask, P)
    values = None
    if cfg.needs_critic:
        values = response_values(graphs.critic, critic_params, ids, mask, P)
    return logits, values


def explained_variance(values, returns, mask):
    var_r = loss_mod.masked_mean((returns - loss_mod.masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = loss_mod.masked_mean((diff - loss_mod.masked_mean(diff, mask)) ** 2, mask)
    return 1.0 - var_d / jnp.maximum(var_r, 1e-8)
