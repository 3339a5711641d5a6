"""Stage 1, supervised fine-tuning: CV in the prompt template -> JD + EOS, loss on JD tokens only.

Reads WORKDIR/data, writes WORKDIR/sft/{checkpoints, metrics.jsonl, tensorboard, eval.json,
samples.jsonl, final.json}. Resumes from its latest checkpoint (data-iterator position included).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from girl_jax import checkpoint as ckpt_mod
from girl_jax import metrics as metrics_mod
from girl_jax import preemption, wandb_writer
from girl_jax.data import batches, pipeline, prepare
from girl_jax.errors import ConfigError
from girl_jax.models import from_pretrained
from girl_jax.models.decoder import Decoder, apply
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common
from girl_jax.stages.generator import EVAL_BATCH, Generator, score_texts


@dataclasses.dataclass(frozen=True)
class SFTConfig:
    batch_size: int
    grad_accum: int
    steps: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    max_prompt_len: int
    max_response_len: int
    eval_every: int
    eval_batches: int
    num_eval_samples: int
    checkpoint_every: int
    keep: int
    log_every: int
    init_from: str = ""

    def __post_init__(self):
        for name in (
            "batch_size",
            "grad_accum",
            "steps",
            "max_prompt_len",
            "max_response_len",
            "eval_every",
            "checkpoint_every",
            "keep",
            "log_every",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"config.sft.{name} must be positive, got {getattr(self, name)}")

    @classmethod
    def from_config(cls, c) -> SFTConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(c.keys()) - names
        if unknown:
            raise ConfigError(f"unknown config keys config.sft.{sorted(unknown)[0]}")
        return cls(**{k: c[k] for k in names if k in c})


# ---------------------------------------------------------------- loss and step


def response_positions(target_mask_BxL: jax.Array, width: int) -> tuple[jax.Array, jax.Array]:
    """(positions [B, R], weights [B, R]) of the logits that predict each row's targets, R = width.

    A row's targets (`target_mask` == 1: its JD and eos) are contiguous, so the logits that
    predict them are the R positions from the one before its first target; positions past the
    row's last target get weight 0 (clipped into the row, never read as targets).
    """
    mask_BxT = target_mask_BxL[:, 1:]
    T = mask_BxT.shape[1]
    first_B = jnp.argmax(mask_BxT, axis=1)  # 0 for a row without targets (all weights 0)
    count_B = mask_BxT.sum(axis=1)
    offsets_R = jnp.arange(width)
    pos_BxR = jnp.minimum(first_B[:, None] + offsets_R[None, :], T - 1)
    weight_BxR = (offsets_R[None, :] < count_B[:, None]).astype(jnp.float32)
    return pos_BxR, weight_BxR


def lm_loss_sums(params, graphdef, batch, *, response_len: int | None = None):
    """(sum of target-token NLL, number of target tokens); targets are where target_mask == 1.

    response_len: the most target tokens a row holds (`sft.max_response_len`: `encode_sft`
    never writes more). Given, the LM head and its log-softmax run only on the `response_len`
    positions that predict targets (`response_positions`) instead of every position: the
    prompt's logits carry no loss. None: every position (any target layout).
    """
    ids_BxL, target_BxL = batch["input_ids"], batch["target_mask"]
    L = ids_BxL.shape[1]
    if response_len is None or response_len >= L - 1:
        logits, _ = apply(graphdef, params, ids_BxL, batch["attention_mask"])
        logp = common.token_logprobs(logits[:, :-1], ids_BxL[:, 1:])
        mask = target_BxL[:, 1:].astype(jnp.float32)
        return -(logp * mask).sum(), mask.sum()
    model = nnx.merge(graphdef, params)
    h_BxLxD, _ = model.hidden(ids_BxL, batch["attention_mask"])
    pos_BxR, weight_BxR = response_positions(target_BxL, response_len)
    h_BxRxD = jnp.take_along_axis(h_BxLxD, pos_BxR[..., None], axis=1)
    targets_BxR = jnp.take_along_axis(ids_BxL, pos_BxR + 1, axis=1)
    logp = common.token_logprobs(model.logits(h_BxRxD), targets_BxR)
    return -(logp * weight_BxR).sum(), weight_BxR.sum()


def train_step(state, batch, rng, *, graphdef, tx, accum: int = 1, response_len=None):
    """One optimizer update over `batch` rows [accum * B, L]: token-mean NLL over all of them
    (`response_len`: see `lm_loss_sums`)."""
    del rng  # no dropout: the step is deterministic

    # Rows [accum * B, L] -> [accum, B, L]: gradients summed over micro-batches in a scan.
    batch = jax.tree.map(lambda x: x.reshape(accum, -1, *x.shape[1:]), batch)

    def micro(grads_acc, mb):
        (_, (nll, n)), g = jax.value_and_grad(
            lambda p: _with_count(p, graphdef, mb, response_len), has_aux=True
        )(state.params)
        return jax.tree.map(jnp.add, grads_acc, g), (nll, n)

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    grads, (nll, n) = jax.lax.scan(micro, zeros, batch)
    total = jnp.maximum(n.sum(), 1.0)
    grads = jax.tree.map(lambda g: g / total, grads)
    loss = nll.sum() / total
    updates, opt_state = tx.update(grads, state.opt_state, state.params)

    params = optax.apply_updates(state.params, updates)
    finite = common.all_finite(loss, grads)
    new_state = state.replace(
        step=state.step + 1,
        params=common.select_tree(finite, params, state.params),
        opt_state=common.select_tree(finite, opt_state, state.opt_state),
    )
    metrics = dict(
        loss=loss,
        tokens=total,
        grad_norm=optax.global_norm(grads),
        finite=finite.astype(jnp.float32),
    )
    return new_state, metrics


def _with_count(params, graphdef, batch, response_len=None):
    nll, n = lm_loss_sums(params, graphdef, batch, response_len=response_len)
    return nll, (nll, n)


def eval_step(params, batch, *, graphdef, response_len=None):
    nll, n = lm_loss_sums(params, graphdef, batch, response_len=response_len)
    return dict(nll=nll, tokens=n)


# ---------------------------------------------------------------- driver


def _arrays(tok, df, cfg: SFTConfig):
    enc = batches.encode_sft(
        tok,
        list(df["cv"]),
        list(df["jd"]),
        max_prompt_len=cfg.max_prompt_len,
        max_response_len=cfg.max_response_len,
    )
    return {k: enc[k] for k in ("input_ids", "attention_mask", "target_mask")}


def _trim(batch, multiple: int = 32):
    """Bucketing: cut trailing all-pad columns to a multiple of 32 (few distinct shapes)."""
    L = batch["attention_mask"].shape[-1]
    used = int(np.max(np.nonzero(batch["attention_mask"].reshape(-1, L).any(0))[0])) + 1
    keep = min(L, -(-used // multiple) * multiple)
    return {k: v[..., :keep] for k, v in batch.items()}


def build_model_fn(config, vocab_size: int, seed: int):
    mcfg = common.decoder_config(config, vocab_size)
    return mcfg, (lambda rngs: Decoder(mcfg, rngs=rngs))


def make_tx(cfg: SFTConfig):
    return common.make_optimizer(
        cfg.learning_rate,
        cfg.steps,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
    )


def build_state(config, mesh, rules, *, vocab_size: int, abstract: bool) -> state_mod.StageState:
    """The SFT train state: the decoder of `config.model` and its AdamW state, sharded on `mesh`.

    abstract: ShapeDtypeStructs with shardings, nothing allocated (`girl plan`, the final-model
    loader); else the real state from `config.seed`, or with `sft.init_from` the pretrained
    weights (whose shapes `config.model` must describe: the abstract state is the config's).
    Returns `StageState(graphdef, state, shardings, tx)`.
    """
    cfg = SFTConfig.from_config(config.sft)
    _, model_fn = build_model_fn(config, vocab_size, config.seed)
    if cfg.init_from and not abstract:
        # the pretrained weights computed as config.model asks (bf16 matmuls or not)
        md = config.model.get("matmul_dtype")
        model_fn = lambda rngs: from_pretrained(cfg.init_from, matmul_dtype=md)  # noqa: E731
    return state_mod.build_train_state(
        model_fn, make_tx(cfg), mesh, rules, abstract=abstract, seed=config.seed
    )


def train_and_evaluate(config, workdir: str) -> dict:
    """Restore or init, train, evaluate, checkpoint; a finished stage returns its eval.json."""
    with common.activate_rules(config):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict:
    cfg = SFTConfig.from_config(config.sft)
    out_dir = common.stage_dir(workdir, "sft")
    if ckpt_mod.is_final(out_dir):
        return json.load(open(os.path.join(out_dir, "eval.json")))
    data = prepare.load(workdir)
    tok = data.tokenizer
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    global_batch = cfg.batch_size
    mesh_mod.check_batch(global_batch, mesh, key="sft.batch_size")

    train_df = data.split("train")
    train_df = train_df[train_df["label"] == 1]
    val_df = data.split("validation")
    val_df = val_df[val_df["label"] == 1].reset_index(drop=True)
    train = _arrays(tok, train_df, cfg)
    val = _arrays(tok, val_df.iloc[: cfg.eval_batches * global_batch], cfg)

    mcfg = common.decoder_config(config, tok.vocab_size)
    graphdef, state, shardings, tx = build_state(
        config, mesh, rules, vocab_size=tok.vocab_size, abstract=False
    )
    step_fn = jax.jit(
        functools.partial(
            train_step,
            graphdef=graphdef,
            tx=tx,
            accum=cfg.grad_accum,
            response_len=cfg.max_response_len,
        ),
        in_shardings=(shardings, state_mod.batch_sharding(mesh), None),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )
    eval_fn = jax.jit(
        functools.partial(eval_step, graphdef=graphdef, response_len=cfg.max_response_len)
    )

    it = pipeline.make_iterator(train, batch_size=global_batch * cfg.grad_accum, seed=config.seed)
    ckpt = ckpt_mod.StageCheckpointer(out_dir, keep=cfg.keep)
    start = ckpt.latest_step() or 0
    if start:
        state, extra = ckpt.restore(start, ckpt_mod.abstract_like(state))
        it.set_state(extra["data_iterator"])
    writer = metrics_mod.MetricWriter(
        out_dir,
        resume_step=start,
        enabled=jax.process_index() == 0,
        mirror=wandb_writer.from_config(config, "sft", workdir),
    )
    bar = metrics_mod.Progress(cfg.steps, "sft", start=start)

    eval_ids = val_df.drop_duplicates("seeker_id").iloc[: cfg.num_eval_samples]
    gen = Generator(
        graphdef,
        None,
        tok,
        max_prompt_len=cfg.max_prompt_len,
        max_new_tokens=cfg.max_response_len,
        greedy=True,
        batch_size=max(1, min(EVAL_BATCH, len(eval_ids))),
    )

    def evaluate(step):
        sums = [
            jax.device_get(eval_fn(state.params, _trim(_slice(val, i, global_batch))))
            for i in range(0, len(val["input_ids"]), global_batch)
        ]
        nll = sum(float(s["nll"]) for s in sums)
        n = max(sum(float(s["tokens"]) for s in sums), 1.0)
        out = {"eval_loss": nll / n, "eval_perplexity": float(np.exp(min(nll / n, 50)))}
        gen.params = state.params
        texts = gen.generate(list(eval_ids["cv"]), common.fold_rng(config.seed, "sft-eval", 0))
        out.update(score_texts(data.market, eval_ids["seeker_id"].to_numpy(), texts))
        writer.write(step, out)
        if jax.process_index() == 0:
            with open(os.path.join(out_dir, "samples.jsonl"), "a") as f:
                for cv, jd in list(zip(eval_ids["cv"], texts))[:4]:
                    f.write(json.dumps({"step": step, "cv": cv, "generated_jd": jd}) + "\n")
            writer.text(step, "samples", texts[0] if texts else "")
        return out

    last = {}
    skipped, refused = 0, -1
    for step in range(start, cfg.steps):
        batch = state_mod.put_batch(_trim(next(it)), mesh)
        state, m = step_fn(state, batch, common.fold_rng(config.seed, "sft", step))
        done = step + 1
        # The first refused step since the last log, tracked on device (no per-step sync).
        refused = jnp.where((refused < 0) & (m["finite"] < 0.5), done, refused)
        if done % cfg.log_every == 0 or done == cfg.steps:
            m = common.host(m)
            bad_step = int(refused)
            if bad_step >= 0:
                m["finite"] = 0.0  # a step since the last log was refused
            refused = -1
            skipped += common.check_finite(m, "sft", bad_step if bad_step >= 0 else done)
            writer.write(done, {**m, "skipped_updates": skipped})
            bar.update(done, f"loss {m['loss']:.3f}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last = evaluate(done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            ckpt.save(done, state, {"data_iterator": it.get_state()})
        preemption.check(
            "sft", done, lambda d=done, s=state: ckpt.save(d, s, {"data_iterator": it.get_state()})
        )
    bar.close()
    if not last:
        last = evaluate(cfg.steps)
    result = {"step": cfg.steps, **last, "model": dataclasses.asdict(mcfg)}
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(os.path.join(out_dir, "eval.json"), result)
    ckpt.mark_final(cfg.steps, {"model": dataclasses.asdict(mcfg)})
    ckpt.close()
    writer.close()
    return result


def _slice(arrays, start, size):
    return {k: v[start : start + size] for k, v in arrays.items()}


def load_final_params(workdir: str, config, vocab_size: int):
    """(graphdef, params) of the final SFT model, sharded on the config's mesh as it trained."""
    out_dir = os.path.join(workdir, "sft")
    ckpt_mod.read_final(out_dir, "sft")
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    graphdef, abstract, _, _ = build_state(
        config, mesh, rules, vocab_size=vocab_size, abstract=True
    )
    state, _, _ = ckpt_mod.restore_final_state(out_dir, "sft", abstract)
    return graphdef, state.params
