"""One term of the recruiter oracle as a PPO reward (`ppo.reward=python:...`), for diagnosis.

    PYTHONPATH=scripts girl ppo --config configs/default.py --workdir W \\
        --config.ppo.reward=python:gold_term_rewards:skill_coverage

`skill_coverage` is the oracle's largest term alone: 6 x the share of the JD's required skills
the seeker has (`girl_jax.data.market._utility`), 0 for a JD that does not parse. It reads the
embedded market of the default config (`GIRL_MARKET_SEED`, default 0; 3000 seekers, 500 jobs):
use it only on workdirs built from that market. docs/rl.md, "Is the skill term learnable".
"""

from __future__ import annotations

import functools
import os

import numpy as np

from girl_jax.data import market as market_mod
from girl_jax.data import market_text


@functools.lru_cache(1)
def _market(seed: int):
    return market_mod.generate(num_seekers=3000, num_jobs=500, seed=seed)


def skill_coverage(cvs, jds, seeker_ids) -> np.ndarray:
    del cvs
    m = _market(int(os.environ.get("GIRL_MARKET_SEED", "0")))
    sid = np.asarray(seeker_ids, dtype=np.int64)
    out = np.zeros(len(jds))
    for i, text in enumerate(jds):
        parsed = market_text.parse_jd(text)
        if parsed is None or not parsed.valid:
            continue
        required = market_text.parsed_fields([parsed])["required"]
        out[i] = market_mod._coverage(m.seekers["skills"][sid[i : i + 1]], required)[0]
    return 6.0 * out
