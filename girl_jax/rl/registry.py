"""Name -> function tables so one config line picks an RL variant.

Kinds and the call convention each kind's functions follow (see `girl_jax.rl`):

- ``"advantage"``:   ``fn(*, rewards, values, mask, scores, config) -> (advantages, returns)``
- ``"policy_loss"``: ``fn(logp, old_logp, advantages, mask, *, config) -> (loss, metrics)``
- ``"value_loss"``:  ``fn(values, old_values, returns, mask, *, config) -> (loss, metrics)``
- ``"kl"``:          ``fn(logp, logp_ref) -> kl_BxT`` (per-token estimator)
"""

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

from girl_jax.errors import ConfigError

KINDS = ("advantage", "policy_loss", "value_loss", "kl")

# Modules whose import registers the built-in variants (loaded by name on first lookup).
BUILTIN_MODULES = ("girl_jax.rl.advantages", "girl_jax.rl.kl", "girl_jax.rl.losses")

_TABLES: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}


def _check_kind(kind: str) -> dict[str, Callable[..., Any]]:
    if kind not in _TABLES:
        raise ConfigError(f"unknown RL registry kind {kind!r}; known kinds: {', '.join(KINDS)}")
    return _TABLES[kind]


def register(kind: str, name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: file `fn` under (kind, name); a second registration of the name is refused."""
    table = _check_kind(kind)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in table and table[name] is not fn:
            raise ValueError(f"RL registry: {kind} {name!r} is already registered")
        table[name] = fn
        return fn

    return decorate


def names(kind: str) -> tuple[str, ...]:
    """Sorted names registered under `kind`."""
    _load_builtins()
    return tuple(sorted(_check_kind(kind)))


def get(kind: str, name: str) -> Callable[..., Any]:
    """The function registered under (kind, name); ConfigError listing the known names if none."""
    _load_builtins()
    table = _check_kind(kind)
    if name not in table:
        known = ", ".join(sorted(table)) or "(none)"
        raise ConfigError(f"unknown {kind} {name!r}; known {kind} names: {known}")
    return table[name]


_REQUIRED = object()


def hparam(config: Any, key: str, default: Any = _REQUIRED) -> Any:
    """`config[key]` or `config.key` (dict, dataclass or ConfigDict); ConfigError if required."""
    if config is not None:
        if isinstance(config, Mapping):
            if key in config:
                return config[key]
        elif hasattr(config, key):
            return getattr(config, key)
    if default is _REQUIRED:
        raise ConfigError(f"RL config is missing the required key {key!r}")
    return default


def _load_builtins() -> None:
    # The registry is a leaf: the RL modules import it and register into it, it imports none of
    # them. Loading them by name here runs their @register decorators the first time a table is
    # read (a no-op after that), so `get` works whichever RL module the caller imported.
    for module in BUILTIN_MODULES:
        if module not in sys.modules:
            importlib.import_module(module)
