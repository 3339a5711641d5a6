"""The data stage: market or user files -> WORKDIR/data (Parquet, tokenizer.json, final.json).

Every later stage reads its data from here, so a run is reproducible from the workdir alone.
"""

from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass

import numpy as np

from girl_jax.checkpoint import read_final, write_json_atomic
from girl_jax.data import io, market
from girl_jax.data.schema import SPLITS
from girl_jax.data.tokenizer import Tokenizer
from girl_jax.errors import DataError


@dataclass
class WorkdirData:
    """What stages read: interactions (pandas), the tokenizer and, for the market, the oracle."""

    interactions: object  # pandas.DataFrame: seeker_id, job_id, cv, jd, label, split
    tokenizer: object
    market: object | None  # girl_jax.data.market.Market when the data is the embedded market
    info: dict

    def split(self, name: str):
        df = self.interactions
        return df[df["split"] == name].reset_index(drop=True)

    def seekers(self, split: str):
        """One row per seeker of a split: seeker_id, cv (first occurrence)."""
        df = self.split(split)
        return df.drop_duplicates("seeker_id")[["seeker_id", "cv"]].reset_index(drop=True)


def _assign_splits(df, seed: int):
    """User data without a split column: by seeker, 10% cold-start, the rest 80/10/10."""
    rng = np.random.default_rng(seed)
    seekers = np.unique(df["seeker_id"].to_numpy())
    cold = set(rng.choice(seekers, size=max(1, len(seekers) // 10), replace=False).tolist())
    u = rng.random(len(df))
    split = np.where(u < 0.8, "train", np.where(u < 0.9, "validation", "test")).astype(object)
    split[df["seeker_id"].isin(cold).to_numpy()] = "cold_start"
    df["split"] = split
    return df


def prepare(config, workdir: str) -> dict:
    """Write WORKDIR/data once; a rerun with the final marker present does nothing."""
    data_dir = os.path.join(workdir, "data")
    final = os.path.join(data_dir, "final.json")
    if os.path.isfile(final):
        with open(final) as f:
            return json.load(f)
    os.makedirs(data_dir, exist_ok=True)
    info: dict = {"source": config.data.source}
    if config.data.source == "market":
        m = market.generate(**_market_kwargs(config))
        df = m.interactions.to_pandas()
        info["market"] = m.summary()
        info["market_config"] = dict(m.config)
    elif config.data.source == "files":
        if not config.data.path:
            raise DataError("config.data.path is empty but config.data.source == 'files'")
        ds = io.load_interactions(config.data.path, max_chars=config.data.max_chars or None)
        df = ds.to_pandas()
        for col, text in (("seeker_id", "cv"), ("job_id", "jd")):
            ids = df[text].map(lambda t: str(zlib.crc32(t.encode())))  # same text, same id
            df[col] = ids if col not in df.columns else df[col].fillna(ids)
        if "split" not in df.columns or df["split"].isna().any():
            if "split" in df.columns and df["split"].notna().any():
                raise DataError(
                    f"{config.data.path}: field 'split' is set on some rows and missing on others"
                )
            df = _assign_splits(df, config.seed)
        info["market"] = dict(
            seekers=int(df["seeker_id"].nunique()),
            jobs=int(df["job_id"].nunique()),
            interactions=len(df),
            positive_rate=float(df["label"].mean()),
        )
    else:
        raise DataError(
            f"config.data.source must be 'market' or 'files', got {config.data.source!r}"
        )
    bad = set(df["split"].unique()) - set(SPLITS)
    if bad:
        raise DataError(
            f"{config.data.path}: field 'split' has unknown values {sorted(map(str, bad))}"
        )
    if not (df["split"] == "train").any():
        raise DataError(f"{config.data.path or 'market'}: no rows in split 'train'")
    df = df[["seeker_id", "job_id", "cv", "jd", "label", "split"]]
    io.write_parquet_atomic(df, os.path.join(data_dir, "interactions.parquet"))

    if config.tokenizer.path:
        tok = Tokenizer.load(config.tokenizer.path)
    else:
        train = df[df["split"] == "train"]
        corpus = list(train["cv"].unique()) + list(train["jd"].unique())
        normalize = config.tokenizer.get("normalize", "none")
        tok = Tokenizer.train(corpus, vocab_size=config.tokenizer.vocab_size, normalize=normalize)
    tok.save(data_dir)
    info["vocab_size"] = tok.vocab_size
    info["splits"] = {s: int((df["split"] == s).sum()) for s in SPLITS}
    write_json_atomic(final, info)
    return info


def _market_kwargs(config) -> dict:
    jd_variation = config.data.get("jd_text_variation", -1.0)
    return dict(
        num_seekers=config.data.num_seekers,
        num_jobs=config.data.num_jobs,
        seed=config.seed,
        positive_rate=config.data.positive_rate,
        applications_per_seeker=config.data.applications_per_seeker,
        text_variation=config.data.get("text_variation", 0.0),
        # < 0 (the default): the JDs vary as much as the CVs
        jd_text_variation=None if jd_variation < 0 else jd_variation,
    )


_CACHE: dict = {}


def load(workdir: str) -> WorkdirData:
    """Read WORKDIR/data (written by `prepare`); the market is regenerated from its seed."""
    import pandas as pd  # heavy: pandas, only on this path

    data_dir = os.path.join(workdir, "data")
    info = read_final(data_dir, "data")
    key = (os.path.abspath(data_dir), os.path.getmtime(os.path.join(data_dir, "final.json")))
    if key in _CACHE:
        return _CACHE[key]
    df = pd.read_parquet(os.path.join(data_dir, "interactions.parquet"))
    tok = Tokenizer.load(data_dir)
    m = None
    if info.get("source") == "market":
        m = market.generate(**info["market_config"])
    out = WorkdirData(df, tok, m, info)
    _CACHE.clear()
    _CACHE[key] = out
    return out
