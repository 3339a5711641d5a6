"""Reward over-optimisation as in Gao, Schulman & Hilton (2022), "Scaling Laws for Reward Model
Overoptimization": proxy (RM) and true (oracle) reward against the distance from the start policy.

The distance is d = sqrt(KL(policy || SFT)), KL in nats per sequence (summed over tokens). Rewards
are taken relative to the start, R(d) - R(0), and fitted with the paper's functional forms:

    RL:        R(d) = d (alpha - beta log d)    peaks at d* = exp(alpha / beta - 1)
    best-of-n: R(d) = d (alpha - beta d)        peaks at d* = alpha / (2 beta)

Both are linear in (alpha, beta) for fixed d, so the fits are ordinary least squares. beta <= 0
means the fitted curve never turns down (no peak). For best-of-n sampling the KL is analytic:
KL(BoN_n || base) = log n - (n - 1) / n (`bon_kl`).

Curves come from a PPO stage's metrics.jsonl (`curve_from_metrics`): one point per evaluated
iteration, the greedy-eval proxy reward (`eval_proxy_reward`) and oracle match rate
(`eval_true_match_rate`, absent for user data, which has no oracle), at the rollout KL (`kl`,
per sequence). Iteration t's `kl` is measured on rollouts sampled *before* its update, while its
eval scores the policy *after* it; that policy is the one the next iteration samples from, so by
default a point takes the KL of the next logged rollout (`kl_at="next"`; the last iteration has
none and keeps its own, one update behind). `kl_at="same"` pairs each eval with its own row's
KL. The start row (step 0) is the SFT policy itself: d = 0. `plot` draws one or many curves;
`summary` gives the fits and the peak.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np

from girl_jax import atomic

KINDS = ("rl", "bon")


# ---------------------------------------------------------------- curves


def _num(v) -> float:
    """A logged value as a float; missing / non-numeric ("nan" strings, None) -> NaN."""
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def curve_from_metrics(rows: Iterable[Mapping], *, kl_at: str = "next") -> dict:
    """Per evaluated iteration: d = sqrt(rollout KL), eval proxy reward, eval true match rate.

    Returns dict(d, proxy, true, iteration) of equal-length numpy arrays sorted by iteration
    (true is all-NaN when the run has no oracle). The start row (step 0) has d = 0. kl_at:
    "next" (the KL of the first later rollout, i.e. of the evaluated policy; the row's own when
    there is none) or "same" (the row's own). A point without a finite KL is dropped; a KL
    estimate below 0 (k1 can dip under) counts as 0.
    """
    if kl_at not in ("next", "same"):
        raise ValueError(f"kl_at must be 'next' or 'same', got {kl_at!r}")
    by_step: dict[int, Mapping] = {}
    kl_by_step: dict[int, float] = {}
    for row in rows:
        step = int(row.get("step", 0))
        if "eval_proxy_reward" in row or "eval_true_match_rate" in row:
            by_step[step] = row  # a resumed log: the last line wins
        kl = _num(row.get("kl"))
        if math.isfinite(kl):
            kl_by_step[step] = kl
        else:
            kl_by_step.pop(step, None)
    kl_steps = sorted(kl_by_step)
    d, proxy, true, iteration = [], [], [], []
    for step in sorted(by_step):
        row = by_step[step]
        if step == 0:
            dist = 0.0
        else:
            later = [s for s in kl_steps if s > step] if kl_at == "next" else []
            kl = kl_by_step[later[0]] if later else kl_by_step.get(step, float("nan"))
            if not math.isfinite(kl):
                continue
            dist = math.sqrt(max(kl, 0.0))
        d.append(dist)
        proxy.append(_num(row.get("eval_proxy_reward")))
        true.append(_num(row.get("eval_true_match_rate")))
        iteration.append(step)
    return dict(
        d=np.asarray(d, np.float64),
        proxy=np.asarray(proxy, np.float64),
        true=np.asarray(true, np.float64),
        iteration=np.asarray(iteration, np.int64),
    )


def relative(curve: Mapping, key: str) -> np.ndarray:
    """R(d) - R(0) for `key` ("proxy" or "true"); all NaN when the curve has no start point."""
    r = np.asarray(curve[key], np.float64)
    start = np.flatnonzero(np.asarray(curve["iteration"]) == 0)
    if not len(start):
        start = np.flatnonzero(np.asarray(curve["d"]) == 0)
    if not len(start):
        return np.full_like(r, np.nan)
    return r - r[start[0]]


def has(curve: Mapping, key: str) -> bool:
    """Whether the curve has any finite value for `key`."""
    return bool(np.isfinite(np.asarray(curve[key], np.float64)).any())


def mean_curve(curves: Iterable[Mapping]) -> dict:
    """Average curves of the same schedule (e.g. seeds of one setting) iteration by iteration.

    Only iterations present in every curve are kept; d, proxy and true are means (NaN-aware: a
    value missing in one seed is averaged over the others).
    """
    curves = list(curves)
    if not curves:
        return curve_from_metrics([])
    common = set(curves[0]["iteration"].tolist())
    for c in curves[1:]:
        common &= set(c["iteration"].tolist())
    its = np.asarray(sorted(common), np.int64)
    out = {"iteration": its}
    for key in ("d", "proxy", "true"):
        stack = []
        for c in curves:
            pos = {int(i): j for j, i in enumerate(c["iteration"].tolist())}
            stack.append([c[key][pos[int(i)]] for i in its])
        arr = np.asarray(stack, np.float64).reshape(len(curves), len(its))
        with np.errstate(all="ignore"):
            finite = np.isfinite(arr)
            total = np.where(finite, arr, 0.0).sum(0)
            count = finite.sum(0)
            out[key] = np.where(count > 0, total / np.maximum(count, 1), np.nan)
    return out


# ---------------------------------------------------------------- fits


def _usable(d, r, *, positive: bool):
    d = np.asarray(d, np.float64).ravel()
    r = np.asarray(r, np.float64).ravel()
    ok = np.isfinite(d) & np.isfinite(r) & (d > 0 if positive else d >= 0)
    return d[ok], r[ok]


def _lstsq(columns, r) -> tuple[float, float]:
    a = np.stack(columns, axis=1)
    if a.shape[0] < 2 or np.linalg.matrix_rank(a) < 2:
        return float("nan"), float("nan")
    (alpha, beta), *_ = np.linalg.lstsq(a, r, rcond=None)
    return float(alpha), float(beta)


def fit_rl(d, r) -> tuple[float, float]:
    """(alpha, beta) of R(d) = d (alpha - beta log d) by least squares over points with d > 0.

    NaN, NaN when fewer than two distinct usable points.
    """
    d, r = _usable(d, r, positive=True)
    return _lstsq([d, -d * np.log(d)], r)


def fit_bon(d, r) -> tuple[float, float]:
    """(alpha, beta) of R(d) = d (alpha - beta d) by least squares (d = 0 carries no information).

    NaN, NaN when fewer than two distinct usable points.
    """
    d, r = _usable(d, r, positive=True)
    return _lstsq([d, -d * d], r)


def predict(kind: str, alpha: float, beta: float, d) -> np.ndarray:
    """The fitted curve R(d) (R(0) = 0)."""
    d = np.asarray(d, np.float64)
    if kind == "rl":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(d > 0, d * (alpha - beta * np.log(np.where(d > 0, d, 1.0))), 0.0)
    if kind == "bon":
        return d * (alpha - beta * d)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def peak_d(kind: str, alpha: float, beta: float) -> float | None:
    """The d at which the fitted curve is highest over d >= 0; None when it has no peak (beta <= 0).

    RL: exp(alpha / beta - 1). Best-of-n: alpha / (2 beta), or 0 when alpha <= 0 (the curve only
    falls). None also for NaN parameters (no fit).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not (math.isfinite(alpha) and math.isfinite(beta)) or beta <= 0:
        return None
    if kind == "rl":
        try:
            return math.exp(alpha / beta - 1.0)
        except OverflowError:
            return math.inf
    return max(alpha / (2.0 * beta), 0.0)


def bon_kl(n):
    """KL(best-of-n || base policy) = log n - (n - 1) / n, in nats (n >= 1; scalar or array)."""
    n = np.asarray(n, np.float64)
    out = np.log(n) - (n - 1.0) / n
    return float(out) if out.ndim == 0 else out


# ---------------------------------------------------------------- summary


def _fit_entry(curve: Mapping, key: str) -> dict | None:
    if not has(curve, key):
        return None
    alpha, beta = fit_rl(curve["d"], relative(curve, key))
    ok = math.isfinite(alpha) and math.isfinite(beta)
    return {"alpha": alpha if ok else None, "beta": beta if ok else None}


def summary(curve: Mapping) -> dict:
    """RL-form fits of proxy and true reward (relative to the start) and where the true one peaks.

    Keys: points, d_max, proxy / true ({"alpha", "beta"} with None when there are too few
    points; the key is None when the run logged no such reward), true_peak_d (None: the fit
    never turns down), true_peak_within_run (d* <= the largest d reached), true_peak_iteration
    (the evaluated iteration whose d is nearest d*, None when there is no peak).
    """
    d = np.asarray(curve["d"], np.float64)
    out = {
        "points": int(len(d)),
        "d_max": float(np.nanmax(d)) if len(d) else None,
        "proxy": _fit_entry(curve, "proxy"),
        "true": _fit_entry(curve, "true"),
        "true_peak_d": None,
        "true_peak_within_run": False,
        "true_peak_iteration": None,
    }
    fit = out["true"]
    if fit and fit["alpha"] is not None:
        peak = peak_d("rl", fit["alpha"], fit["beta"])
        if peak is not None and math.isfinite(peak):
            out["true_peak_d"] = peak
            out["true_peak_within_run"] = bool(len(d) and peak <= np.nanmax(d))
            out["true_peak_iteration"] = int(curve["iteration"][int(np.nanargmin(abs(d - peak)))])
    return out


def summary_cells(s: Mapping) -> dict[str, str]:
    """Printable cells of a summary: proxy / true alpha, beta and the true-reward peak."""

    def f(x):
        return "n/a" if x is None else f"{x:.4g}"

    proxy, true = s.get("proxy") or {}, s.get("true") or {}
    if s.get("true") is None:
        peak = "n/a (no oracle)"
    elif true.get("alpha") is None:
        peak = "n/a (too few eval points)"
    elif s.get("true_peak_d") is None or not s.get("true_peak_within_run"):
        peak = "no peak within the run"
        if s.get("true_peak_d") is not None:
            peak += f" (fit peaks at d={s['true_peak_d']:.3g})"
    else:
        peak = f"d={s['true_peak_d']:.3g} (iteration {s['true_peak_iteration']})"
    return {
        "proxy_alpha": f(proxy.get("alpha")),
        "proxy_beta": f(proxy.get("beta")),
        "true_alpha": f(true.get("alpha")),
        "true_beta": f(true.get("beta")),
        "true_peak": peak,
    }


def summary_table(s: Mapping) -> str:
    """A short markdown table of `summary(curve)`."""
    c = summary_cells(s)
    return "\n".join(
        [
            "| reward (relative to start) | alpha | beta |",
            "|---|---|---|",
            f"| proxy (RM) | {c['proxy_alpha']} | {c['proxy_beta']} |",
            f"| true (oracle match rate) | {c['true_alpha']} | {c['true_beta']} |",
            "",
            f"Fit R(d) = d (alpha - beta log d), d = sqrt(KL(policy||SFT)) over "
            f"{s.get('points', 0)} eval points. True reward peaks at: {c['true_peak']}.",
        ]
    )


# ---------------------------------------------------------------- plot


def savefig_atomic(fig, path: str, dpi: int = 100) -> str:
    """fig.savefig to a temp file in the same directory, then rename: never a half-written PNG."""
    with atomic.atomic_open(path, "wb") as f:
        fig.savefig(f, dpi=dpi, format="png")
    return path


def plot(curves: Mapping[str, Mapping], path: str, title: str = "reward over-optimisation") -> str:
    """Proxy (left, dashed) and true (right, solid) reward minus the start vs d, one colour a run.

    Each run's fitted RL form is drawn thin (dotted) over its own range of d, and the fitted peak
    d of the true reward is marked (a star and a vertical dotted line) when it lies within 1.5x
    the largest d of the plot.
    Runs without an oracle only get the proxy panel's curve. Written atomically; returns path.
    """
    import matplotlib  # heavy: matplotlib, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib, only when plotting

    fig, axes = plt.subplots(1, 2, figsize=(11.5, 4.3), sharex=True)
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")
    d_max = max((float(np.nanmax(c["d"])) for c in curves.values() if len(c["d"])), default=0.0)
    for i, (label, curve) in enumerate(curves.items()):
        color = cmap(i % cmap.N)
        d = np.asarray(curve["d"], np.float64)
        if not len(d):
            continue
        grid = np.linspace(0.0, max(float(np.nanmax(d)), 1e-6) * 1.05, 200)  # no extrapolation
        order = np.argsort(d, kind="stable")
        for ax, key, style in ((axes[0], "proxy", "--"), (axes[1], "true", "-")):
            if not has(curve, key):
                continue
            r = relative(curve, key)
            ax.plot(d[order], r[order], style, marker="o", ms=3.5, color=color, label=label)
            alpha, beta = fit_rl(d, r)
            if not (math.isfinite(alpha) and math.isfinite(beta)):
                continue
            ax.plot(grid, predict("rl", alpha, beta, grid), ":", lw=1.0, color=color, alpha=0.8)
            peak = peak_d("rl", alpha, beta) if key == "true" else None
            if peak is not None and peak <= 1.5 * max(d_max, 1e-6):
                ax.axvline(peak, color=color, ls=(0, (1, 3)), lw=1.0)
                ax.plot([peak], predict("rl", alpha, beta, [peak]), "*", ms=10, color=color)
    axes[0].set_title("proxy (reward model) reward")
    axes[0].set_ylabel("R(d) - R(0)")
    axes[1].set_title("true reward (oracle match rate)")
    for ax in axes:
        ax.axhline(0.0, color="k", lw=0.6)
        ax.set_xlabel("d = sqrt(KL(policy || SFT))  [sqrt nats]")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="best")
    if not any(has(c, "true") for c in curves.values()):
        axes[1].text(0.5, 0.5, "no oracle", ha="center", va="center", transform=axes[1].transAxes)
    fig.suptitle(f"{title}\npoints: eval; dotted: fit d (alpha - beta log d); *: true-reward peak")
    fig.tight_layout()
    try:
        return savefig_atomic(fig, path)
    finally:
        plt.close(fig)
