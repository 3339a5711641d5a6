"""PPO's settings: `PPOConfig` (config.ppo, checked on construction) and the `ppo.algorithm`
presets (`ALGORITHMS`). `reward_terms` is `config.ppo.reward` parsed (`rewards.parse`).
"""

from __future__ import annotations

import dataclasses
import functools

from girl_jax.errors import ConfigError
from girl_jax.rl import registry
from girl_jax.stages.ppo import rewards

# `ppo.algorithm` presets, the keys each sets over the config's. bon_distill: best-of-n
# distillation (RAFT / ReST): each group's best sample is fitted by plain NLL, the rest ignored.
ALGORITHMS = {
    "ppo": {},
    "bon_distill": dict(advantage="bon", policy_loss="nll", whiten_advantages=False),
}


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    iterations: int
    batch_size: int
    group_size: int
    epochs: int
    minibatches: int
    learning_rate: float
    critic_learning_rate: float
    grad_clip: float
    advantage: str
    policy_loss: str
    value_loss: str
    kl_estimator: str
    kl_in_reward: bool
    kl_controller: str
    kl_coef: float
    target_kl: float
    kl_horizon: float
    gamma: float
    lam: float
    clip_eps: float
    value_clip_eps: float
    dual_clip_c: float
    vf_coef: float
    ent_coef: float
    whiten_advantages: bool
    whiten_scores: bool
    score_clip: float
    missing_eos_penalty: float
    ratio_threshold: float
    critic: str
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    eval_every: int
    num_eval_prompts: int
    checkpoint_every: int
    keep: int
    on_nonfinite: str
    # Optional keys (configs written before they existed get these defaults).
    reward: str = "model"  # reward terms, summed: girl_jax/stages/ppo/rewards.py
    ensemble_agg: str = "mean"  # mean | min | mean_minus_std (config.ppo.reward=ensemble)
    ensemble_lambda: float = 1.0  # the std weight of mean_minus_std
    clip_eps_high: float = 0.0  # > 0: DAPO clip-higher, ratio clipped to [1-eps, 1+eps_high]
    loss_agg: str = "token_mean"  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
    baseline: str = "none"  # reinforce: none | mean | value
    grpo_eps: float = 1e-4
    scale_by_std: bool = True  # grpo: divide by the group's std (False: Dr. GRPO)
    dynamic_sampling: bool = False  # DAPO: drop groups whose rewards are all equal
    algorithm: str = "ppo"  # ppo | bon_distill: sets the keys ALGORITHMS names
    # LoRA actor: train the adapters alone on the frozen base, the reference = the actor with
    # its adapters off (no second decoder). None: on when model.lora_rank > 0 (`state.shared_base`).
    shared_base: bool | None = None
    # Which evaluated checkpoint is the stage's final model: last (the last iteration) | judge
    # (the one whose greedy validation JDs the held-out judge scores highest, reward.holdout_judge;
    # early stopping on labels the proxy never trained on, never the oracle)
    select: str = "last"
    # PPO's old log-probs (the ratio's denominator, the KL's first term): recompute (a
    # full-sequence forward after sampling, as verl / OpenRLHF / TRL do: the first minibatch's
    # ratio is exactly 1) | sampler (the log-probs the sampler computed while drawing each token,
    # same params and temperature, equal to float rounding: one actor forward fewer).
    old_logprobs: str = "recompute"
    # minibatches == 1: the first epoch's gradient goes through the rollout's own forward
    # (`forward.reuses_rollout_forward`); False: a forward of its own, as before 2026-12-04.
    reuse_rollout_forward: bool = True
    # Guided exploration: the rollouts drawn with a copy bias towards the CV's tokens (Hugging
    # Face's encoder_repetition_penalty, `sampling.bias_to_prompt`; 1.0: off). The loss still
    # scores the samples under the unbiased policy (old log-probs recomputed), so the bias acts
    # as an exploration prior; the greedy evaluation never uses it.
    rollout_copy_bias: float = 1.0
    # > 0: the rollout decodes `batch_size` rows in passes of this many (`sampling.sample`'s
    # rows_per_pass: the sampler alone 1.3x faster in passes of 32 on a CPU, the fused iteration
    # not; docs/benchmarks.md). 0: one pass.
    rollout_rows_per_pass: int = 0

    def __post_init__(self):
        if self.algorithm not in ALGORITHMS:
            names = ", ".join(ALGORITHMS)
            raise ConfigError(f"config.ppo.algorithm must be one of {names}: {self.algorithm!r}")
        for kind, name in (
            ("advantage", self.advantage),
            ("policy_loss", self.policy_loss),
            ("value_loss", self.value_loss),
            ("kl", self.kl_estimator),
        ):
            try:
                registry.get(kind, name)
            except ConfigError as exc:
                key = "kl_estimator" if kind == "kl" else kind
                raise ConfigError(f"config.ppo.{key}: {exc}") from None
        if self.batch_size % (self.minibatches * self.group_size):
            raise ConfigError("config.ppo.batch_size must be divisible by minibatches*group_size")
        if self.advantage in ("grpo", "rloo", "dr_grpo", "bon", "grpo_process") and (
            self.group_size < 2
        ):
            raise ConfigError(
                f"config.ppo.advantage={self.advantage} needs config.ppo.group_size>1"
            )
        if self.critic not in ("separate", "value_head"):
            raise ConfigError(
                "config.ppo.critic must be separate (a critic initialised from the RM) or "
                "value_head (a value head on the policy trunk)"
            )

        rewards.parse(self.reward)  # ConfigError naming the bad term
        if self.ensemble_agg not in ("mean", "min", "mean_minus_std"):
            raise ConfigError("config.ppo.ensemble_agg must be mean, min or mean_minus_std")
        if self.loss_agg not in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
            raise ConfigError(
                "config.ppo.loss_agg must be token_mean, seq_mean_token_mean or "
                "seq_mean_token_sum_norm"
            )
        if self.baseline not in ("none", "mean", "value"):
            raise ConfigError("config.ppo.baseline must be none, mean or value")
        if self.dynamic_sampling and self.group_size < 2:
            raise ConfigError("config.ppo.dynamic_sampling needs config.ppo.group_size>1")
        if self.clip_eps_high < 0:
            raise ConfigError("config.ppo.clip_eps_high must be >= 0 (0: = clip_eps)")
        if self.on_nonfinite not in ("stop", "skip"):
            raise ConfigError("config.ppo.on_nonfinite must be stop or skip")
        if self.temperature <= 0:
            raise ConfigError("config.ppo.temperature must be > 0")
        if isinstance(self.rollout_copy_bias, bool) or not self.rollout_copy_bias > 0:
            raise ConfigError("config.ppo.rollout_copy_bias must be > 0 (1.0: off)")
        if self.rollout_copy_bias != 1.0 and self.old_logprobs == "sampler":
            raise ConfigError(
                "config.ppo.rollout_copy_bias != 1 needs config.ppo.old_logprobs=recompute "
                "(the sampler's log-probs are those of the biased rollout distribution)"
            )
        r = self.rollout_rows_per_pass
        if isinstance(r, bool) or not isinstance(r, int) or r < 0:
            raise ConfigError(
                f"config.ppo.rollout_rows_per_pass must be an int >= 0 (0: one pass), got {r!r}"
            )
        if 0 < r < self.batch_size and self.batch_size % r:
            raise ConfigError(
                f"config.ppo.rollout_rows_per_pass={r} must divide "
                f"config.ppo.batch_size={self.batch_size}"
            )
        if self.select not in ("last", "judge"):
            raise ConfigError(
                "config.ppo.select must be last or judge (with reward.holdout_judge), "
                f"got {self.select!r}"
            )
        if self.old_logprobs not in ("sampler", "recompute"):
            raise ConfigError(
                f"config.ppo.old_logprobs must be sampler or recompute, got {self.old_logprobs!r}"
            )
        if self.shared_base not in (None, True, False):
            raise ConfigError("config.ppo.shared_base must be True, False or None (auto)")

    @property
    def needs_critic(self) -> bool:
        return self.advantage == "gae" or (
            self.advantage == "reinforce" and self.baseline == "value"
        )

    @functools.cached_property
    def reward_terms(self):
        return rewards.parse(self.reward)

    @classmethod
    def from_config(cls, c) -> PPOConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(c.keys()) - names
        if unknown:
            raise ConfigError(f"unknown config key config.ppo.{sorted(unknown)[0]}")
        optional = {f.name for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
        missing = names - set(c.keys()) - optional
        if missing:
            raise ConfigError(f"missing config key config.ppo.{sorted(missing)[0]}")
        values = {k: c[k] for k in names if k in c}
        values.update(ALGORITHMS.get(values.get("algorithm", "ppo"), {}))
        return cls(**values)


def hparams(cfg: PPOConfig, hyper: dict) -> dict:
    """What the registered RL functions read (`registry.hparam`): the static config's fields with
    the traced values of `hyper` in place of their constants."""
    return {**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}, **hyper}
