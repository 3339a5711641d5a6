"""Ahead-of-time plan: compile a step for a target topology and read its memory and FLOPs.

Nothing is allocated: parameters, optimizer state and batches are `ShapeDtypeStruct`s
with shardings (built with `jax.eval_shape`), the step is lowered and compiled for the
target's devices (a TPU topology via libtpu, a GPU target spec, or local devices), and
`memory_analysis()` / `cost_analysis()` give per-device bytes and FLOPs.

`plan_config(config, topology, steps=None)` plans every step in `steps`
(`{name: StepSpec}`); the default is a generic SFT-like causal-LM train step on the
real Decoder, which the stages replace with their own step builders
(`girl_jax.stages.plans`). Target names and device memory live in `plan_targets`, the
table / JSON rendering in `plan_render`; both are re-exported here.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh

from girl_jax.errors import ConfigError
from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.parallel.mesh import check_batch, make_mesh
from girl_jax.parallel.plan_render import format_plan_table, largest_arrays, plan_to_json
from girl_jax.parallel.plan_targets import (
    HBM_BYTES,
    capacity_bytes,
    parse_topology,
    topology_devices,
)
from girl_jax.parallel.rules import Rules, activate, normalize_rules, replicated
from girl_jax.parallel.state import TrainState, abstract_train_state, batch_sharding

OOM_MARKERS = ("RESOURCE_EXHAUSTED", "exceeds available HBM", "Ran out of memory")


def _flops(compiled: Any) -> float | None:
    try:
        cost = compiled.cost_analysis()
    except Exception:  # noqa: BLE001 - some backends (GPU) do not implement it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    if not cost or "flops" not in cost:
        return None
    return float(cost["flops"])


def plan_step(
    fn: Callable[..., Any],
    abstract_args: Sequence[Any],
    mesh: Mesh,
    *,
    in_shardings: Any,
    out_shardings: Any,
    donate_argnums: int | Sequence[int] = (),
    rules: Rules | None = None,
    capacity: int | None = None,
) -> dict[str, Any]:
    """Compiles `fn` for `mesh`'s devices from abstract arguments; reads memory and FLOPs.

    Returns a dict with per-device `args_bytes`, `temp_bytes`, `output_bytes`, `alias_bytes`,
    `total_bytes` (args + temp + outputs not aliased to donated args), `flops` (per device,
    None where the backend has no cost model; scanned layers count once), `capacity_bytes`,
    `fits`, `compile_s`, `largest_arrays` and `error` (a compile failure such as
    RESOURCE_EXHAUSTED, with fits False).
    """
    row: dict[str, Any] = dict(
        devices=int(mesh.devices.size),
        mesh=dict(mesh.shape),
        capacity_bytes=capacity,
        largest_arrays=largest_arrays(abstract_args),
        error=None,
    )
    jitted = jax.jit(
        fn, in_shardings=in_shardings, out_shardings=out_shardings, donate_argnums=donate_argnums
    )
    start = time.perf_counter()
    try:
        with activate(mesh, rules):
            compiled = jitted.lower(*abstract_args).compile()
    except Exception as exc:  # noqa: BLE001 - over-capacity fails here on TPU
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not any(marker in str(exc) for marker in OOM_MARKERS):
            raise
        row.update(compile_s=time.perf_counter() - start, fits=False, error=message[:500])
        for key in ("args_bytes", "temp_bytes", "output_bytes", "alias_bytes", "total_bytes"):
            row[key] = None
        row["flops"] = None
        return row
    row["compile_s"] = time.perf_counter() - start
    mem = compiled.memory_analysis()
    args = int(mem.argument_size_in_bytes)
    temp = int(mem.temp_size_in_bytes)
    output = int(mem.output_size_in_bytes)
    alias = int(getattr(mem, "alias_size_in_bytes", 0))
    total = args + temp + output - alias
    row.update(
        args_bytes=args,
        temp_bytes=temp,
        output_bytes=output,
        alias_bytes=alias,
        total_bytes=total,
        flops=_flops(compiled),
        fits=None if capacity is None else total <= capacity,
    )
    return row


# ----------------------------------------------------------------------------- generic LM step


def _logits(out: Any) -> jax.Array:
    return out[0] if isinstance(out, tuple) else out


def causal_lm_loss(model: Any, tokens_BxT: jax.Array, mask_BxT: jax.Array) -> tuple[jax.Array, Any]:
    """Mean next-token cross-entropy over `mask` (1 where the *target* token counts)."""
    logits_BxLxV = _logits(model(tokens_BxT[:, :-1])).astype(jnp.float32)
    targets_BxL = tokens_BxT[:, 1:]
    weights_BxL = mask_BxT[:, 1:].astype(jnp.float32)
    nll_BxL = optax.softmax_cross_entropy_with_integer_labels(logits_BxLxV, targets_BxL)
    tokens = jnp.maximum(weights_BxL.sum(), 1.0)
    loss = (nll_BxL * weights_BxL).sum() / tokens
    return loss, dict(loss_sum=(nll_BxL * weights_BxL).sum(), tokens=weights_BxL.sum())


def make_lm_train_step(
    graphdef: nnx.GraphDef, tx: optax.GradientTransformation
) -> Callable[[TrainState, dict, jax.Array], tuple[TrainState, dict]]:
    """An SFT-like step: `step(state, batch{tokens, loss_mask}, rng) -> (state, metrics)`."""

    def step(state: TrainState, batch: dict, rng: jax.Array) -> tuple[TrainState, dict]:
        del rng  # no dropout in the generic step

        def loss_fn(params: nnx.State) -> tuple[jax.Array, Any]:
            model = nnx.merge(graphdef, params, state.rest)
            return causal_lm_loss(model, batch["tokens"], batch["loss_mask"])

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        metrics = dict(loss=loss, grad_norm=optax.global_norm(grads), **aux)
        return state.apply_gradients(grads, tx), metrics

    return step


# ----------------------------------------------------------------------------- config plans


@dataclasses.dataclass(frozen=True)
class PlannedStep:
    """What `plan_step` needs: a function, abstract args and their shardings."""

    fn: Callable[..., Any]
    abstract_args: tuple[Any, ...]
    in_shardings: Any
    out_shardings: Any
    donate_argnums: tuple[int, ...] = (0,)
    note: str = ""


@dataclasses.dataclass(frozen=True)
class StepSpec:
    """Builds a `PlannedStep` for (config, mesh, rules); stages register theirs by name."""

    build: Callable[[Any, Mesh, Rules], PlannedStep]
    batch_key: str = "sft.batch_size"


def _cfg(config: Any, dotted: str, default: Any = None) -> Any:
    node = config
    for part in dotted.split("."):
        if node is None:
            return default
        node = node.get(part) if isinstance(node, Mapping) else getattr(node, part, None)
    return default if node is None else node


def decoder_fn(model_cfg: Any, vocab_size: int = 0) -> Callable[[nnx.Rngs], nnx.Module]:
    """`rngs -> Decoder` from `config.model` (a DecoderConfig, dict or ConfigDict).

    As in the config files, 0 means "derived": num_kv_heads / mlp_dim take the family
    default and vocab_size takes `vocab_size` (the tokenizer's).
    """
    if not isinstance(model_cfg, DecoderConfig):
        fields = {f.name for f in dataclasses.fields(DecoderConfig)}
        values = dict(model_cfg.items() if hasattr(model_cfg, "items") else vars(model_cfg))
        values = {k: v for k, v in values.items() if k in fields}
        for name in ("num_kv_heads", "mlp_dim", "head_dim"):
            if values.get(name) == 0:
                values[name] = None
        if not values.get("vocab_size"):
            if not vocab_size:
                raise ConfigError("model.vocab_size is 0 and tokenizer.vocab_size is not set")
            values["vocab_size"] = int(vocab_size)
        model_cfg = DecoderConfig(**values)
    return lambda rngs: Decoder(model_cfg, rngs=rngs)


def make_optimizer(config: Any, key: str = "sft") -> optax.GradientTransformation:
    """AdamW with clipping, as the SFT stage uses (a constant rate is enough for planning)."""
    lr = float(_cfg(config, f"{key}.learning_rate", 1e-4))
    return optax.chain(
        optax.clip_by_global_norm(float(_cfg(config, f"{key}.grad_clip", 1.0))),
        optax.adamw(lr, weight_decay=float(_cfg(config, f"{key}.weight_decay", 0.0))),
    )


def abstract_batch(batch_size: int, length: int, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
    """ShapeDtypeStructs for `{tokens, loss_mask}` [batch, length] sharded over the batch axes."""
    sharding = batch_sharding(mesh, 2)
    return dict(
        tokens=jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=sharding),
        loss_mask=jax.ShapeDtypeStruct((batch_size, length), jnp.int32, sharding=sharding),
    )


def _abstract_key(mesh: Mesh) -> jax.ShapeDtypeStruct:
    key = jax.eval_shape(lambda: jax.random.key(0))
    return jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated(mesh))


def build_sft_like(
    config: Any, mesh: Mesh, rules: Rules, model_fn: Callable | None = None
) -> PlannedStep:
    """The generic causal-LM step on `config.model` with `config.sft` batch and lengths."""
    model_fn = model_fn or decoder_fn(
        _cfg(config, "model"), _cfg(config, "tokenizer.vocab_size", 0)
    )
    tx = make_optimizer(config, "sft")
    key = _abstract_key(mesh)
    graphdef, abstract_state, state_sh, _ = abstract_train_state(model_fn, tx, mesh, rules, rng=key)
    batch_size = int(_cfg(config, "sft.batch_size"))
    length = int(_cfg(config, "sft.max_prompt_len", 0)) + int(
        _cfg(config, "sft.max_response_len", 0)
    )
    length = length or int(_cfg(config, "model.max_len"))
    batch = abstract_batch(batch_size, length, mesh)
    rep = replicated(mesh)
    return PlannedStep(
        fn=make_lm_train_step(graphdef, tx),
        abstract_args=(abstract_state, batch, key),
        in_shardings=(state_sh, jax.tree.map(lambda s: s.sharding, batch), rep),
        out_shardings=(state_sh, rep),
        donate_argnums=(0,),
        note=f"causal LM, batch {batch_size} x {length}",
    )


def default_steps() -> dict[str, StepSpec]:
    """The steps `plan_config` plans when given none (the stages swap in their own)."""
    return {"sft_like": StepSpec(build=build_sft_like, batch_key="sft.batch_size")}


def actor_params(state: Any) -> int:
    """Parameters of a planned state (PPO: the actor's)."""
    if not hasattr(state, "params") and hasattr(state, "actor"):
        state = state.actor
    return int(sum(math.prod(x.shape) for x in jax.tree.leaves(getattr(state, "params", {}))))


def plan_config(
    config: Any,
    topology: str,
    steps: Mapping[str, StepSpec] | None = None,
    *,
    num_slices: int = 1,
) -> list[dict[str, Any]]:
    """Plans each step of `steps` (default: `default_steps()`) for `topology`; one row each."""
    devices = topology_devices(topology, num_slices=num_slices)
    mesh = make_mesh(_cfg(config, "mesh"), devices)
    rules = normalize_rules(_cfg(config, "logical_axis_rules"))
    capacity = capacity_bytes(topology, devices)
    rows = []
    for name, spec in (steps or default_steps()).items():
        check_batch(int(_cfg(config, spec.batch_key)), mesh, key=spec.batch_key)
        planned = spec.build(config, mesh, rules)
        row = plan_step(
            planned.fn,
            planned.abstract_args,
            mesh,
            in_shardings=planned.in_shardings,
            out_shardings=planned.out_shardings,
            donate_argnums=planned.donate_argnums,
            rules=rules,
            capacity=capacity,
        )
        row = dict(
            step=name,
            topology=topology,
            note=planned.note,
            params=actor_params(planned.abstract_args[0]),
            **row,
        )
        rows.append(row)
    return rows


__all__ = [
    "HBM_BYTES",
    "OOM_MARKERS",
    "actor_params",
    "PlannedStep",
    "StepSpec",
    "abstract_batch",
    "build_sft_like",
    "capacity_bytes",
    "causal_lm_loss",
    "decoder_fn",
    "default_steps",
    "format_plan_table",
    "largest_arrays",
    "make_lm_train_step",
    "make_optimizer",
    "plan_config",
    "plan_step",
    "plan_to_json",
    "parse_topology",
    "topology_devices",
]
