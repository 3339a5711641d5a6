"""The reward stage's settings: `RewardConfig`, built from config.reward with
`RewardConfig.from_config` and checked when built (objective, head, probe, fine-tuning, ensemble,
synthetic negatives).
"""

from __future__ import annotations

import dataclasses

from girl_jax.data.negatives import ALL_KINDS
from girl_jax.errors import ConfigError
from girl_jax.models.heads import MATCH_HEADS, REWARD_HEADS


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
    # a held-out judge head fitted on the validation labels alone (reward/judge.py), for
    # PPO's checkpoint selection (ppo.select=judge); needs the frozen trunk (steps 0)
    holdout_judge: bool = False
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

        if self.holdout_judge and (self.steps or not self.probe_epochs):
            raise ConfigError(
                "config.reward.holdout_judge needs a frozen trunk and its probe "
                f"(config.reward.steps=0, probe_epochs>0; got {self.steps}, {self.probe_epochs})"
            )
        if self.holdout_judge and self.objective != "pointwise":
            raise ConfigError(
                "config.reward.holdout_judge needs config.reward.objective=pointwise (it is "
                "early-stopped on the training rows' labels)"
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
