"""Per-token KL estimators and KL-coefficient controllers (pure, jit- and checkpoint-friendly).

Estimators take log-probs of the *sampled* tokens under the policy and the
reference and estimate KL(policy || reference) per token (Schulman's k1/k2/k3).
Controllers hold their coefficient in a tiny pytree state; their settings are
static (a frozen dataclass), so ``update`` runs inside jit and the state goes
into a checkpoint as is.
"""

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from girl_jax.errors import ConfigError
from girl_jax.rl import registry

Array = jax.Array


@registry.register("kl", "k1")
def k1(logp: Array, logp_ref: Array) -> Array:
    """``logp - logp_ref``: unbiased, high variance, can be negative per token."""
    return logp - logp_ref


@registry.register("kl", "k2")
def k2(logp: Array, logp_ref: Array) -> Array:
    """``0.5 * (logp - logp_ref)^2``: biased, low variance, non-negative."""
    return 0.5 * jnp.square(logp - logp_ref)


@registry.register("kl", "k3")
def k3(logp: Array, logp_ref: Array) -> Array:
    """``exp(logp_ref - logp) - 1 - (logp_ref - logp)``: unbiased, non-negative."""
    log_r = logp_ref - logp
    return jnp.expm1(log_r) - log_r


def kl_penalty_rewards(
    logp: Array,
    logp_ref: Array,
    mask: Array,
    kl_coef: float | Array,
    estimator: str | Callable[[Array, Array], Array] = "k1",
) -> Array:
    """Per-token ``-kl_coef * KL`` on valid tokens, 0 elsewhere (lm-human-preferences uses k1)."""
    fn = registry.get("kl", estimator) if isinstance(estimator, str) else estimator
    valid = mask.astype(bool)
    kl_BxT = fn(jnp.where(valid, logp, 0.0), jnp.where(valid, logp_ref, 0.0))
    return jnp.where(valid, -kl_coef * kl_BxT, 0.0)


class KLControllerState(NamedTuple):
    """The current KL coefficient, a float32 scalar array."""

    kl_coef: Array


@dataclasses.dataclass(frozen=True)
class FixedKLController:
    """Constant coefficient."""

    kl_coef: float

    def __post_init__(self):
        if not self.kl_coef >= 0:
            raise ConfigError(f"kl_coef must be >= 0, got {self.kl_coef}")

    def init(self) -> KLControllerState:
        return KLControllerState(jnp.asarray(self.kl_coef, jnp.float32))

    def update(
        self, state: KLControllerState, current_kl: Array, n_steps: Array
    ) -> KLControllerState:
        del current_kl, n_steps
        return state


@dataclasses.dataclass(frozen=True)
class AdaptiveKLController:
    """Ziegler et al. 2019 / lm-human-preferences: steer the measured KL toward `target`.

    ``coef *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_steps / horizon``.
    """

    init_kl_coef: float
    target: float
    horizon: float

    def __post_init__(self):
        if not self.init_kl_coef >= 0:
            raise ConfigError(f"init_kl_coef must be >= 0, got {self.init_kl_coef}")
        if not self.target > 0:
            raise ConfigError(f"adaptive KL target must be > 0, got {self.target}")
        if not self.horizon > 0:
            raise ConfigError(f"adaptive KL horizon must be > 0, got {self.horizon}")

    def init(self) -> KLControllerState:
        return KLControllerState(jnp.asarray(self.init_kl_coef, jnp.float32))

    def update(
        self, state: KLControllerState, current_kl: Array, n_steps: Array
    ) -> KLControllerState:
        proportional_error = jnp.clip(current_kl / self.target - 1.0, -0.2, 0.2)
        mult = 1.0 + proportional_error * n_steps / self.horizon
        return KLControllerState((state.kl_coef * mult).astype(jnp.float32))


def make_kl_controller(
    kind: str, kl_coef: float, target: float | None = None, horizon: float | None = None
) -> FixedKLController | AdaptiveKLController:
    """'fixed' or 'adaptive' controller from config values (ConfigError otherwise)."""
    if kind == "fixed":
        return FixedKLController(kl_coef)
    if kind == "adaptive":
        if target is None or horizon is None:
            raise ConfigError("adaptive KL controller needs kl_target and kl_horizon")
        return AdaptiveKLController(kl_coef, target, horizon)
    raise ConfigError(f"unknown KL controller {kind!r}; known: adaptive, fixed")
