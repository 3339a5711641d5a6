"""Generated JDs for every seeker, once with the SFT generator and once with the PPO generator.

Writes WORKDIR/generated/generated.parquet (seeker_id, cv, jd_sft, jd_ppo and, for the market,
their oracle true-match probabilities) plus final.json with the generators' checkpoint steps.
Decoding follows `config.generate`, its repetition guard and copy bias included
(`Generator.from_config`). When that decoding is not plain greedy and the data is the market,
`generate.policy_eval` also writes each generator's plain greedy JDs (`jd_sft_greedy`,
`jd_ppo_greedy`) and their true match: the policy's own figure, the one PPO is judged by
(decoding with a copy bias lifts SFT and PPO alike and would hide what RL added).
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pandas as pd

from girl_jax import checkpoint as ckpt_mod
from girl_jax.checkpoint import read_final
from girl_jax.data import io, prepare
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.stages import common, ppo, sft
from girl_jax.stages.generator import GUARD_KEYS, Generator, best_of_n
from girl_jax.stages.reward import reward_scorer


def all_seekers(data) -> pd.DataFrame:
    df = data.interactions.drop_duplicates("seeker_id")[["seeker_id", "cv"]]
    return df.sort_values("seeker_id").reset_index(drop=True)


def stage_decodings(g, market: bool) -> dict[str, dict]:
    """{column suffix: Generator settings}: `config.generate`'s decoding, and plain greedy
    decoding too ("_greedy") when that differs, the oracle can score it and `policy_eval` is on."""
    out = {"": dict(greedy=g.greedy, temperature=g.temperature, top_k=g.top_k, top_p=g.top_p)}
    plain = bool(g.greedy) and all(g.get(k, off) == off for k, off in GUARD_KEYS)
    if market and g.get("policy_eval", False) and not plain:
        out["_greedy"] = dict(greedy=True, **{k: off for k, off in GUARD_KEYS})
    return out


def run(config, workdir: str) -> dict:
    out_dir = common.stage_dir(workdir, "generated")
    final_path = os.path.join(out_dir, "final.json")
    if os.path.isfile(final_path):
        return json.load(open(final_path))
    data = prepare.load(workdir)
    tok = data.tokenizer
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    seekers = all_seekers(data)
    g = config.generate
    steps = {}
    out = seekers.copy()
    generators = {
        "sft": lambda: sft.load_final_params(workdir, config, tok.vocab_size),
        "ppo": lambda: ppo.load_final_actor(workdir, config, data, mesh, rules),
    }
    decodings = stage_decodings(g, market=data.market is not None)
    for name, load in generators.items():
        steps[name] = ckpt_mod.read_final(os.path.join(workdir, name), name)["step"]
        loaded = None
        for suffix, decoding in decodings.items():
            col = f"jd_{name}{suffix}"
            part = os.path.join(out_dir, f"{col}.parquet")
            if not os.path.isfile(part):  # resume: each decoding's output survives a kill
                loaded = loaded or load()
                gen = Generator.from_config(
                    *loaded, tok, config, batch_size=g.batch_size, **decoding
                )
                texts = gen.generate(
                    list(seekers["cv"]), common.fold_rng(config.seed, f"gen-{name}", 0)
                )
                io.write_parquet_atomic(
                    pd.DataFrame({"seeker_id": seekers["seeker_id"], col: texts}), part
                )
            out[col] = pd.read_parquet(part)[col].to_numpy()
            if data.market is not None:
                out[f"true_match_{name}{suffix}"] = data.market.true_match(
                    out["seeker_id"].to_numpy(), list(out[col])
                )
    best_of = int(g.get("best_of", 0))
    if best_of > 0:  # baseline: best of n SFT samples by the reward model
        part = os.path.join(out_dir, f"jd_bon{best_of}.parquet")
        if not os.path.isfile(part):
            graphdef, params = generators["sft"]()
            gen = Generator.from_config(
                graphdef,
                params,
                tok,
                config,
                greedy=False,
                temperature=g.get("best_of_temperature", 0.7),
                batch_size=g.batch_size,
            )
            texts, _, _ = best_of_n(
                gen,
                reward_scorer(workdir, config, tok),
                list(seekers["cv"]),
                best_of,
                common.fold_rng(config.seed, "gen-bon", 0),
            )
            io.write_parquet_atomic(
                pd.DataFrame({"seeker_id": seekers["seeker_id"], "jd_bon": texts}), part
            )
        out["jd_bon"] = pd.read_parquet(part)["jd_bon"].to_numpy()
        if data.market is not None:
            out["true_match_bon"] = data.market.true_match(
                out["seeker_id"].to_numpy(), list(out["jd_bon"])
            )
    io.write_parquet_atomic(out, os.path.join(out_dir, "generated.parquet"))
    info = {"seekers": len(out), "steps": steps, "greedy": bool(g.greedy)}
    for key, off in GUARD_KEYS:
        if g.get(key, off) != off:  # the repetition guard, recorded only when on
            info[key] = g.get(key)
    if best_of > 0:
        info["best_of"] = best_of
    info.update({c: float(np.mean(out[c])) for c in out if c.startswith("true_match_")})
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(final_path, info)
    return info


def load(workdir: str) -> pd.DataFrame:
    read_final(os.path.join(workdir, "generated"), "generated")
    return pd.read_parquet(os.path.join(workdir, "generated", "generated.parquet"))
