"""The reward stage's builders and loaders: the model (`build_model_fn`: the decoder trunk and
the configured reward head), its optimizer (`make_tx`), the train state (`build_state`: the
driver, `girl plan`, PPO's plan and the loader use it), and the final reward model, as params
(`load_final_params`: PPO and generation) or as a host scorer of (CV, JD) texts (`reward_scorer`:
best-of-n in the generate stage and `girl generate`).
"""

from __future__ import annotations

import functools
import os

import jax

from girl_jax import checkpoint as ckpt_mod
from girl_jax.data import batches
from girl_jax.errors import ConfigError
from girl_jax.models.heads import RewardModel
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common
from girl_jax.stages.reward.config import RewardConfig
from girl_jax.stages.scoring import score_dataset, sequence_scores


def build_model_fn(config, vocab_size, seed):
    mcfg = common.decoder_config(config, vocab_size)
    r = config.reward
    defaults = RewardConfig.defaults()
    feature_layer = r.get("feature_layer", defaults["feature_layer"])
    match = r.get("match_features", defaults["match_features"])
    if feature_layer > mcfg.num_layers:
        raise ConfigError(
            f"config.reward.feature_layer={feature_layer} but the model has "
            f"{mcfg.num_layers} layers (config.model.num_layers)"
        )
    kwargs = dict(
        head=r.head, head_hidden=r.head_hidden, feature_layer=feature_layer, match_features=match
    )
    return mcfg, (lambda rngs: RewardModel(mcfg, rngs=rngs, **kwargs))


def make_tx(cfg: RewardConfig):
    return common.make_optimizer(
        cfg.learning_rate,
        max(cfg.steps, 1),
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
    )


def build_state(config, mesh, rules, *, vocab_size: int, abstract: bool) -> state_mod.StageState:
    """The reward stage's train state: `build_model_fn`'s model (the configured head) and its
    optimizer (`make_tx`), sharded on `mesh`. abstract: ShapeDtypeStructs with shardings,
    nothing allocated (`girl plan`, the final-model loader, PPO's plan); else the real state
    from `config.seed` (the driver then puts the SFT trunk in). Returns
    `StageState(graphdef, state, shardings, tx)`.
    """
    cfg = RewardConfig.from_config(config.reward)
    _, model_fn = build_model_fn(config, vocab_size, config.seed)
    return state_mod.build_train_state(
        model_fn, make_tx(cfg), mesh, rules, abstract=abstract, seed=config.seed
    )


def load_final_params(workdir: str, config, vocab_size: int):
    """(graphdef, params) of the final reward model."""
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    graphdef, abstract, _, _ = build_state(
        config, mesh, rules, vocab_size=vocab_size, abstract=True
    )
    state, _, _ = ckpt_mod.restore_final_state(
        os.path.join(workdir, "reward"), "reward", abstract, needed_by="ppo"
    )
    return graphdef, state.params


def reward_scorer(workdir: str, config, tokenizer):
    """`(cvs, jds) -> RM scores [B]` with the final reward model, batched (host arrays)."""
    graphdef, params = load_final_params(workdir, config, tokenizer.vocab_size)
    fn = jax.jit(functools.partial(sequence_scores, graphdef))
    max_len = config.sft.max_prompt_len + config.ppo.max_new_tokens

    def score(cvs, jds):
        enc = batches.encode_reward(
            tokenizer, list(cvs), list(jds), [0] * len(jds), max_len=max_len
        )
        return score_dataset(fn, params, enc, 64)

    return score
