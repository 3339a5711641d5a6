"""Built-in host reward functions for `config.ppo.reward=python:girl_jax.rewards:NAME[:weight]`.

Each has the reward-function signature of `girl_jax.stages.ppo.rewards` (and of TRL's / verl's
reward functions): ``(cvs: list[str], jds: list[str], seeker_ids) -> np.ndarray`` of one float
per JD. They read only the texts (never the market's oracle), so they may sit beside the
reward model in the default pipeline:

    --config.ppo.reward="model:1.0,python:girl_jax.rewards:repeated_items:1.0"

- `repeated_items`: minus the share of a JD's list items and sentences that repeat an earlier
  one ("sql, sql, sql", a duty written twice). A reward model whose match features count CV
  words in the JD pays for repeating a CV skill, which no recruiter does (docs/rl.md).
- `distinct_cv_skills`: the number of distinct CV phrases the JD's lists name, over 5 (a
  text-only stand-in for "asks for skills the seeker has").

A reward function may instead return `Spans`: per JD, a list of ``(char_end, value)`` pairs, a
value credited at the token that holds character ``char_end - 1`` of the JD (token-level
credit, e.g. a reward for each skill where it is written). `ppo.advantage=grpo_process` uses
them as step rewards (GRPO's process supervision), GAE and REINFORCE++ as per-token rewards;
the other estimators see each JD's sum as part of its sequence reward (docs/rl.md).
"""

from __future__ import annotations

import re

import numpy as np


class Spans(list):
    """A span reward's result: one list of ``(char_end, value)`` pairs per JD, in order."""


_SPLIT = re.compile(r"[,;|.:\n]+|\band\b|\bor\b")


def _items(text: str) -> list[str]:
    """The lower-cased, whitespace-normalised items of a text split at , ; | . : and "and"."""
    parts = (" ".join(p.split()) for p in _SPLIT.split(str(text).lower()))
    return [p for p in parts if p]


def repeated_share(text: str) -> float:
    """Share of a text's items (see `_items`) equal to an earlier item; 0 for an empty text."""
    items = _items(text)
    if not items:
        return 0.0
    return 1.0 - len(set(items)) / len(items)


def repeated_items(cvs, jds, seeker_ids) -> np.ndarray:
    """-(share of repeated items) per JD: 0 for a JD without repeats, towards -1 for loops."""
    del cvs, seeker_ids
    return -np.array([repeated_share(t) for t in jds], dtype=np.float64)


def distinct_cv_skills(cvs, jds, seeker_ids) -> np.ndarray:
    """Distinct items of the JD found in the CV's text (as whole words), over 5 (capped at 1)."""
    del seeker_ids
    out = np.zeros(len(jds), dtype=np.float64)
    for i, (cv, jd) in enumerate(zip(cvs, jds)):
        text = " ".join(str(cv).lower().split())
        shared = [w for w in set(_items(jd)) if re.search(rf"\b{re.escape(w)}\b", text)]
        out[i] = min(len(shared) / 5.0, 1.0)
    return out
