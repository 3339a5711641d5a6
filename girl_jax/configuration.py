"""Loading experiment configs: `path[:variant]` files plus `--config.a.b=value` overrides.

A config file is Python (it runs as code) exposing `get_config(arg: str | None)` that returns an
`ml_collections.ConfigDict`. Overrides are type-checked against the existing value; unknown keys
and bad values raise `ConfigError` naming the key.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from collections.abc import Iterable

import ml_collections

from girl_jax.errors import ConfigError


def load_config(spec: str, overrides: Iterable[str] = ()) -> ml_collections.ConfigDict:
    """Load `path[:arg]` and apply `key=value` overrides (keys without the `config.` prefix)."""
    path, _, arg = spec.partition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path!r} does not exist")
    module_spec = importlib.util.spec_from_file_location(f"_girl_config_{abs(hash(path))}", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # a user's Python file: report where, not a deep traceback
        raise ConfigError(f"config file {path}: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {path} defines no get_config(arg)")
    try:
        config = module.get_config(arg or None)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"config file {path}: get_config({arg!r}) failed: {exc}") from exc
    config = ml_collections.ConfigDict(config)
    for item in overrides:
        apply_override(config, item)
    validate(config)
    return config


def _parse_value(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def apply_override(config: ml_collections.ConfigDict, item: str) -> None:
    """Apply one `a.b.c=value` override in place, type-checked against the current value."""
    key, sep, raw = item.partition("=")
    key = key.strip().removeprefix("--").removeprefix("config.")
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not of the form --config.key=value")
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise ConfigError(f"unknown config key config.{'.'.join(parents[: i + 1])}")
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise ConfigError(f"unknown config key config.{key}")
    old = node[leaf]
    value = _parse_value(raw)
    if old is not None and value is not None:
        if isinstance(old, bool):
            if isinstance(value, str) and value.lower() in ("true", "false"):
                value = value.lower() == "true"
            if not isinstance(value, bool):
                raise ConfigError(f"config.{key}: expected true/false, got {raw!r}")
        elif isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif isinstance(old, (list, tuple)) and isinstance(value, (list, tuple)):
            value = type(old)(value)
        elif isinstance(old, str) and not isinstance(value, str):
            value = raw
        elif type(old) is not type(value):
            raise ConfigError(
                f"config.{key}: expected {type(old).__name__}, got {raw!r} ({type(value).__name__})"
            )
    try:
        with node.ignore_type():
            node[leaf] = value
    except Exception as exc:
        raise ConfigError(f"config.{key}: cannot set {raw!r}: {exc}") from exc


def _check_positive(config, keys: Iterable[str]) -> None:
    for key in keys:
        node = config
        parts = key.split(".")
        try:
            for part in parts:
                node = node[part]
        except (KeyError, AttributeError):
            continue
        if node is None:
            continue
        if not isinstance(node, (int, float)) or isinstance(node, bool) or node <= 0:
            raise ConfigError(f"config.{key} must be a positive number, got {node!r}")


POSITIVE_KEYS = (
    "data.num_seekers",
    "data.num_jobs",
    "data.applications_per_seeker",
    "tokenizer.vocab_size",
    "model.d_model",
    "model.num_layers",
    "model.num_heads",
    "model.max_len",
    "sft.batch_size",
    "sft.steps",
    "sft.learning_rate",
    "sft.max_prompt_len",
    "sft.max_response_len",
    "reward.batch_size",
    "reward.learning_rate",
    "ppo.iterations",
    "ppo.batch_size",
    "ppo.epochs",
    "ppo.minibatches",
    "ppo.learning_rate",
    "ppo.max_new_tokens",
    "recommend.batch_size",
    "recommend.learning_rate",
    "recommend.head_epochs",
    "recommend.head_batch_size",
    "recommend.head_learning_rate",
)


def validate(config: ml_collections.ConfigDict) -> None:
    """Cheap structural checks that need no devices (mesh divisibility is checked at mesh build)."""
    _check_positive(config, POSITIVE_KEYS)
    for axis in ("data", "fsdp", "tensor"):
        value = config.get("mesh", {}).get(axis, 1)
        if not isinstance(value, int) or (value < 1 and value != -1):
            raise ConfigError(f"config.mesh.{axis} must be a positive integer or -1, got {value!r}")
    gen = config.get("generate", {})
    for key in ("repetition_penalty", "encoder_repetition_penalty"):
        penalty = gen.get(key, 1.0)
        if isinstance(penalty, bool) or not isinstance(penalty, int | float) or not penalty > 0:
            raise ConfigError(f"config.generate.{key} must be > 0 (1: off), got {penalty!r}")
    ngram = gen.get("no_repeat_ngram_size", 0)
    if isinstance(ngram, bool) or not isinstance(ngram, int) or ngram < 0:
        raise ConfigError(
            f"config.generate.no_repeat_ngram_size must be an integer >= 0 (0: off), got {ngram!r}"
        )
    if "ppo" in config:
        if config.ppo.batch_size % config.ppo.minibatches:
            raise ConfigError(
                f"config.ppo.batch_size ({config.ppo.batch_size}) must be divisible by "
                f"config.ppo.minibatches ({config.ppo.minibatches})"
            )
        group = config.ppo.get("group_size", 1)
        if config.ppo.batch_size % group:
            raise ConfigError(
                f"config.ppo.batch_size ({config.ppo.batch_size}) must be divisible by "
                f"config.ppo.group_size ({group})"
            )
