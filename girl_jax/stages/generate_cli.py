"""`girl generate`: career guidance for one CV — generated JDs and the closest real jobs.

The generator is the final PPO actor (or SFT model); real jobs are ranked by cosine similarity
between the generated JD and each job's JD, both embedded by the generator's trunk (mean-pooled
final hidden states). For a market seeker (`--seeker-id`) each line also shows the oracle's
acceptance probability. `--json` prints the same as one JSON object (`generate_json`): the
JDs with their fields as `girl_jax.data.market_text.parse_jd` reads them, and the closest jobs.
Decoding uses the workdir config's repetition guard (`generate.repetition_penalty`,
`generate.no_repeat_ngram_size`) and copy bias (`generate.encoder_repetition_penalty`) unless
`--repetition-penalty` / `--no-repeat-ngram-size` / `--encoder-repetition-penalty` say.

One name end to end: this command, the pipeline stage (`stages/generate.py`) and the
`Generator` both use (`stages/generator.py`).
"""

from __future__ import annotations

import json
import os
import re
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from girl_jax.configuration import apply_override, load_config
from girl_jax.data import market_taxonomy as tax
from girl_jax.data import prepare
from girl_jax.data.market_text import parse_jd
from girl_jax.errors import CheckpointError, DataError
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.stages import common, ppo, sft
from girl_jax.stages.generator import GUARD_KEYS, Generator, best_of_n
from girl_jax.stages.reward import reward_scorer


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
    if spec:
        return load_config(spec, overrides)
    path = os.path.join(workdir, "config.json")
    if not os.path.isfile(path):
        raise CheckpointError(
            f"{workdir} has no config.json: is it a girl workdir? (pass --config too)"
        )
    config = ml_collections.ConfigDict(json.load(open(path)))
    for item in overrides:  # --config.generate.x=... on top of the saved config
        apply_override(config, item)
    return config


def embed_texts(graphdef, params, tok, texts, max_len: int = 128, batch: int = 64) -> np.ndarray:
    """Mean-pooled, L2-normalised final hidden states of the decoder trunk."""

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


def parsed_fields(text: str) -> dict | None:
    """A JD's fields as `parse_jd` reads them, by name (None: not found); None if nothing parses."""
    p = parse_jd(text)
    if p is None:
        return None

    def name(table, i):
        return table[i] if i >= 0 else None

    return {
        "valid": bool(p.valid),
        "family": name(tax.FAMILIES, p.family),
        "title": name(tax.TITLES, p.title),
        "seniority": name(tax.SENIORITIES, p.seniority),
        "required": [tax.SKILLS[s] for s in p.required],
        "nice": [tax.SKILLS[s] for s in p.nice],
        "company": name(tax.COMPANIES, p.company),
        "city": name(tax.CITIES, p.city),
        "remote": name(tax.REMOTE_POLICIES, p.remote),
        "min_years": p.min_years if p.min_years >= 0 else None,
        "degree_level": name(tax.EDUCATION_LEVELS, p.degree_level),
        "degree_field": name(tax.DEGREE_FIELDS, p.degree_field),
        "salary_lo": p.salary_lo if p.salary_lo >= 0 else None,
        "salary_hi": p.salary_hi if p.salary_hi >= 0 else None,
    }


_SENTENCE_END = re.compile(r"[.!?;|]+(?:\s+|$)")


def repeated_sentences(text: str) -> list[str]:
    """Sentences (split at . ! ? ; |, compared lower-cased) that occur more than once."""
    seen, repeated = set(), []
    for part in _SENTENCE_END.split(text):
        key = " ".join(part.lower().split())
        if not key:
            continue
        if key in seen and key not in repeated:
            repeated.append(key)
        seen.add(key)
    return repeated


def repeated_skills(text: str) -> list[str]:
    """Taxonomy skills the text names more than once ("tutoring, tutoring, ...")."""
    low = " ".join(re.findall(r"[a-z0-9]+", text.lower()))
    return [s for s in tax.SKILLS if len(re.findall(rf"\b{s}\b", low)) > 1]


def load_generator(workdir: str, config, generator: str):
    """(data, graphdef, params) of a workdir's final `generator` ("ppo" or "sft")."""
    if not os.path.isfile(os.path.join(workdir, generator, "final.json")):
        raise CheckpointError(
            f"{workdir} has no trained {generator} generator "
            f"({generator}/final.json missing): run `girl run` (or `girl {generator}`) "
            "first, or pass --generator sft"
        )
    data = prepare.load(workdir)
    if generator == "ppo":
        mesh = mesh_mod.make_mesh(config.mesh)
        rules = rules_mod.normalize_rules(config.logical_axis_rules)
        graphdef, params = ppo.load_final_actor(workdir, config, data, mesh, rules)
    else:
        graphdef, params = sft.load_final_params(workdir, config, data.tokenizer.vocab_size)
    return data, graphdef, params


def main(args, overrides) -> None:
    workdir = os.path.abspath(args.workdir)
    cv = _read_cv(args.cv)
    config = load_workdir_config(workdir, args.config, overrides)
    data, graphdef, params = load_generator(workdir, config, args.generator)
    tok = data.tokenizer
    guard = {key: getattr(args, key, None) for key, _ in GUARD_KEYS}  # None: the config's
    n = max(1, args.num)
    gen_greedy = Generator.from_config(
        graphdef,
        params,
        tok,
        config,
        greedy=True,
        batch_size=1,
        **guard,
    )
    guard = {k: getattr(gen_greedy.cfg, k) for k in guard}  # the values in use
    texts = gen_greedy.generate([cv], jax.random.key(0))
    best_of = int(getattr(args, "best_of", 0) or 0)
    if best_of > 0:  # the reward model's favourite of `best_of` samples replaces greedy
        sampler = Generator.from_config(
            graphdef,
            params,
            tok,
            config,
            greedy=False,
            temperature=config.generate.get("best_of_temperature", 0.7),
            batch_size=1,
            **guard,
        )
        texts, _, _ = best_of_n(
            sampler,
            reward_scorer(workdir, config, tok),
            [cv],
            best_of,
            # "guidance": the command's first module name, kept: other keys, other samples
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
            **guard,
        )
        texts += gen.generate([cv] * (n - 1), common.fold_rng(config.seed, "guidance", 0))
    jobs = data.interactions.drop_duplicates("job_id")[["job_id", "jd"]].reset_index(drop=True)
    job_emb = embed_texts(graphdef, params, tok, jobs["jd"])
    gen_emb = embed_texts(graphdef, params, tok, texts)
    sims = gen_emb @ job_emb.T
    market = data.market if args.seeker_id is not None else None
    best = np.argsort(-sims[0])[: args.jobs]
    jds = []
    for k, text in enumerate(texts):
        kind = (
            ("greedy" if not best_of else f"best of {best_of} by the RM")
            if k == 0
            else (f"sample {k}")
        )
        jd = {"kind": kind, "text": text}
        if market is not None:
            jd["oracle_match"] = float(market.true_match([args.seeker_id], [text])[0])
        jds.append(jd)
    closest = []
    for j in best:
        job = {"job_id": int(jobs["job_id"][j]), "similarity": float(sims[0, j])}
        if market is not None:
            job["oracle_acceptance"] = float(
                market.oracle_prob([args.seeker_id], [job["job_id"]])[0]
            )
        job["jd"] = str(jobs["jd"][j])
        closest.append(job)
    if getattr(args, "json", False):
        out = generate_json(cv, args.generator, guard, best_of, jds, closest, args.seeker_id)
        print(json.dumps(out, ensure_ascii=False))
        return
    for k, jd in enumerate(jds):
        line = f"\n=== generated JD {k + 1} ({jd['kind']})"
        if "oracle_match" in jd:
            line += f", oracle match {jd['oracle_match']:.3f}"
        print(line + " ===\n" + jd["text"])
    print(f"\n=== {len(closest)} closest real jobs (cosine to generated JD 1) ===")
    for job in closest:
        line = f"[job {job['job_id']}] sim {job['similarity']:.3f}"
        if "oracle_acceptance" in job:
            line += f", oracle acceptance {job['oracle_acceptance']:.3f}"
        print(line + "\n  " + job["jd"])


def generate_json(cv, generator, guard, best_of, jds, closest, seeker_id=None) -> dict:
    """The `girl generate --json` object.

    ``{"cv", "generator", "seeker_id", "decoding": {"greedy_first", "best_of",
    "repetition_penalty", "no_repeat_ngram_size", "encoder_repetition_penalty"},
    "jds": [{"kind", "text", "parsed" (see `parsed_fields`, null when nothing parses),
    "repeated_sentences", "repeated_skills", "oracle_match"?}],
    "closest_jobs": [{"job_id", "similarity" (cosine to JD 1), "oracle_acceptance"?, "jd"}]}``
    """
    return {
        "cv": cv,
        "generator": generator,
        "seeker_id": seeker_id,
        "decoding": {"greedy_first": not best_of, "best_of": best_of, **guard},
        "jds": [
            {
                **jd,
                "parsed": parsed_fields(jd["text"]),
                "repeated_sentences": repeated_sentences(jd["text"]),
                "repeated_skills": repeated_skills(jd["text"]),
            }
            for jd in jds
        ],
        "closest_jobs": closest,
    }
