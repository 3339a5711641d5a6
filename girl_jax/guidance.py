"""`girl generate`: career guidance for one CV — generated JDs and the closest real jobs.

The generator is the final PPO actor (or SFT model); real jobs are ranked by cosine similarity
between the generated JD and each job's JD, both embedded by the generator's trunk (mean-pooled
final hidden states). For a market seeker (`--seeker-id`) each line also shows the oracle's
acceptance probability.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from girl_jax.errors import CheckpointError, DataError


def _read_cv(path: str) -> str:
    if path == "-":
        text = sys.stdin.read()
        where = "stdin"
    else:
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such CV file")
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
        where = path
    if not text.strip():
        raise DataError(f"{where}: the CV is empty")
    return " ".join(text.split())


def load_workdir_config(workdir: str, spec: str | None, overrides):
    import ml_collections

    from girl_jax.configuration import load_config

    if spec:
        return load_config(spec, overrides)
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{workdir} has no config.json: is it a girl workdir? (pass --config too)"
        )
    return ml_collections.ConfigDict(json.load(open(path)))


def embed_texts(graphdef, params, tok, texts, max_len: int = 128, batch: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised final hidden states of the decoder trunk."""
    from flax import nnx

    @jax.jit
    def fwd(params, ids, mask):
        _, aux = nnx.merge(graphdef, params)(ids, mask)
        h = aux["hidden"].astype(jnp.float32)
        m = mask[..., None].astype(jnp.float32)
        v = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
        return v / jnp.maximum(jnp.linalg.norm(v, axis=-1, keepdims=True), 1e-6)

    rows = tok.encode_batch(list(texts))
    out = []
    for b in range(0, len(rows), batch):
        chunk = rows[b : b + batch]
        ids = np.full((batch, max_len), tok.pad_id, np.int32)
        mask = np.zeros((batch, max_len), np.int32)
        for i, r in enumerate(chunk):
            r = r[:max_len] or [tok.eos_id]
            ids[i, : len(r)], mask[i, : len(r)] = r, 1
        out.append(np.asarray(fwd(params, ids, mask))[: len(chunk)])
    return np.concatenate(out)


def main(args, overrides) -> None:
    from girl_jax.data import prepare
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.parallel import rules as rules_mod
    from girl_jax.stages import common, ppo, sft
    from girl_jax.stages.generation import Generator

    workdir = os.path.abspath(args.workdir)
    cv = _read_cv(args.cv)
    config = load_workdir_config(workdir, args.config, overrides)
    if not os.path.isfile(os.path.join(workdir, args.generator, "final.json")):
        raise CheckpointError(
            f"{workdir} has no trained {args.generator} generator "
            f"({args.generator}/final.json missing): run `girl run` (or `girl {args.generator}`) "
            "first, or pass --generator sft"
        )
    data = prepare.load(workdir)
    tok = data.tokenizer
    if args.generator == "ppo":
        mesh = mesh_mod.make_mesh(config.mesh)
        rules = rules_mod.normalize_rules(config.logical_axis_rules)
        graphdef, params = ppo.load_final_actor(workdir, config, data, mesh, rules)
    else:
        graphdef, params = sft.load_final_params(workdir, config, tok.vocab_size)
    n = max(1, args.num)
    gen_greedy = Generator.from_config(
        graphdef,
        params,
        tok,
        config,
        greedy=True,
        batch_size=1,
    )
    texts = gen_greedy.generate([cv], jax.random.key(0))
    best_of = int(getattr(args, "best_of", 0) or 0)
    if best_of > 0:  # the reward model's favourite of `best_of` samples replaces greedy
        from girl_jax.stages.generation import best_of_n, reward_scorer

        sampler = Generator.from_config(
            graphdef,
            params,
            tok,
            config,
            greedy=False,
            temperature=config.generate.get("best_of_temperature", 0.7),
            batch_size=1,
        )
        texts, _, _ = best_of_n(
            sampler,
            reward_scorer(workdir, config, tok),
            [cv],
            best_of,
            common.fold_rng(config.seed, "guidance-bon", 0),
        )
    if n > 1:
        gen = Generator.from_config(
            graphdef,
            params,
            tok,
            config,
            greedy=False,
            temperature=config.ppo.temperature,
            batch_size=n - 1,
        )
        texts += gen.generate([cv] * (n - 1), common.fold_rng(config.seed, "guidance", 0))
    jobs = data.interactions.drop_duplicates("job_id")[["job_id", "jd"]].reset_index(drop=True)
    job_emb = embed_texts(graphdef, params, tok, jobs["jd"])
    gen_emb = embed_texts(graphdef, params, tok, texts)
    sims = gen_emb @ job_emb.T
    market = data.market if args.seeker_id is not None else None
    for k, text in enumerate(texts):
        kind = (
            ("greedy" if not best_of else f"best of {best_of} by the RM")
            if k == 0
            else (f"sample {k}")
        )
        line = f"\n=== generated JD {k + 1} ({kind})"
        if market is not None:
            line += f", oracle match {market.true_match([args.seeker_id], [text])[0]:.3f}"
        print(line + " ===\n" + text)
    best = np.argsort(-sims[0])[: args.jobs]
    print(f"\n=== {len(best)} closest real jobs (cosine to generated JD 1) ===")
    for j in best:
        line = f"[job {jobs['job_id'][j]}] sim {sims[0, j]:.3f}"
        if market is not None:
            p = market.oracle_prob([args.seeker_id], [int(jobs["job_id"][j])])[0]
            line += f", oracle acceptance {p:.3f}"
        print(line + "\n  " + jobs["jd"][j])
