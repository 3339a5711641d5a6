"""The reward stage's training data: (CV, JD) rows encoded as pointwise arrays (with labels) or
as pairwise chosen / rejected arrays (an accepted and a rejected JD of the same seeker).
"""

from __future__ import annotations

import numpy as np

from girl_jax.data import batches
from girl_jax.errors import ConfigError


def pointwise_arrays(tok, df, max_len):
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
    import pandas as pd  # heavy: pandas, only on this path

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
