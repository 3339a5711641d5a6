"""Pieces every stage driver shares: model config, optimizer, mesh, log-probs, the NaN guard."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import optax

from girl_jax.errors import ConfigError, NumericsError
from girl_jax.models.decoder import DecoderConfig
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.rl import logprobs


def decoder_config(config, vocab_size: int):
    """The DecoderConfig of a run from `config.model` (0 means: derived / family default)."""
    m = config.model
    kwargs = dict(
        family=m.family,
        vocab_size=m.vocab_size or vocab_size,
        max_len=m.max_len,
        d_model=m.d_model,
        num_layers=m.num_layers,
        num_heads=m.num_heads,
        num_kv_heads=m.num_kv_heads or None,
        mlp_dim=m.mlp_dim or None,
        dtype=m.dtype,
        matmul_dtype=m.get("matmul_dtype"),  # "" (unset) reads as None
        remat=m.remat,
        scan_layers=m.scan_layers,
    )
    if m.get("lora_rank", 0):
        kwargs.update(lora_rank=m.lora_rank, lora_alpha=m.lora_alpha)
    if m.family == "llama":
        kwargs.update(tie_embeddings=False)
    return DecoderConfig(**kwargs)


def make_optimizer(
    learning_rate: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    weight_decay: float = 0.0,
    grad_clip: float = 0.0,
    cosine: bool = True,
) -> optax.GradientTransformation:
    """AdamW with linear warmup + cosine decay (optax schedules) and global-norm clipping."""
    if cosine:
        warmup_steps = max(warmup_steps, 1)
        schedule = optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=learning_rate,
            warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1),
            end_value=learning_rate * 0.1,
        )
    else:
        schedule = optax.constant_schedule(learning_rate)
    parts = []
    if grad_clip:
        parts.append(optax.clip_by_global_norm(grad_clip))
    parts.append(
        optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=weight_decay, mask=_decay_mask)
    )
    return optax.chain(*parts)


def _decay_mask(params):
    # No weight decay on biases, norms and other vectors.
    return jax.tree.map(lambda p: getattr(p, "ndim", 0) >= 2, params)


def token_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array, temperature: float = 1.0):
    """log p(target) under softmax(logits / temperature), in float32 (`girl_jax.rl.logprobs`:
    one pass over the vocabulary in the backward)."""
    return logprobs.token_logprobs(logits_BxTxV, targets_BxT, temperature)


def all_finite(*trees) -> jax.Array:
    leaves = [x for t in trees for x in jax.tree.leaves(t) if hasattr(x, "dtype")]
    leaves = [x for x in leaves if jnp.issubdtype(x.dtype, jnp.floating)]
    if not leaves:
        return jnp.array(True)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def select_tree(pred, on_true, on_false):
    """Per-leaf where: keep the old state when an update is refused (inside jit)."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def check_finite(metrics: dict, stage: str, step: int, on_nonfinite: str = "stop") -> bool:
    """Host side: True when the step's update was refused; raises when configured to stop."""
    if float(metrics.get("finite", 1.0)) >= 0.5:
        return False
    if on_nonfinite == "skip":
        return True
    bad = [k for k, v in metrics.items() if not jnp.isfinite(jnp.asarray(v)).all()]
    raise NumericsError(
        f"stage {stage}: non-finite values at step {step} ({', '.join(bad) or 'gradients'}); "
        "the update was refused and the last good checkpoint is kept"
    )


def fold_rng(seed: int, stage: str, step: int) -> jax.Array:
    """The step's key: a pure function of (seed, stage, step), so a resumed run draws the same."""
    key = jax.random.key(seed)
    key = jax.random.fold_in(key, sum(ord(c) * 131**i for i, c in enumerate(stage)) % (2**31))
    return jax.random.fold_in(key, step)


def stage_dir(workdir: str, stage: str) -> str:
    path = os.path.join(workdir, stage)
    os.makedirs(path, exist_ok=True)
    return path


def require_positive(**kwargs: Any) -> None:
    for key, value in kwargs.items():
        if value is None or value <= 0:
            raise ConfigError(f"config.{key} must be positive, got {value!r}")


def host(tree):
    """Device metrics -> Python floats (one transfer)."""
    return {k: float(v) for k, v in jax.device_get(tree).items()}


def fresh_copy(tree, shardings):
    """New buffers with the given shardings (a donated state must not alias frozen params)."""
    return jax.jit(lambda t: jax.tree.map(jnp.copy, t), out_shardings=shardings)(tree)


def activate_rules(config):
    """The config's mesh + logical rules, active while steps are traced (block constraints)."""
    mesh = mesh_mod.make_mesh(config.mesh)
    return rules_mod.activate(mesh, rules_mod.normalize_rules(config.logical_axis_rules))
