"""Gold token-level credit: the recruiter oracle's skill term written where each skill is.

The oracle's largest term is 6 x the share of a JD's required skills the seeker has
(`market_oracle._utility_pieces`). A sequence-level reward credits each skill token with the
same scalar as the ~70 other tokens of the JD; `skill_spans` instead gives, for every required
skill a JD asks for, +1 at the character where that skill's phrase ends when the seeker has
the skill and -1 when not. `config.ppo.reward=oracle_credit` hands these spans to PPO, which
places each on the token holding that character; `ppo.advantage=grpo_process` turns them into
per-token credit (GRPO's process supervision). Like `oracle`, a gold signal for diagnosis and
studies only (docs/rl.md).
"""

from __future__ import annotations

import numpy as np

from girl_jax.data import market_text

# The parser's lexicon and word pattern, read (not copied) so the spans find exactly the
# phrases `parse_jd` finds.
_PHRASES = market_text._PHRASES
_WORD = market_text._WORD
_longest = market_text._longest


def skill_ends(text: str) -> dict[int, int]:
    """{skill id: character offset just past its first mention} over the whole text."""
    low = str(text).lower()
    spans = [(m.end(), m.group()) for m in _WORD.finditer(low)]
    words = [w for _, w in spans]
    out: dict[int, int] = {}
    i = 0
    while i < len(words):
        n, hit = _longest(words, i, _PHRASES)
        if hit and hit[0] == "skill" and hit[1] not in out:
            out[hit[1]] = spans[i + n - 1][0]
        i += max(n, 1)
    return out


def skill_spans(market, seeker_ids, jd_texts) -> list[list[tuple[int, float]]]:
    """Per JD, ``(char_end, +1 | -1)`` for each required skill it asks for: +1 when the seeker
    has that skill. JDs the oracle cannot read (unparseable, no skill) get no spans."""
    texts = list(jd_texts)
    sid = np.broadcast_to(np.asarray(seeker_ids, dtype=np.int64), (len(texts),))
    skills = market.seekers["skills"]
    rows: list[list[tuple[int, float]]] = []
    for s, text in zip(sid.tolist(), texts):
        parsed = market_text.parse_jd(text)
        if parsed is None or not parsed.valid:
            rows.append([])
            continue
        owned = {int(k) for k in skills[s] if k >= 0}
        ends = skill_ends(text)
        rows.append([(ends[k], 1.0 if k in owned else -1.0) for k in parsed.required if k in ends])
    return rows
