"""PPO's reward sources: what `config.ppo.reward` names, parsed, and the host-side scorers.

`config.ppo.reward` is a comma-separated list of weighted terms, summed::

    model                    the trained reward model (default), scored inside the jitted step
    ensemble                 K bootstrap reward heads on the RM trunk (`reward.ensemble_size`),
                             aggregated by `ppo.ensemble_agg` (mean | min | mean_minus_std)
    oracle                   the embedded market's recruiter (`market.true_match`): the GOLD
                             reward, for diagnosis and studies; such runs are marked gold runs
    oracle_credit            the oracle's skill term where each skill is written: per JD,
                             +1 / -1 at each required skill the seeker has / lacks (token-level
                             credit, `girl_jax.data.market_credit`; gold, diagnosis only)
    python:pkg.mod:function  any callable ``(cvs: list[str], jds: list[str], seeker_ids)
                             -> array of B floats``, like TRL / verl reward functions, or
                             `girl_jax.rewards.Spans` (per JD, ``(char_end, value)`` pairs)

Each term takes an optional trailing ``:weight`` (default 1.0), e.g.
``--config.ppo.reward="model:1.0,python:my_pkg.rewards:length_penalty:0.1"``.

`model` and `ensemble` run on device, inside the step. `oracle` and `python` terms run on the
host: the iteration then splits into a jitted rollout, host scoring and a jitted, donated
update (`step.sample_step` / `step.update_step`); with device terms alone it stays one
fused program. A host function that raises, returns the wrong type or length stops the run
with one line naming it and the iteration; non-finite values do too, or the iteration is
skipped and counted with `ppo.on_nonfinite=skip`.

Span terms (`oracle_credit`, a function returning `Spans`) give step rewards: `place_spans`
puts each value on the token holding its character (`token_char_ends`), and the update gets
them beside the sequence reward (`step.score_rollout`: step rewards for `grpo_process`,
per-token rewards for GAE / REINFORCE++, summed into the sequence reward otherwise).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable

import numpy as np

from girl_jax.data import market_credit
from girl_jax.errors import ConfigError, NumericsError
from girl_jax.rewards import Spans

DEVICE_KINDS = ("model", "ensemble")
HOST_KINDS = ("oracle", "oracle_credit", "python")
GOLD_KINDS = ("oracle", "oracle_credit")


class RewardFunctionError(ConfigError):
    """A host reward function failed (raised, wrong type / length): names it and the iteration."""


@dataclasses.dataclass(frozen=True)
class RewardTerm:
    kind: str  # model | ensemble | oracle | oracle_credit | python
    weight: float = 1.0
    target: str = ""  # python: "package.module:function"

    @property
    def name(self) -> str:
        return f"python:{self.target}" if self.kind == "python" else self.kind

    @property
    def on_host(self) -> bool:
        return self.kind in HOST_KINDS


def _weight(text: str, term: str) -> float:
    try:
        w = float(text)
    except ValueError:
        raise ConfigError(
            f"config.ppo.reward: weight {text!r} of term {term!r} is not a number"
        ) from None
    if not np.isfinite(w):
        raise ConfigError(f"config.ppo.reward: weight of term {term!r} must be finite")
    return w


def parse(spec: str) -> tuple[RewardTerm, ...]:
    """`"model:1.0,python:pkg.mod:fn:0.1"` -> terms; ConfigError naming the bad term."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError("config.ppo.reward must name at least one term (e.g. 'model')")
    terms: list[RewardTerm] = []
    for raw in spec.split(","):
        term = raw.strip()
        parts = [p.strip() for p in term.split(":")]
        kind = parts[0]
        if kind in DEVICE_KINDS or kind in GOLD_KINDS:
            if len(parts) > 2:
                raise ConfigError(f"config.ppo.reward: term {term!r} is kind[:weight]")
            w = _weight(parts[1], term) if len(parts) == 2 else 1.0
            terms.append(RewardTerm(kind, w))
        elif kind == "python":
            if len(parts) not in (3, 4) or not parts[1] or not parts[2]:
                raise ConfigError(
                    f"config.ppo.reward: term {term!r} must be python:package.module:function"
                    "[:weight]"
                )
            w = _weight(parts[3], term) if len(parts) == 4 else 1.0
            terms.append(RewardTerm("python", w, f"{parts[1]}:{parts[2]}"))
        else:
            raise ConfigError(
                f"config.ppo.reward: unknown term {term!r}; known: model, ensemble, oracle, "
                "oracle_credit, python:package.module:function (each with an optional :weight)"
            )
    names = [t.name for t in terms]
    if len(set(names)) != len(names):
        raise ConfigError(f"config.ppo.reward: a term appears twice in {spec!r}")
    return tuple(terms)


def device_weight(terms, kind: str) -> float:
    """The weight of the device term `kind` (0.0 when absent)."""
    return sum(t.weight for t in terms if t.kind == kind)


def is_gold(terms) -> bool:
    return any(t.kind in GOLD_KINDS for t in terms)


def load_function(target: str) -> Callable:
    """Import `package.module:function`; ConfigError in one line if it is not there."""
    module_name, _, fn_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # ImportError or an error while importing the user's module
        raise ConfigError(
            f"config.ppo.reward: cannot import {module_name!r} for python:{target} "
            f"({type(exc).__name__}: {exc})"
        ) from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise ConfigError(f"config.ppo.reward: {module_name}.{fn_name} is not a callable")
    return fn


class HostRewards:
    """The host-side terms of a reward spec: `score(cvs, jds, seeker_ids, iteration)` -> [B].

    Returns the weighted sum of the host terms and each term's mean, checking every function's
    output (type, length, finiteness) and naming the function and the iteration on failure.
    """

    def __init__(self, terms, market=None):
        self.terms = tuple(t for t in terms if t.on_host)
        self.fns: dict[str, Callable] = {}
        for t in self.terms:
            if t.kind in GOLD_KINDS and market is None:
                raise ConfigError(
                    f"config.ppo.reward: {t.kind!r} needs the embedded market "
                    "(config.data.source=market); user data have no recruiter oracle"
                )
            if t.kind == "oracle":
                self.fns[t.name] = lambda cvs, jds, sids, m=market: m.true_match(sids, jds)
            elif t.kind == "oracle_credit":
                self.fns[t.name] = lambda cvs, jds, sids, m=market: Spans(
                    market_credit.skill_spans(m, sids, jds)
                )
            else:
                self.fns[t.name] = load_function(t.target)

    def __bool__(self) -> bool:
        return bool(self.terms)

    def score(self, cvs, jds, seeker_ids, iteration: int, on_nonfinite: str = "stop"):
        """(total [B] float32 or None when skipped, {term name: mean value}); span terms are
        refused here (`score_all` returns them): a caller that cannot place spans says so."""
        total, means, spans = self.score_all(cvs, jds, seeker_ids, iteration, on_nonfinite)
        if spans is not None:
            raise ConfigError(
                "config.ppo.reward: span rewards (oracle_credit, functions returning Spans) "
                "need `girl ppo` or `girl sweep` without --vmap"
            )
        return total, means

    def score_all(self, cvs, jds, seeker_ids, iteration: int, on_nonfinite: str = "stop"):
        """(total [B] float32 or None when skipped, {term name: mean value}, spans or None).

        spans: per JD, the weighted ``(char_end, value)`` pairs of every span term, or None
        when no term returned `Spans`. A term's mean is over JDs of its per-JD sum.
        """
        n = len(jds)
        total = np.zeros(n, np.float64)
        means: dict[str, float] = {}
        spans: list[list[tuple[int, float]]] | None = None
        for t in self.terms:
            where = f"reward {t.name} at PPO iteration {iteration}"
            try:
                out = self.fns[t.name](list(cvs), list(jds), np.asarray(seeker_ids))
            except Exception as exc:
                raise RewardFunctionError(
                    f"{where} raised {type(exc).__name__}: {exc}".splitlines()[0]
                ) from None
            if isinstance(out, Spans):
                rows = _check_spans(out, jds, where)
                sums = np.array([sum(v for _, v in r) for r in rows], np.float64)
                if not np.isfinite(sums).all():
                    if on_nonfinite == "skip":
                        return None, {}, None
                    raise NumericsError(
                        f"{where} returned non-finite span value(s); the update was refused "
                        "(ppo.on_nonfinite=skip skips such iterations)"
                    )
                spans = spans or [[] for _ in range(n)]
                for acc, r in zip(spans, rows):
                    acc.extend((e, t.weight * v) for e, v in r)
                means[f"reward_{t.name}"] = float(sums.mean()) if n else 0.0
                continue
            try:
                arr = np.asarray(out, dtype=np.float64)
            except (TypeError, ValueError):
                raise RewardFunctionError(
                    f"{where} returned {type(out).__name__}, not an array of {n} floats"
                ) from None
            if arr.shape != (n,):
                raise RewardFunctionError(
                    f"{where} returned shape {arr.shape}, expected ({n},): one reward per JD"
                )
            if not np.isfinite(arr).all():
                bad = int((~np.isfinite(arr)).sum())
                if on_nonfinite == "skip":
                    return None, {}, None
                raise NumericsError(
                    f"{where} returned {bad} non-finite value(s); the update was refused "
                    "(ppo.on_nonfinite=skip skips such iterations)"
                )
            means[f"reward_{t.name}"] = float(arr.mean())
            total += t.weight * arr
        return total.astype(np.float32), means, spans


def _check_spans(out: Spans, jds, where: str) -> list[list[tuple[int, float]]]:
    """The rows of a `Spans` result as (int, float) pairs; RewardFunctionError naming the JD."""
    if len(out) != len(jds):
        raise RewardFunctionError(
            f"{where} returned Spans for {len(out)} JDs, expected {len(jds)}: one list per JD"
        )
    rows = []
    for i, (row, jd) in enumerate(zip(out, jds)):
        try:
            pairs = [(int(e), float(v)) for e, v in row]
        except (TypeError, ValueError):
            raise RewardFunctionError(
                f"{where}: Spans row {i} is not a list of (char_end, value) pairs"
            ) from None
        bad = [e for e, _ in pairs if not 1 <= e <= len(jd)]
        if bad:
            raise RewardFunctionError(
                f"{where}: Spans row {i} has char_end {bad[0]} outside [1, {len(jd)}] "
                "(the JD's length)"
            )
        rows.append(pairs)
    return rows


def token_char_ends(tokenizer, tokens_BxT, mask_BxT) -> np.ndarray:
    """[B, T] int: characters of the decoded response after each token (the decoded text of
    tokens 0..t; masked and special tokens add none). Exact for any tokenizer: every prefix is
    decoded (one Rust batch call per row), then made non-decreasing (a prefix that ends inside
    a multi-byte character may decode one replacement character long)."""
    tokens_BxT, mask_BxT = np.asarray(tokens_BxT), np.asarray(mask_BxT).astype(bool)
    ends = np.zeros(tokens_BxT.shape, np.int64)
    for b, (row, m) in enumerate(zip(tokens_BxT, mask_BxT)):
        valid = row[m]
        if not len(valid):
            continue
        lengths = [
            len(t) for t in tokenizer.decode_batch([valid[: k + 1] for k in range(len(valid))])
        ]
        lengths = np.maximum.accumulate(np.asarray(lengths, np.int64))
        pos = np.flatnonzero(m)
        ends[b, pos] = lengths
        # masked positions after the response keep its full length
        ends[b] = np.maximum.accumulate(ends[b])
    return ends


def place_spans(rows, ends_BxT, mask_BxT) -> tuple[np.ndarray, np.ndarray]:
    """(values_BxT, step_mask_BxT) float32: each ``(char_end, value)`` on the first valid token
    whose decoded prefix reaches char_end (the token holding character char_end - 1); values on
    one token add up. Spans past the response's text land on its last valid token."""
    mask_BxT = np.asarray(mask_BxT).astype(bool)
    values = np.zeros(mask_BxT.shape, np.float32)
    steps = np.zeros(mask_BxT.shape, np.float32)
    for b, row in enumerate(rows):
        pos = np.flatnonzero(mask_BxT[b])
        if not len(pos) or not row:
            continue
        e = ends_BxT[b, pos]
        for char_end, v in row:
            t = pos[min(int(np.searchsorted(e, char_end, side="left")), len(pos) - 1)]
            values[b, t] += v
            steps[b, t] = 1.0
    return values, steps
