"""Stage 2, the reward model: decoder trunk + scalar head scoring (CV, JD) at the last token.

Initialised from the final SFT checkpoint. Objective `pointwise` (BCE on recruiter labels) or
`pairwise` (Bradley-Terry on an accepted and a rejected JD of the same seeker). Writes
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

from girl_jax import preemption, wandb_writer
from girl_jax.errors import ConfigError
from girl_jax.stages import common


@dataclasses.dataclass(frozen=True)
class RewardConfig:
    objective: str
    head: str
    head_hidden: int
    probe_epochs: int
    probe_batch_size: int
    probe_learning_rate: float
    probe_patience: int
    batch_size: int
    steps: int
    learning_rate: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    margin: float
    center_coef: float
    eval_every: int
    checkpoint_every: int
    keep: int
    log_every: int
    feature_layer: int = 0  # 0: the last block's normed output
    match_features: bool = False
    ensemble_size: int = 0  # 0: no ensemble; K >= 2: K more heads on the frozen trunk
    ensemble_bootstrap: bool = True  # each member on a bootstrap resample of the train rows
    # > 0: add this many synthetic hard negatives per training positive (the accepted JD with one
    # field made wrong for the seeker: city, pay, years, degree or skills; data/negatives.py)
    synthetic_negatives: float = 0.0

    def __post_init__(self):
        if self.objective not in ("pointwise", "pairwise"):
            raise ConfigError(
                f"config.reward.objective must be pointwise or pairwise, got {self.objective!r}"
            )
        from girl_jax.models.heads import REWARD_HEADS

        if self.head not in REWARD_HEADS:
            raise ConfigError(
                f"config.reward.head must be one of {', '.join(REWARD_HEADS)}, got {self.head!r}"
            )
        from girl_jax.models.heads import MATCH_HEADS

        if self.match_features and self.head not in MATCH_HEADS:
            raise ConfigError(
                f"config.reward.match_features needs config.reward.head in "
                f"{', '.join(MATCH_HEADS)}, got {self.head!r}"
            )
        if self.feature_layer < 0:
            raise ConfigError(
                f"config.reward.feature_layer must be >= 0 (0: the last layer), "
                f"got {self.feature_layer}"
            )
        positive = ("batch_size", "eval_every", "checkpoint_every", "keep", "log_every")
        positive += ("head_hidden", "probe_batch_size", "probe_patience")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"config.reward.{name} must be positive")
        for name in ("steps", "probe_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"config.reward.{name} must be >= 0")
        if self.steps == 0 and self.probe_epochs == 0:
            raise ConfigError("config.reward: probe_epochs and steps are both 0 (nothing trains)")
        if self.ensemble_size < 0 or self.ensemble_size == 1:
            raise ConfigError(
                f"config.reward.ensemble_size must be 0 (no ensemble) or >= 2, "
                f"got {self.ensemble_size}"
            )
        if self.ensemble_size and self.steps:
            raise ConfigError(
                f"config.reward.ensemble_size={self.ensemble_size} needs a frozen trunk "
                f"(config.reward.steps=0, got {self.steps}): members are heads on its features"
            )

    @classmethod
    def from_config(cls, c) -> RewardConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(c.keys()) - names
        if unknown:
            raise ConfigError(f"unknown config key config.reward.{sorted(unknown)[0]}")
        return cls(**{k: c[k] for k in names if k in c or k not in cls.defaults()})

    @classmethod
    def defaults(cls) -> dict:
        """The options a config may leave out (written before they existed): name -> default."""
        fields = dataclasses.fields(cls)
        return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


# ---------------------------------------------------------------- losses


def scores(params, graphdef, ids, mask, response_mask=None):
    """Reward score per sequence [B] float32 (`RewardModel`, or a `ScoreModel`'s last token)."""
    from girl_jax.models.heads import sequence_score

    return sequence_score(nnx.merge(graphdef, params), ids, mask, response_mask)


def pointwise_loss(params, graphdef, batch, cfg: RewardConfig):
    s = scores(
        params,
        graphdef,
        batch["input_ids"],
        batch["attention_mask"],
        batch.get("response_mask"),
    )
    y = batch["label"].astype(jnp.float32)
    loss = optax.sigmoid_binary_cross_entropy(s, y).mean() + cfg.center_coef * s.mean() ** 2
    acc = ((s > 0) == (y > 0.5)).mean()
    return loss, dict(accuracy=acc, score_mean=s.mean())


def pairwise_loss(params, graphdef, batch, cfg: RewardConfig):
    sc = scores(
        params,
        graphdef,
        batch["chosen_ids"],
        batch["chosen_mask"],
        batch.get("chosen_response_mask"),
    )
    sr = scores(
        params,
        graphdef,
        batch["rejected_ids"],
        batch["rejected_mask"],
        batch.get("rejected_response_mask"),
    )
    loss = -jax.nn.log_sigmoid(sc - sr - cfg.margin).mean()
    loss = loss + cfg.center_coef * ((sc + sr) / 2).mean() ** 2
    return loss, dict(accuracy=(sc > sr).mean(), score_mean=(sc + sr).mean() / 2)


LOSSES = {"pointwise": pointwise_loss, "pairwise": pairwise_loss}


def train_step(state, batch, rng, *, graphdef, tx, cfg: RewardConfig):
    del rng
    loss_fn = LOSSES[cfg.objective]
    (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, graphdef, batch, cfg
    )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = common.all_finite(loss, grads)
    new_state = state.replace(
        step=state.step + 1,
        params=common.select_tree(finite, params, state.params),
        opt_state=common.select_tree(finite, opt_state, state.opt_state),
    )
    return new_state, dict(
        loss=loss, **aux, grad_norm=optax.global_norm(grads), finite=finite.astype(jnp.float32)
    )


# ---------------------------------------------------------------- data


def pointwise_arrays(tok, df, max_len):
    from girl_jax.data import batches

    enc = batches.encode_reward(
        tok, list(df["cv"]), list(df["jd"]), list(df["label"]), max_len=max_len
    )
    return {
        "input_ids": enc["input_ids"],
        "attention_mask": enc["attention_mask"],
        "response_mask": enc["response_mask"],
        "label": np.asarray(enc["label"], np.float32),
    }


def pairwise_arrays(tok, df, max_len, seed):
    """Every seeker with an accepted and a rejected JD gives pairs (cycled to the larger side)."""
    rng = np.random.default_rng(seed)
    chosen, rejected = [], []
    for _, g in df.groupby("seeker_id", sort=True):
        pos, neg = g[g["label"] == 1], g[g["label"] == 0]
        if len(pos) and len(neg):
            n = max(len(pos), len(neg))
            chosen += [pos.iloc[i % len(pos)] for i in range(n)]
            rejected += [neg.iloc[i % len(neg)] for i in rng.permutation(n)]
    import pandas as pd

    if not chosen:
        raise ConfigError("config.reward.objective=pairwise needs seekers with both labels")
    c = pointwise_arrays(tok, pd.DataFrame(chosen), max_len)
    r = pointwise_arrays(tok, pd.DataFrame(rejected), max_len)
    return {
        "chosen_ids": c["input_ids"],
        "chosen_mask": c["attention_mask"],
        "chosen_response_mask": c["response_mask"],
        "rejected_ids": r["input_ids"],
        "rejected_mask": r["attention_mask"],
        "rejected_response_mask": r["response_mask"],
    }


# ---------------------------------------------------------------- driver


def build_model_fn(config, vocab_size, seed):
    from girl_jax.models.heads import RewardModel

    mcfg = common.decoder_config(config, vocab_size)
    r = config.reward
    defaults = RewardConfig.defaults()
    feature_layer = r.get("feature_layer", defaults["feature_layer"])
    match = r.get("match_features", defaults["match_features"])
    if feature_layer > mcfg.num_layers:
        raise ConfigError(
            f"config.reward.feature_layer={feature_layer} but the model has "
            f"{mcfg.num_layers} layers (config.model.num_layers)"
        )
    kwargs = dict(
        head=r.head, head_hidden=r.head_hidden, feature_layer=feature_layer, match_features=match
    )
    return mcfg, (lambda rngs: RewardModel(mcfg, rngs=rngs, **kwargs))


def make_tx(cfg: RewardConfig):
    return common.make_optimizer(
        cfg.learning_rate,
        max(cfg.steps, 1),
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        grad_clip=cfg.grad_clip,
    )


def score_dataset(score_fn, params, arrays, batch_size, multiple: int = 32):
    """Scores (or any per-row output, e.g. features [N, F]) for every row, in the input order.

    `score_fn(params, ids, mask, response_mask)`; `arrays` holds right-padded input_ids,
    attention_mask and response_mask [N, L]. Rows go through in order of length (the end of
    their last valid token, so left padding is never cut), each batch cut to its longest row
    rounded up to `multiple` (padding is ~1/3 of a [N, L] table here), the last batch padded:
    a few compiled shapes and no work on all-pad columns. The output may be a pytree of arrays;
    per-token outputs [B, T', D] come back zero-padded to `trimmed_width(arrays, multiple)`.
    """
    keys = ("input_ids", "attention_mask", "response_mask")
    n, width = arrays["input_ids"].shape
    mask = np.asarray(arrays["attention_mask"]).astype(bool)
    lengths = np.where(mask.any(1), width - np.argmax(mask[:, ::-1], 1), 0)  # last valid + 1
    order = np.argsort(lengths, kind="stable")
    full = trimmed_width(arrays, multiple)
    out = []
    for b in range(0, n, batch_size):
        idx = order[b : b + batch_size]
        keep = min(width, -(-max(int(lengths[idx].max()), 1) // multiple) * multiple)
        rows = [np.asarray(arrays[k])[idx, :keep] for k in keys]
        pad = batch_size - len(idx)
        if pad:
            rows = [np.concatenate([x, np.repeat(x[-1:], pad, 0)]) for x in rows]
        o = jax.device_get(score_fn(params, *rows))
        rows_here = len(idx)
        out.append(jax.tree.map(lambda a, n=rows_here: _restore_width(np.asarray(a)[:n], full), o))
    if not out:
        return np.zeros(0, np.float32)

    def unsort(*parts):
        stacked = np.concatenate(parts)
        result = np.empty_like(stacked)
        result[order] = stacked
        return result

    return jax.tree.map(unsort, *out)


def _restore_width(a: np.ndarray, full: int) -> np.ndarray:
    """Per-token outputs [B, T', D] are zero-padded back to the common width `full`."""
    return np.pad(a, ((0, 0), (0, full - a.shape[1]), (0, 0))) if a.ndim == 3 else a


def trimmed_width(arrays, multiple: int = 32) -> int:
    """The columns any row of `arrays` uses, rounded up to `multiple` (at most the width)."""
    mask = np.asarray(arrays["attention_mask"]).astype(bool)
    width = mask.shape[1]
    used = width - int(np.argmax(mask.any(0)[::-1])) if mask.any() else 1
    return min(width, -(-used // multiple) * multiple)


def train_and_evaluate(config, workdir: str) -> dict:
    """Restore or init, train, evaluate, checkpoint; a finished stage returns its eval.json."""
    with common.activate_rules(config):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict:
    from girl_jax import checkpoint as ckpt_mod
    from girl_jax import metrics as metrics_mod
    from girl_jax.data import pipeline, prepare
    from girl_jax.models.heads import transplant_trunk
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.parallel import rules as rules_mod
    from girl_jax.parallel import state as state_mod
    from girl_jax.stages import reward_probe, sft

    cfg = RewardConfig.from_config(config.reward)
    out_dir = common.stage_dir(workdir, "reward")
    if ckpt_mod.is_final(out_dir):
        return json.load(open(os.path.join(out_dir, "eval.json")))
    data = prepare.load(workdir)
    tok = data.tokenizer
    max_len = config.sft.max_prompt_len + config.sft.max_response_len
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    mesh_mod.check_batch(cfg.batch_size, mesh, key="reward.batch_size")

    sft_graphdef, sft_params = sft.load_final_params(workdir, config, tok.vocab_size)
    mcfg, model_fn = build_model_fn(config, tok.vocab_size, config.seed)

    tx = make_tx(cfg)
    graphdef, state, shardings = state_mod.create_train_state(
        model_fn, tx, mesh, rules, seed=config.seed
    )
    ckpt = ckpt_mod.StageCheckpointer(out_dir, keep=cfg.keep)
    train_df = data.split("train")
    if cfg.synthetic_negatives > 0:
        if data.market is None:
            raise ConfigError(
                "config.reward.synthetic_negatives needs the embedded market's structured jobs "
                "(config.data.source=market)"
            )
        from girl_jax.data import negatives

        train_df = negatives.augment(
            train_df, data.market, cfg.synthetic_negatives, config.seed + 7
        )
    if cfg.objective == "pointwise":
        train = pointwise_arrays(tok, train_df, max_len)
    else:
        train = pairwise_arrays(tok, train_df, max_len, config.seed)
    val = pointwise_arrays(tok, data.split("validation"), max_len)
    probe_history = []
    features = None  # the frozen trunk's cached features, kept for an ensemble's heads
    if not ckpt.latest_step():
        # Trunk from the final SFT model and a fresh head, first fitted on the frozen trunk's
        # features (linear probing); fresh buffers so donating the state never deletes the SFT
        # params still used for evaluation.
        params = transplant_trunk(sft_params, state.params)
        if cfg.probe_epochs:
            if cfg.ensemble_size:
                features = reward_probe.cached_features(cfg, graphdef, params, train, val)
            params, probe_history = reward_probe.probe(
                cfg, graphdef, params, train, val, config.seed, features=features
            )
        state = state.replace(params=common.fresh_copy(params, shardings.params))
    step_fn = jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=tx, cfg=cfg),
        in_shardings=(shardings, state_mod.batch_sharding(mesh), None),
        out_shardings=(shardings, None),
        donate_argnums=(0,),
    )
    score_fn = jax.jit(lambda p, ids, mask, resp: scores(p, graphdef, ids, mask, resp))
    it = pipeline.make_iterator(train, batch_size=cfg.batch_size, seed=config.seed + 1)
    start = ckpt.latest_step() or 0
    if start:
        state, extra = ckpt.restore(start, ckpt_mod.abstract_like(state))
        it.set_state(extra["data_iterator"])
    writer = metrics_mod.MetricWriter(
        out_dir,
        resume_step=start,
        enabled=jax.process_index() == 0,
        mirror=wandb_writer.from_config(config, "reward", workdir),
    )
    bar = metrics_mod.Progress(max(cfg.steps, 1), "reward", start=start)

    def evaluate(step):
        s = score_dataset(score_fn, state.params, val, cfg.batch_size)
        rep = {f"eval_{k}": v for k, v in metrics_mod.binary_report(val["label"], s).items()}
        writer.write(step, rep)
        return rep

    last = {}
    skipped, refused = 0, -1
    for step in range(start, cfg.steps):
        batch = state_mod.put_batch(next(it), mesh)
        state, m = step_fn(state, batch, common.fold_rng(config.seed, "reward", step))
        done = step + 1
        # The first refused step since the last log, tracked on device (no per-step sync).
        refused = jnp.where((refused < 0) & (m["finite"] < 0.5), done, refused)
        if done % cfg.log_every == 0 or done == cfg.steps:
            m = common.host(m)
            bad_step = int(refused)
            if bad_step >= 0:
                m["finite"] = 0.0  # a step since the last log was refused
            refused = -1
            skipped += common.check_finite(m, "reward", bad_step if bad_step >= 0 else done)
            writer.write(done, {**m, "skipped_updates": skipped})
            bar.update(done, f"loss {m['loss']:.3f} acc {m['accuracy']:.2f}")
        if done % cfg.eval_every == 0 or done == cfg.steps:
            last = evaluate(done)
        if done % cfg.checkpoint_every == 0 or done == cfg.steps:
            ckpt.save(done, state, {"data_iterator": it.get_state()})
        preemption.check(
            "reward",
            done,
            lambda d=done, s=state: ckpt.save(d, s, {"data_iterator": it.get_state()}),
        )
    bar.close()
    if cfg.steps == 0:  # probe only: the probed head is the final reward model
        ckpt.save(0, state, {"data_iterator": it.get_state()})
    stacked = members = None
    if cfg.ensemble_size:  # refitted on a resume too: the probe above reran (steps 0)
        stacked, members = _fit_ensemble(
            cfg, config, graphdef, state.params, model_fn, train, val, features, out_dir
        )
        features = None
    elif jax.process_index() == 0:  # no ensemble now: one left by an earlier run is stale
        stale = os.path.join(out_dir, ENSEMBLE_DIR, "final.json")
        if os.path.exists(stale):
            os.remove(stale)
    if not last:
        last = evaluate(cfg.steps)
    result = {k.removeprefix("eval_"): v for k, v in last.items()}
    if probe_history:
        result["probe"] = {"epochs": len(probe_history), "history": probe_history}
    # Held-out seekers never seen in training, and how the RM tracks the oracle on generated JDs.
    cold = data.split("cold_start")
    if len(cold) and cold["label"].nunique() == 2:
        arrs = pointwise_arrays(tok, cold, max_len)
        s = score_dataset(score_fn, state.params, arrs, cfg.batch_size)
        result["cold_start"] = metrics_mod.binary_report(arrs["label"], s)
    test = data.split("test")
    if len(test) and test["label"].nunique() == 2:
        arrs = pointwise_arrays(tok, test, max_len)
        s = score_dataset(score_fn, state.params, arrs, cfg.batch_size)
        result["test"] = metrics_mod.binary_report(arrs["label"], s)
    if data.market is not None:
        result.update(
            _oracle_tracking(
                config,
                data,
                sft_graphdef,
                sft_params,
                state.params,
                score_fn,
                tok,
                max_len,
                cfg.batch_size,
            )
        )
    if stacked is not None:
        splits = {"validation": val}
        if len(test) and test["label"].nunique() == 2:
            splits["test"] = pointwise_arrays(tok, test, max_len)
        result["ensemble"] = _ensemble_report(
            cfg, config, graphdef, state.params, stacked, members, splits
        )
    result["step"] = cfg.steps
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(os.path.join(out_dir, "eval.json"), result)
    ckpt.mark_final(cfg.steps, {"model": dataclasses.asdict(mcfg)})
    ckpt.close()
    writer.close()
    return result


def _oracle_tracking(
    config, data, sft_graphdef, sft_params, rm_params, score_fn, tok, max_len, batch_size
):
    """Spearman correlation between RM score and oracle true match on sampled SFT JDs."""
    from scipy.stats import spearmanr

    from girl_jax.stages.generation import Generator

    seekers = data.seekers("validation").iloc[: max(config.sft.num_eval_samples, 32)]
    gen = Generator(
        sft_graphdef,
        sft_params,
        tok,
        max_prompt_len=config.sft.max_prompt_len,
        max_new_tokens=config.sft.max_response_len,
        greedy=False,
        temperature=1.0,
        batch_size=min(64, len(seekers)),
    )
    texts = gen.generate(list(seekers["cv"]), common.fold_rng(config.seed, "reward-oracle", 0))
    arrs = pointwise_arrays(
        tok, __import__("pandas").DataFrame({"cv": seekers["cv"], "jd": texts, "label": 0}), max_len
    )
    s = score_dataset(score_fn, rm_params, arrs, batch_size)
    true = data.market.true_match(seekers["seeker_id"].to_numpy(), texts)
    rho = spearmanr(s, true).statistic if np.std(true) > 0 and np.std(s) > 0 else float("nan")
    return {"oracle_spearman_generated": float(rho)}


def load_final_params(workdir: str, config, vocab_size: int):
    """(graphdef, params) of the final reward model."""
    from girl_jax import checkpoint as ckpt_mod
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.parallel import rules as rules_mod
    from girl_jax.parallel import state as state_mod

    cfg = RewardConfig.from_config(config.reward)
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    _, model_fn = build_model_fn(config, vocab_size, config.seed)
    graphdef, abstract, _, _ = state_mod.abstract_train_state(model_fn, make_tx(cfg), mesh, rules)
    state, _, _ = ckpt_mod.restore_final_state(
        os.path.join(workdir, "reward"), "reward", abstract, needed_by="ppo"
    )
    return graphdef, state.params


# ---------------------------------------------------------------- ensemble

ENSEMBLE_DIR = "ensemble"  # under WORKDIR/reward
ENSEMBLE_EVAL_LAM = 1.0  # eval.json's mean_minus_std aggregation: mean - 1.0 * std


def ensemble_seeds(seed: int, size: int) -> list[int]:
    """Member k's seed: config.seed + 1000 + k (head init, bootstrap draw, shuffling)."""
    return [seed + 1000 + k for k in range(size)]


def _head_init_fn(model_fn):
    """seed -> a fresh reward head's state, as a RewardModel built from that seed has it (the
    trunk's initialisation is traced but dead code under jit: only the head is computed)."""

    @jax.jit
    def init(key):
        with nnx.use_eager_sharding(False):
            model = model_fn(nnx.Rngs(key))
        return nnx.split(model.reward_head)[1]

    return lambda seed: init(jax.random.key(seed))


def _fit_ensemble(cfg, config, graphdef, params, model_fn, train, val, features, out_dir):
    """Fits the K member heads on the frozen trunk's features and saves them (atomically)."""
    from girl_jax import metrics as metrics_mod
    from girl_jax.stages import reward_probe

    if features is None:
        features = reward_probe.cached_features(cfg, graphdef, params, train, val)
    head_graphdef, main_head = nnx.split(nnx.merge(graphdef, params).reward_head)
    seeds = ensemble_seeds(config.seed, cfg.ensemble_size)
    init = _head_init_fn(model_fn)

    def init_head(seed):  # laid out like the main head: the probe's compiled step is reused
        shardings = jax.tree.map(lambda a: a.sharding, main_head)
        return jax.device_put(init(seed), shardings)

    bar = metrics_mod.Progress(cfg.ensemble_size, "reward ensemble")

    def on_member(k, m):
        info = f"member {k} (seed {m['seed']}): val auc {m['probe_val_auc']:.3f}, "
        bar.update(k + 1, info + f"{m['epochs']} epochs")

    stacked, members = reward_probe.fit_ensemble(
        cfg,
        head_graphdef,
        init_head,
        features,
        seeds,
        bootstrap=cfg.ensemble_bootstrap,
        on_member=on_member,
    )
    bar.close()
    info = {"size": cfg.ensemble_size, "bootstrap": cfg.ensemble_bootstrap, "seeds": seeds}
    save_ensemble(os.path.join(out_dir, ENSEMBLE_DIR), stacked, {**info, "members": members})
    return stacked, members


def save_ensemble(ens_dir: str, stacked, info: dict) -> None:
    """Stacked head params to ens_dir/heads (Orbax: written aside, renamed on commit), then
    ens_dir/final.json (the marker `load_final_ensemble` needs), written last and atomically."""
    import orbax.checkpoint as ocp

    from girl_jax import checkpoint as ckpt_mod

    final = os.path.join(ens_dir, "final.json")
    if jax.process_index() == 0:
        os.makedirs(ens_dir, exist_ok=True)
        if os.path.exists(final):  # an older ensemble: not final while its heads are replaced
            os.remove(final)
    ckptr = ocp.StandardCheckpointer()
    try:
        ckptr.save(os.path.abspath(os.path.join(ens_dir, "heads")), stacked, force=True)
        ckptr.wait_until_finished()
    finally:
        ckptr.close()
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(final, info)


def ensemble_scores(graphdef, params, stacked_head_params, ids, mask, response_mask=None):
    """Every member's score [K, B] float32: the trunk runs once, the K heads are vmapped.

    `graphdef, params`: the reward model (`load_final_params` / `load_final_ensemble`);
    `stacked_head_params`: K reward-head states stacked on axis 0 of every leaf (the state
    `nnx.split(model.reward_head)` gives, with a leading K). Pure and jittable.
    """
    model = nnx.merge(graphdef, params)
    feats = model.features(ids, mask, response_mask)
    head_graphdef = nnx.split(model.reward_head)[0]

    def one(head_params):
        return nnx.merge(head_graphdef, head_params)(feats).astype(jnp.float32)

    return jax.vmap(one)(stacked_head_params)


def ensemble_member_params(graphdef, params, stacked_head_params, k: int):
    """Full RewardModel params with member k's head in place of the main one (for `scores`)."""
    model = nnx.merge(graphdef, params)
    nnx.update(model.reward_head, jax.tree.map(lambda a: a[k], stacked_head_params))
    return nnx.state(model, nnx.Param)


def _ensemble_report(cfg, config, graphdef, params, stacked, members, splits) -> dict:
    """eval.json's "ensemble": member AUCs and the aggregations' AUCs per split."""
    from girl_jax import metrics as metrics_mod
    from girl_jax.rl import ensemble as ens_mod

    fn = jax.jit(lambda p, h, i, m, r: ensemble_scores(graphdef, p, h, i, m, r).T)  # [B, K]
    report = {
        "size": cfg.ensemble_size,
        "bootstrap": cfg.ensemble_bootstrap,
        "lam": ENSEMBLE_EVAL_LAM,
        "members": [{k: m[k] for k in ("seed", "epochs", "probe_val_auc")} for m in members],
    }
    for name, arrs in splits.items():
        s = score_dataset(
            lambda p, i, m, r: fn(p, stacked, i, m, r), params, arrs, cfg.batch_size
        ).T  # [K, N]
        y = arrs["label"]
        aucs = [metrics_mod.auc(y, sk) for sk in s]
        for member, a in zip(report["members"], aucs):
            member[f"{name}_auc"] = a
        agg = {
            how: np.asarray(ens_mod.aggregate(s, how, lam=ENSEMBLE_EVAL_LAM))
            for how in ens_mod.AGGREGATIONS
        }
        report[name] = {
            "member_auc": aucs,
            "member_auc_mean": float(np.mean(aucs)),
            "member_auc_std": float(np.std(aucs)),
            "mean": metrics_mod.binary_report(y, agg["mean"]),
            **{how: {"auc": metrics_mod.auc(y, a)} for how, a in agg.items() if how != "mean"},
        }
    return report


def _abstract_heads(config, vocab_size: int, size: int, sharding=None):
    """ShapeDtypeStructs of `size` stacked reward-head states (for restoring)."""
    _, model_fn = build_model_fn(config, vocab_size, config.seed)
    one = jax.eval_shape(_head_init_fn(model_fn), 0)
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((size, *a.shape), a.dtype, sharding=sharding), one
    )


def load_final_ensemble(workdir: str, config, vocab_size: int):
    """(graphdef, params, stacked_head_params) of the final reward model and its ensemble.

    `graphdef, params`: the main reward model, as `load_final_params` gives it (trunk + main
    head); `stacked_head_params`: the K member heads' states, K on axis 0 of every leaf,
    replicated on the config's mesh. Score with `ensemble_scores(graphdef, params,
    stacked_head_params, ids, mask, response_mask) -> [K, B]`. Needs
    config.reward.ensemble_size = the K the reward stage fitted.
    """
    import orbax.checkpoint as ocp

    from girl_jax import checkpoint as ckpt_mod
    from girl_jax.errors import CheckpointError
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.parallel import rules as rules_mod

    cfg = RewardConfig.from_config(config.reward)
    if not cfg.ensemble_size:
        raise ConfigError("a reward-model ensemble needs config.reward.ensemble_size >= 2")
    graphdef, params = load_final_params(workdir, config, vocab_size)
    ens_dir = os.path.join(workdir, "reward", ENSEMBLE_DIR)
    info = ckpt_mod.read_final(ens_dir, "reward", needed_by="the reward-model ensemble")
    if info["size"] != cfg.ensemble_size:
        raise CheckpointError(
            f"{ens_dir} holds {info['size']} reward heads but config.reward.ensemble_size is "
            f"{cfg.ensemble_size}: set it to {info['size']} or rerun the reward stage"
        )
    mesh = mesh_mod.make_mesh(config.mesh)
    abstract = _abstract_heads(config, vocab_size, info["size"], rules_mod.replicated(mesh))
    ckptr = ocp.StandardCheckpointer()
    try:
        stacked = ckptr.restore(os.path.abspath(os.path.join(ens_dir, "heads")), abstract)
    except Exception as exc:  # shape / structure mismatch, missing files
        raise CheckpointError(
            f"cannot restore {ens_dir}/heads: {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        ckptr.close()
    return graphdef, params, stacked
