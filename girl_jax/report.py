"""results.json and report.md from a workdir, with PNG plots (training curves, PPO, ROC)."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from girl_jax import atomic, overopt
from girl_jax.checkpoint import write_json_atomic
from girl_jax.metrics import read_metrics


def _load(path):
    return json.load(open(path)) if os.path.isfile(path) else {}


def build_results(workdir: str) -> dict:
    data = _load(os.path.join(workdir, "data", "final.json"))
    sft = _load(os.path.join(workdir, "sft", "eval.json"))
    rm = _load(os.path.join(workdir, "reward", "eval.json"))
    ppo = _load(os.path.join(workdir, "ppo", "eval.json"))
    rec = _load(os.path.join(workdir, "recommend", "eval.json"))
    gen = _load(os.path.join(workdir, "generated", "final.json"))
    res = {
        "market": data.get("market", {}),
        "sft": {k: sft.get(k) for k in ("eval_loss", "true_match_rate", "parse_rate")},
        "reward": {k: rm.get(k) for k in ("auc", "accuracy", "logloss")},
        "ppo": {
            k: ppo.get(k)
            for k in (
                "proxy_reward_start",
                "proxy_reward_end",
                "true_match_rate_start",
                "true_match_rate_end",
                "kl_end",
                "reward",
                "gold_reward",
            )
        },
        "recommender": rec.get("test", {}),
        "recommender_cold_start": rec.get("cold_start", {}),
        "timings_s": _load(os.path.join(workdir, "timings.json")),
    }
    res["reward"].update({k: rm[k] for k in ("ece", "oracle_spearman_generated") if k in rm})
    res["sft"]["eval_perplexity"] = sft.get("eval_perplexity")
    res["ppo"].update({k: ppo[k] for k in ("parse_rate_start", "parse_rate_end") if k in ppo})
    res["generated"] = {k: v for k, v in gen.items() if k.startswith("true_match")}
    return res


def _generated_rows(gen: dict) -> list[str]:
    """True match over all seekers, SFT -> PPO, as decoded and (when it differs) greedy."""
    rows = []
    for suffix, how in (("", "as decoded"), ("_greedy", "greedy policy")):
        sft, ppo = gen.get(f"true_match_sft{suffix}"), gen.get(f"true_match_ppo{suffix}")
        if sft is not None and ppo is not None:
            rows.append(
                f"| true match, all seekers, SFT -> PPO ({how}) | {_fmt(sft)} -> {_fmt(ppo)} "
                f"({ppo - sft:+.4f}) |"
            )
    return rows


def _fmt(x, nd=4):
    return "n/a" if x is None else f"{x:.{nd}f}"


def results_table(rec: dict) -> str:
    """The paper-style table: rows Base / GIRL-SFT / GIRL, AUC and LogLoss per predictor.

    With several seeds a cell reads `mean ± std`; other rows add the change vs Base's mean.
    """
    preds = sorted({p for row in rec.values() for p in row})
    head = "| feature set | " + " | ".join(f"{p.upper()} AUC | {p.upper()} LogLoss" for p in preds)
    lines = [head + " |", "|---" * (1 + 2 * len(preds)) + "|"]
    base = rec.get("Base", {})
    for feat in ("Base", "GIRL-SFT", "GIRL"):
        if feat not in rec:
            continue
        cells = []
        for p in preds:
            c = rec[feat].get(p, {})
            auc, ll = c.get("auc"), c.get("logloss")
            b = base.get(p, {})
            cell_auc, cell_ll = _fmt(auc), _fmt(ll)
            if "auc_std" in c:
                cell_auc += f" ± {c['auc_std']:.4f}"
            if "logloss_std" in c:
                cell_ll += f" ± {c['logloss_std']:.4f}"
            if feat != "Base" and auc is not None and b.get("auc"):
                cell_auc += f" ({(auc / b['auc'] - 1) * 100:+.1f}%)"
                cell_ll += f" ({(ll / b['logloss'] - 1) * 100:+.1f}%)"
            cells += [cell_auc, cell_ll]
        lines.append(f"| {feat} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overoptimisation(ppo_dir: str) -> tuple[dict, dict] | None:
    """(curve, summary) of girl_jax.overopt for a PPO stage dir; None without eval points."""
    curve = overopt.curve_from_metrics(read_metrics(ppo_dir))
    if not len(curve["d"]):
        return None
    return curve, overopt.summary(curve)


def plot_ppo(ppo_dir: str) -> str | None:
    """Proxy (RM) reward vs true match rate over PPO iterations: over-optimisation made visible.

    Writes ppo/proxy_vs_true.png (returned) and ppo/overoptimisation.png: both rewards minus the
    start against d = sqrt(KL(policy||SFT)) with the Gao et al. (2022) fits (girl_jax.overopt).
    """
    import matplotlib  # heavy: matplotlib, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib, only when plotting

    hist = read_metrics(ppo_dir)
    over = overoptimisation(ppo_dir)
    if over is not None:
        overopt.plot(
            {"PPO": over[0]},
            os.path.join(ppo_dir, "overoptimisation.png"),
            title="PPO: reward over-optimisation (Gao et al. 2022)",
        )
    roll = [h for h in hist if "proxy_reward" in h]
    evals = [h for h in hist if "eval_true_match_rate" in h]
    if not roll:
        return None
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    ax[0].plot(
        [h["step"] for h in roll], [h["proxy_reward"] for h in roll], label="RM score (rollouts)"
    )
    if evals:
        ax[0].plot(
            [h["step"] for h in evals],
            [h["eval_proxy_reward"] for h in evals],
            "o-",
            label="RM score (eval, greedy)",
        )
    ax[0].set_xlabel("PPO iteration")
    ax[0].set_ylabel("proxy reward")
    twin = ax[0].twinx()
    if any("rollout_true_match_rate" in h for h in roll):
        twin.plot(
            [h["step"] for h in roll],
            [h.get("rollout_true_match_rate") for h in roll],
            color="tab:green",
            alpha=0.5,
            label="true match (rollouts)",
        )
    if evals:
        twin.plot(
            [h["step"] for h in evals],
            [h["eval_true_match_rate"] for h in evals],
            "s-",
            color="tab:red",
            label="true match (eval, greedy)",
        )
    twin.set_ylabel("true match rate (oracle)")
    ax[0].legend(loc="upper left", fontsize=8)
    twin.legend(loc="lower right", fontsize=8)
    ax[0].set_title("proxy vs true reward")
    ax[1].plot([h["step"] for h in roll], [h["kl"] for h in roll], label="KL(policy||SFT)")
    ax[1].plot([h["step"] for h in roll], [h["kl_coef"] * 100 for h in roll], label="beta x 100")
    ax[1].set_xlabel("PPO iteration")
    ax[1].legend(fontsize=8)
    ax[1].set_title("KL")
    fig.tight_layout()
    path = os.path.join(ppo_dir, "proxy_vs_true.png")
    try:
        return overopt.savefig_atomic(fig, path)
    finally:
        plt.close(fig)


def plot_training(workdir: str) -> str | None:
    import matplotlib  # heavy: matplotlib, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib, only when plotting

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for i, (stage, key, evkey) in enumerate(
        (("sft", "loss", "eval_loss"), ("reward", "loss", "eval_auc"))
    ):
        hist = read_metrics(os.path.join(workdir, stage))
        tr = [h for h in hist if key in h]
        ev = [h for h in hist if evkey in h]
        if tr:
            ax[i].plot([h["step"] for h in tr], [h[key] for h in tr], label=f"train {key}")
        if ev:
            ax[i].plot([h["step"] for h in ev], [h[evkey] for h in ev], "o-", label=evkey)
        ax[i].set_title(stage)
        ax[i].set_xlabel("step")
        ax[i].legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, "training_curves.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_roc(workdir: str) -> str | None:
    import matplotlib  # heavy: matplotlib, only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # heavy: matplotlib, only when plotting

    rec_dir = os.path.join(workdir, "recommend")
    inter = os.path.join(workdir, "data", "interactions.parquet")
    if not os.path.isdir(rec_dir) or not os.path.isfile(inter):
        return None
    df = pd.read_parquet(inter)
    labels = df[df["split"] == "test"]["label"].to_numpy()
    runs = sorted(
        d
        for d in os.listdir(rec_dir)
        if os.path.isfile(os.path.join(rec_dir, d, "test_logits.npy"))
    )
    if not runs:
        return None
    preds = sorted({r.split("_")[1] for r in runs})
    fig, axes = plt.subplots(1, len(preds), figsize=(5.5 * len(preds), 4.5), squeeze=False)
    for ax, pred in zip(axes[0], preds):
        for r in runs:
            feat, p, seed = r.rsplit("_", 2)
            if p != pred:
                continue
            logits = np.load(os.path.join(rec_dir, r, "test_logits.npy"))
            if len(logits) != len(labels):
                continue
            fpr, tpr, _ = roc_curve(labels, logits)
            ax.plot(fpr, tpr, label=f"{feat} ({seed})")
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        ax.set_title(f"ROC, test, {pred.upper()} predictor")
        ax.set_xlabel("false positive rate")
        ax.set_ylabel("true positive rate")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path = os.path.join(workdir, "roc_test.png")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def render(workdir: str) -> str:
    """Write report.md (and the PNGs) from whatever the workdir holds."""
    res = build_results(workdir)
    results_path = os.path.join(workdir, "results.json")
    if not os.path.isfile(results_path) and res["recommender"]:
        write_json_atomic(results_path, res)
    ppo_dir = os.path.join(workdir, "ppo")
    pngs = [plot_training(workdir), plot_ppo(ppo_dir), plot_roc(workdir)]
    over = overoptimisation(ppo_dir)
    if over is not None and os.path.isfile(os.path.join(ppo_dir, "overoptimisation.png")):
        pngs.append(os.path.join(ppo_dir, "overoptimisation.png"))
    m, s, r, p = res["market"], res["sft"], res["reward"], res["ppo"]
    out = ["# GIRL results", ""]
    cfg = _load(os.path.join(workdir, "config.json"))
    if cfg:
        out += [f"Config: `{cfg.get('name', '?')}`, workdir `{workdir}`.", ""]
    if m:
        out += [
            f"Market: {m.get('seekers')} seekers, {m.get('jobs')} jobs, "
            f"{m.get('interactions')} interactions, positive rate "
            f"{_fmt(m.get('positive_rate'), 3)}.",
            "",
        ]
    if res["recommender"]:
        out += ["## Recommender (test split)", "", results_table(res["recommender"]), ""]
    if res["recommender_cold_start"]:
        out += [
            "## Recommender (cold-start seekers)",
            "",
            results_table(res["recommender_cold_start"]),
            "",
        ]
    out += [
        "## Generator and reward model",
        "",
        "| | value |",
        "|---|---|",
        f"| SFT eval loss | {_fmt(s.get('eval_loss'))} |",
        f"| SFT true match rate (greedy, validation CVs) | {_fmt(s.get('true_match_rate'))} |",
        f"| SFT parse rate | {_fmt(s.get('parse_rate'))} |",
        f"| RM AUC / accuracy / LogLoss (validation) | {_fmt(r.get('auc'))} / "
        f"{_fmt(r.get('accuracy'))} / {_fmt(r.get('logloss'))} |",
        f"| RM vs oracle Spearman on generated JDs | {_fmt(r.get('oracle_spearman_generated'))} |",
        f"| PPO proxy reward start -> end | {_fmt(p.get('proxy_reward_start'))} -> "
        f"{_fmt(p.get('proxy_reward_end'))} |",
        f"| PPO true match rate start -> end | {_fmt(p.get('true_match_rate_start'))} -> "
        f"{_fmt(p.get('true_match_rate_end'))} |",
        *_generated_rows(res["generated"]),
        f"| PPO final KL | {_fmt(p.get('kl_end'))} |",
        f"| PPO reward | `{p.get('reward') or 'model'}` |",
        "",
    ]
    if p.get("gold_reward"):
        out[-1:-1] = [
            "",
            "**Gold-reward run**: PPO was trained on the market's recruiter oracle "
            "(`ppo.reward` has an `oracle` term), the same function that measures the true match "
            "rate. Its GIRL row shows what a perfect reward model would give; it is not a "
            "result of learning from recruiter feedback.",
        ]
    if over is not None:
        out += [
            "## PPO reward over-optimisation",
            "",
            "Proxy and true reward gains vs d = sqrt(KL(policy||SFT)), fitted with "
            "Gao et al. (2022)'s RL form (`ppo/overoptimisation.png`).",
            "",
            overopt.summary_table(over[1]),
            "",
        ]
    gen_path = os.path.join(workdir, "generated", "generated.parquet")
    if os.path.isfile(gen_path):
        g = pd.read_parquet(gen_path).head(3)
        out += ["## Generated JDs", ""]
        for _, row in g.iterrows():
            out += [
                f"**CV** (seeker {row['seeker_id']}): {row['cv']}",
                "",
                f"- SFT: {row.get('jd_sft', '')}",
                f"- GIRL (PPO): {row.get('jd_ppo', '')}",
                "",
            ]
    if res["timings_s"]:
        out += [
            "## Timings (s)",
            "",
            " | ".join(f"{k} {v:.0f}" for k, v in res["timings_s"].items()),
            "",
        ]
    for png in pngs:
        if png:
            out += [f"![{os.path.basename(png)}]({os.path.relpath(png, workdir)})", ""]
    path = os.path.join(workdir, "report.md")
    atomic.write_text(path, "\n".join(out))
    return path
