"""Stage 3, PPO: the generator trained against the frozen reward model with a KL penalty to the
frozen SFT reference. Reads WORKDIR/{sft,reward}, writes WORKDIR/ppo/.

The stage's four parts, and where each lives:

- Config: `config.PPOConfig` (config.ppo, checked when built) and the `ppo.algorithm` presets
  `config.ALGORITHMS`.
- build_state: `driver.build_state`, abstract (`girl plan`) or real; the roles and their
  shardings are built by `state.build_roles`, which also holds the state the step carries
  (`PPOState`, `Frozen`, `Graphs`, the traced hyperparameters).
- train_step: `step.train_step`, one pure iteration (rollout, clipped loss, update, KL
  controller); `step.sample_step` / `step.update_step` split it around host-side rewards.
  Its forward helpers are in `forward`, the reward terms (`config.ppo.reward`, host scorers,
  span placement) in `rewards`.
- train_and_evaluate: `driver.train_and_evaluate` (restore or init, train, evaluate with
  `evaluation`, checkpoint), plus `driver.load_final_actor` for the later stages.
"""

from girl_jax.stages.ppo.config import ALGORITHMS, PPOConfig
from girl_jax.stages.ppo.driver import (
    build,
    build_state,
    load_final_actor,
    sampling_config,
    train_and_evaluate,
)
from girl_jax.stages.ppo.state import PPOBuilt
from girl_jax.stages.ppo.step import train_step

__all__ = [
    "ALGORITHMS",
    "PPOBuilt",
    "PPOConfig",
    "build",
    "build_state",
    "load_final_actor",
    "sampling_config",
    "train_and_evaluate",
    "train_step",
]
