"""Stage 2, the reward model: decoder trunk + scalar head scoring (CV, JD) at the last token.

Initialised from the final SFT checkpoint. Objective `pointwise` (BCE on recruiter labels) or
`pairwise` (Bradley-Terry on an accepted and a rejected JD of the same seeker). The head is
first fitted on the frozen trunk's cached features (linear probing, `probe`), then everything
is optionally fine-tuned (`reward.steps`). Reads WORKDIR/sft, writes
WORKDIR/reward/{checkpoints, metrics.jsonl, tensorboard, eval.json, final.json}.

With `reward.ensemble_size` K >= 2 (frozen trunk only: `reward.steps` 0) the stage also fits K
more reward heads on the probe's cached trunk features (Coste et al. 2023, "Reward Model
Ensembles Help Mitigate Overoptimization"): member k from seed `config.seed + 1000 + k` and,
with `reward.ensemble_bootstrap`, a bootstrap resample of the training rows, early-stopped on
validation AUC. Their params, stacked on a leading K axis, go to WORKDIR/reward/ensemble/heads
(Orbax) with WORKDIR/reward/ensemble/final.json written last; eval.json gets "ensemble". PPO
reads them with `load_final_ensemble` and scores with `ensemble_scores` (one trunk pass, the
heads vmapped), aggregating with `girl_jax.rl.ensemble.aggregate`. The main reward model is
the same with or without an ensemble.

With `reward.holdout_judge` the stage also fits a held-out judge (`judge`): one more head on the
same cached features, fitted on the validation split's labels alone (early-stopped on the
training rows), saved under WORKDIR/reward/judge; PPO's `ppo.select=judge` keeps the evaluated
step it rates best (`load_final_judge`, `judge_scorer`).

The stage's four parts, and where each lives:

- Config: `config.RewardConfig` (config.reward, checked when built).
- build_state: `state.build_state`, abstract (`girl plan`, the loader) or real, with the model
  from `state.build_model_fn` and the optimizer from `state.make_tx`; `state` also holds the
  final model's loaders, `load_final_params` (PPO, generation) and `reward_scorer` (best-of-n).
- train_step: `step.train_step`, one pure update with the `LOSSES` (pointwise, pairwise) on
  `step.scores`. The linear probe has its own pure, sharded and donated step,
  `probe.probe_train_step`, on cached features (`probe.cached_features`).
- train_and_evaluate: `driver.train_and_evaluate` (restore or init, probe, train, ensemble,
  evaluate, checkpoint), its training arrays from `data`, the ensemble's fit, save, scores,
  report and loader in `ensemble`; batched scoring is `girl_jax.stages.scoring`.
"""

from girl_jax.stages.reward.config import RewardConfig
from girl_jax.stages.reward.data import pairwise_arrays, pointwise_arrays
from girl_jax.stages.reward.driver import train_and_evaluate
from girl_jax.stages.reward.ensemble import (
    ENSEMBLE_DIR,
    ENSEMBLE_EVAL_LAM,
    _abstract_heads,
    ensemble_member_params,
    ensemble_scores,
    ensemble_seeds,
    load_final_ensemble,
    save_ensemble,
)
from girl_jax.stages.reward.judge import JUDGE_DIR, judge_scorer, load_final_judge
from girl_jax.stages.reward.state import (
    build_model_fn,
    build_state,
    load_final_params,
    make_tx,
    reward_scorer,
)
from girl_jax.stages.reward.step import LOSSES, pairwise_loss, pointwise_loss, scores, train_step
from girl_jax.stages.scoring import score_dataset, trimmed_width

__all__ = [
    "ENSEMBLE_DIR",
    "ENSEMBLE_EVAL_LAM",
    "JUDGE_DIR",
    "LOSSES",
    "RewardConfig",
    "_abstract_heads",
    "build_model_fn",
    "build_state",
    "ensemble_member_params",
    "ensemble_scores",
    "ensemble_seeds",
    "judge_scorer",
    "load_final_ensemble",
    "load_final_judge",
    "load_final_params",
    "make_tx",
    "pairwise_arrays",
    "pairwise_loss",
    "pointwise_arrays",
    "pointwise_loss",
    "reward_scorer",
    "save_ensemble",
    "score_dataset",
    "scores",
    "train_and_evaluate",
    "train_step",
    "trimmed_width",
]
