"""The recommender's training loop, shared by end-to-end models and heads on frozen embeddings.

A model reads per-interaction rows of device-resident tables through a `forward` function:
`token_forward` gathers token ids (the BERT encoder runs inside the step), `embedding_forward`
gathers precomputed text embeddings (only the predictor trains). `fit` runs BCE training with
early stopping on validation AUC and evaluates the best parameters on test and cold-start.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from girl_jax import metrics as metrics_mod
from girl_jax import preemption
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common

# ---------------------------------------------------------------- forward passes


def token_forward(model, tables, batch, *, order):
    """Recommender(ids [N, B, T], mask [N, B, T]) on the texts of each interaction."""
    ids = jnp.stack([tables[f"{name}_ids"][batch[f"{name}_idx"]] for name in order])
    mask = jnp.stack([tables[f"{name}_mask"][batch[f"{name}_idx"]] for name in order])
    return model(ids, mask)


def embedding_forward(model, tables, batch, *, order):
    """Predictor([emb_0 [B, D], ...]) on precomputed embeddings of each interaction's texts."""
    return model([tables[f"{name}_emb"][batch[f"{name}_idx"]] for name in order])


def loss_fn(params, rest, tables, batch, *, graphdef, forward):
    logits = forward(nnx.merge(graphdef, params, rest), tables, batch)
    return optax.sigmoid_binary_cross_entropy(logits, batch["label"]).mean()


def train_step(state, tables, batch, *, graphdef, tx, forward):
    """One AdamW step; a non-finite loss or gradient leaves the state unchanged."""
    loss, grads = jax.value_and_grad(loss_fn)(
        state.params, state.rest, tables, batch, graphdef=graphdef, forward=forward
    )
    new = state.apply_gradients(grads, tx)
    finite = common.all_finite(loss, grads)
    return common.select_tree(finite, new, state), dict(
        loss=loss, finite=finite.astype(jnp.float32)
    )


def predict_step(params, rest, tables, batch, *, graphdef, forward):
    return forward(nnx.merge(graphdef, params, rest), tables, batch)


# ---------------------------------------------------------------- loop


@dataclasses.dataclass(frozen=True)
class FitSpec:
    """How one model trains: its epochs, batch and optimizer."""

    epochs: int
    batch_size: int
    learning_rate: float
    weight_decay: float
    patience: int
    seed: int


def batches(arrays, batch_size, rng=None):
    """Index batches; shuffled and without the ragged tail when `rng` is given."""
    n = len(arrays["label"])
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for b in range(0, n - (n % batch_size if rng is not None else 0), batch_size):
        idx = order[b : b + batch_size]
        yield {k: v[idx] for k, v in arrays.items()}, len(idx)


def fit(
    model_fn: Callable,
    forward: Callable,
    spec: FitSpec,
    tables: dict,
    splits: dict,
    run_dir: str,
    mesh,
    rules,
    *,
    name: str,
    eval_splits=("test", "cold_start"),
    scan_epochs: bool = False,
) -> tuple[dict, nnx.Module]:
    """Train, early-stop on validation AUC, evaluate the best params on `eval_splits`.

    `scan_epochs`: each epoch's steps run as one program (`lax.scan` of the same `train_step`
    over the epoch's stacked batches): the same batches and updates, one dispatch per epoch
    instead of per step (a predictor head's step is ~1 ms, mostly dispatch); preemption is then
    checked between epochs.

    Returns (result, the model with the best validation parameters).
    Writes `run_dir/metrics.jsonl` (+ TensorBoard) and `<split>_logits.npy`.
    """
    n_train = len(splits["train"]["label"])
    steps_per_epoch = max(n_train // spec.batch_size, 1)
    steps = spec.epochs * steps_per_epoch
    tx = _optimizer(spec.learning_rate, steps, min(100, steps // 10), spec.weight_decay)
    graphdef, state, _ = state_mod.create_train_state(model_fn, tx, mesh, rules, seed=spec.seed)
    step, epoch_steps, predict = _programs(graphdef, tx, forward)

    def scores(params, rest, split):
        out = []
        for batch, n in batches(splits[split], spec.batch_size):
            if n < spec.batch_size:  # pad to a fixed shape: one compiled program
                batch = {
                    k: np.concatenate([v, np.repeat(v[-1:], spec.batch_size - n, 0)])
                    for k, v in batch.items()
                }
            out.append(np.asarray(predict(params, rest, tables, batch))[:n])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    writer = metrics_mod.MetricWriter(run_dir, resume_step=0, enabled=jax.process_index() == 0)
    rng = np.random.default_rng(spec.seed)
    best, best_auc, bad, global_step = None, -1.0, 0, 0
    bar = metrics_mod.Progress(steps, name)
    epochs_run = 0
    for epoch in range(spec.epochs):
        epochs_run = epoch + 1
        losses = []
        if scan_epochs:  # the epoch's batches (the same draws as below), stacked: one call
            drawn = [b for b, _ in batches(splits["train"], spec.batch_size, rng)]
            if drawn:
                stacked = {k: np.stack([b[k] for b in drawn]) for k in drawn[0]}
                state, m = epoch_steps(state, tables, stacked)
                losses.append(m["loss"])
                global_step += len(drawn)
            _check_preempted(name, global_step)
        else:
            for batch, _ in batches(splits["train"], spec.batch_size, rng):
                state, m = step(state, tables, batch)
                global_step += 1
                losses.append(m["loss"])
                _check_preempted(name, global_step)
                if global_step % 50 == 0:
                    bar.update(global_step, f"loss {float(m['loss']):.3f}")
        bar.update(global_step, f"epoch {epoch + 1}")
        rep = metrics_mod.binary_report(
            splits["validation"]["label"], scores(state.params, state.rest, "validation")
        )
        writer.write(
            global_step,
            {
                "epoch": epoch + 1,
                "train_loss": float(np.mean(jax.device_get(losses))),
                **{f"val_{k}": v for k, v in rep.items()},
            },
        )
        if rep["auc"] > best_auc:
            best_auc, bad = rep["auc"], 0
            best = jax.device_get((state.params, state.rest))
        else:
            bad += 1
            if bad > spec.patience:
                break
    bar.close()
    writer.close()
    if best is None:  # epochs == 0: the model as initialised
        best = jax.device_get((state.params, state.rest))
    result = {
        "best_val_auc": best_auc,
        "steps": global_step,
        "epochs_run": epochs_run,
    }
    for split in eval_splits:
        labels = splits[split]["label"]
        if len(labels) and len(np.unique(labels)) == 2:
            logits = scores(*best, split)
            result[split] = metrics_mod.binary_report(labels, logits)
            if jax.process_index() == 0:
                np.save(os.path.join(run_dir, f"{split}_logits.npy"), logits)
    return result, nnx.merge(graphdef, *best)


@functools.lru_cache(maxsize=32)
def _optimizer(learning_rate: float, steps: int, warmup_steps: int, weight_decay: float):
    """One optimizer object per setting, so that `_programs` finds the programs it compiled."""
    return common.make_optimizer(
        learning_rate,
        steps,
        warmup_steps=warmup_steps,
        weight_decay=weight_decay,
        grad_clip=1.0,
    )


def _programs(graphdef, tx, forward):
    """(step, epoch_steps, predict) jitted for this model structure, optimizer and forward,
    shared by every fit that has them (the seeds of one feature set x predictor): jit's cache
    then compiles each program once per process instead of once per fit (~1.7 s a fit here)."""
    if isinstance(forward, functools.partial) and not forward.args:
        forward = (forward.func, tuple(sorted(forward.keywords.items())))
    try:
        hash((graphdef, tx, forward))
    except TypeError:  # e.g. a partial with a list argument: programs of its own, not shared
        return _compiled_programs.__wrapped__(graphdef, tx, forward)
    return _compiled_programs(graphdef, tx, forward)


@functools.lru_cache(maxsize=32)
def _compiled_programs(graphdef, tx, forward_key):
    if isinstance(forward_key, tuple):
        func, keywords = forward_key
        forward = functools.partial(func, **dict(keywords))
    else:
        forward = forward_key
    one_step = functools.partial(train_step, graphdef=graphdef, tx=tx, forward=forward)
    step = jax.jit(one_step, donate_argnums=(0,))
    epoch_steps = jax.jit(
        lambda state, tables, stacked: jax.lax.scan(
            lambda s, b: one_step(s, tables, b), state, stacked
        ),
        donate_argnums=(0,),
    )
    predict = jax.jit(functools.partial(predict_step, graphdef=graphdef, forward=forward))
    return step, epoch_steps, predict


def _check_preempted(name: str, step: int) -> None:
    """A stop mid-model loses only this model's partial run: it retrains from its seed."""
    if preemption.requested():
        raise preemption.Preempted(
            f"stage recommend stopped in {name} at step {step}; finished "
            "models are kept, this one retrains from its seed on rerun"
        )


def embed_texts(encoder, ids, mask, batch_size: int = 256) -> np.ndarray:
    """Pooled embeddings [N, D] (float32) of token tables [N, T], in fixed-shape batches."""
    graphdef, params = nnx.split(encoder)
    embed = jax.jit(lambda p, i, m: nnx.merge(graphdef, p).embed(i, m))
    n = len(ids)
    out = []
    for b in range(0, n, batch_size):
        i, m = ids[b : b + batch_size], mask[b : b + batch_size]
        pad = batch_size - len(i)
        if pad:
            i = np.concatenate([i, np.repeat(i[-1:], pad, 0)])
            m = np.concatenate([m, np.repeat(m[-1:], pad, 0)])
        out.append(np.asarray(embed(params, i, m))[: batch_size - pad])
    return np.concatenate(out).astype(np.float32)
