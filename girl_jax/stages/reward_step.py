"""The reward stage's config and pure step: `RewardConfig`, the pointwise / pairwise losses, the
jittable `train_step`, the model builder (`build_model_fn`, `make_tx`), the state builder
(`build_state`: the driver, `girl plan` and the loader use it) and `load_final_params`, the
loader of the final reward model that PPO and generation use.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from girl_jax import checkpoint as ckpt_mod
from girl_jax.data.negatives import ALL_KINDS
from girl_jax.errors import ConfigError
from girl_jax.models.heads import MATCH_HEADS, REWARD_HEADS, RewardModel, sequence_score
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    objective: str
    head: str
    head_hidden: int
    probe_epochs: int
    probe_batch_size: int
    probe_learning_rate: float
    probe_patience: int
    batch_size: int
    steps: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    margin: float
    center_coef: float
    eval_every: int
    checkpoint_every: int
    keep: int
    log_every: int
    feature_layer: int = 0  # 0: the last block's normed output
    match_features: bool = False
    ensemble_size: int = 0  # 0: no ensemble; K >= 2: K more heads on the frozen trunk
    ensemble_bootstrap: bool = True  # each member on a bootstrap resample of the train rows
    # > 0: add this many synthetic hard negatives per training positive (the accepted JD with one
    # field made wrong for the seeker: city, pay, years, degree or skills; data/negatives.py)
    synthetic_negatives: float = 0.0
    # which fields the negatives corrupt, comma-separated: city, pay, years, degree, skills and
    # the opt-in repeat (a skill or duty repeated; data/negatives.py)
    synthetic_negative_kinds: str = "city,pay,years,degree,skills"

    @property
    def negative_kinds(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.synthetic_negative_kinds.split(",") if k.strip())

    def __post_init__(self):
        if not self.negative_kinds or any(k not in ALL_KINDS for k in self.negative_kinds):
            raise ConfigError(
                f"config.reward.synthetic_negative_kinds must name kinds among {ALL_KINDS}, "
                f"got {self.synthetic_negative_kinds!r}"
            )
        if self.objective not in ("pointwise", "pairwise"):
            raise ConfigError(
                f"config.reward.objective must be pointwise or pairwise, got {self.objective!r}"
            )

        if self.head not in REWARD_HEADS:
            raise ConfigError(
                f"config.reward.head must be one of {', '.join(REWARD_HEADS)}, got {self.head!r}"
            )

        if self.match_features and self.head not in MATCH_HEADS:
            raise ConfigError(
                f"config.reward.match_features needs config.reward.head in "
                f"{', '.join(MATCH_HEADS)}, got {self.head!r}"
            )
        if self.feature_layer < 0:
            raise ConfigError(
                f"config.reward.feature_layer must be >= 0 (0: the last layer), "
                f"got {self.feature_layer}"
            )
        positive = ("batch_size", "eval_every", "checkpoint_every", "keep", "log_every")
        positive += ("head_hidden", "probe_batch_size", "probe_patience")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"config.reward.{name} must be positive")
        for name in ("steps", "probe_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config.reward.{name} must be >= 0")
        if self.steps == 0 and self.probe_epochs == 0:
            raise ConfigError("config.reward: probe_epochs and steps are both 0 (nothing trains)")
        if self.ensemble_size < 0 or self.ensemble_size == 1:
            raise ConfigError(
                f"config.reward.ensemble_size must be 0 (no ensemble) or >= 2, "
                f"got {self.ensemble_size}"
            )
        if self.ensemble_size and self.steps:
            raise ConfigError(
                f"config.reward.ensemble_size={self.ensemble_size} needs a frozen trunk "
                f"(config.reward.steps=0, got {self.steps}): members are heads on its features"
            )

    @classmethod
    def from_config(cls, c) -> RewardConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(c.keys()) - names
        if unknown:
            raise ConfigError(f"unknown config key config.reward.{sorted(unknown)[0]}")
        return cls(**{k: c[k] for k in names if k in c or k not in cls.defaults()})

    @classmethod
    def defaults(cls) -> dict:
        """The options a config may leave out (written before they existed): name -> default."""
        fields = dataclasses.fields(cls)
        return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


# ---------------------------------------------------------------- losses


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
