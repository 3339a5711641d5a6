"""PPO's pure forward helpers: the actor's logits and the critic's values on the response
positions (apart, or from one shared trunk pass) and the critic's explained variance. Pure
functions of a graphdef, params and arrays. (The reward model's per-sequence scores are
`girl_jax.stages.scoring.sequence_scores`, shared with generation.)
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from girl_jax.rl import losses as loss_mod
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


def explained_variance(values, returns, mask):
    var_r = loss_mod.masked_mean((returns - loss_mod.masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = loss_mod.masked_mean((diff - loss_mod.masked_mean(diff, mask)) ** 2, mask)
    return 1.0 - var_d / jnp.maximum(var_r, 1e-8)
