"""Where the room is: the oracle's utility term by term, greedy JDs against the best of K samples.

    python scripts/oracle_headroom.py --workdir W [--actor ppo] [--n 64] [--k 16]

For the first N validation CVs of a finished workdir (embedded market only), writes the greedy
JD of the SFT (or final PPO) generator and K samples at the given temperature, picks each CV's
best sample by the oracle, and prints the mean of every utility term
(`girl_jax.data.market_oracle.utility_terms`: skills, family, seniority, years, degree,
location, salary, company) for greedy and for best-of-K, and the difference: the logits a
better policy could still gain, and in which field. docs/rl.md, "Gold-reward runs".
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from girl_jax.data import market_oracle, market_text, prepare
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.stages import ppo, sft
from girl_jax.stages.generate_cli import load_workdir_config
from girl_jax.stages.generator import Generator


def term_means(market, sids, texts) -> dict[str, float]:
    """Mean utility terms, number of required skills and true match of parseable JDs."""
    parsed = [market_text.parse_jd(t) for t in texts]
    ok = np.array([p is not None and p.valid for p in parsed])
    out = {
        "parse_rate": float(ok.mean()),
        "true_match": float(market.true_match(sids, texts).mean()),
    }
    if not ok.any():
        return out
    fields = market_text.parsed_fields([p for p, g in zip(parsed, ok) if g])
    terms = market_oracle.utility_terms(market.seekers, np.asarray(sids)[ok], fields, market.taste)
    out.update({k: float(np.mean(v)) for k, v in terms.items()})
    out["utility"] = float(sum(np.mean(v) for v in terms.values()))
    out["required_skills"] = float((fields["required"] >= 0).sum(1).mean())
    return out


def headroom(market, sids, greedy, samples) -> tuple[dict, dict]:
    """(greedy term means, best-of-K-by-the-oracle term means); samples: K lists of N texts."""
    probs = np.stack([market.true_match(sids, s) for s in samples])  # K x N
    best = [samples[k][n] for n, k in enumerate(probs.argmax(0))]
    return term_means(market, sids, greedy), term_means(market, sids, best)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--actor", choices=("sft", "ppo"), default="sft")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--temperature", type=float, default=0.7)
    args = ap.parse_args(argv)
    config = load_workdir_config(args.workdir, None, ())
    data = prepare.load(args.workdir)
    if data.market is None:
        raise SystemExit(f"{args.workdir}: not an embedded-market workdir (no oracle)")
    if args.actor == "ppo":
        mesh = mesh_mod.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, devices=jax.devices()[:1])
        graph, params = ppo.load_final_actor(args.workdir, config, data, mesh, None)
    else:
        graph, params = sft.load_final_params(args.workdir, config, data.tokenizer.vocab_size)
    seekers = data.seekers("validation").iloc[: args.n]
    cvs, sids = list(seekers["cv"]), seekers["seeker_id"].to_numpy()
    bs = max(1, min(64, len(cvs)))
    greedy = Generator.from_config(graph, params, data.tokenizer, config, batch_size=bs)
    sampler = Generator.from_config(
        graph,
        params,
        data.tokenizer,
        config,
        greedy=False,
        temperature=args.temperature,
        batch_size=bs,
    )
    g_texts = greedy.generate(cvs, jax.random.key(0))
    samples = [sampler.generate(cvs, jax.random.key(k + 1)) for k in range(args.k)]
    g, b = headroom(data.market, sids, g_texts, samples)
    print(
        f"{args.workdir} ({args.actor}), {len(cvs)} validation CVs, best of {args.k} at "
        f"temperature {args.temperature}"
    )
    print(f"{'term':16s} {'greedy':>8s} {'best':>8s} {'room':>8s}")
    for key in g:
        print(
            f"{key:16s} {g[key]:8.3f} {b.get(key, float('nan')):8.3f} "
            f"{b.get(key, float('nan')) - g[key]:+8.3f}"
        )


if __name__ == "__main__":
    main()
