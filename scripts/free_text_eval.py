"""How a workdir's generator copes with CVs written the way people write them.

    python scripts/free_text_eval.py --workdir W [--generator ppo,sft]
        [--repetition-penalty 1.0,1.2] [--no-repeat-ngram-size 0,3]
        [--encoder-repetition-penalty 1.0,1.5] [--market-seekers N [--no-free-text]]
        [--json-out FILE]

For every hand-written CV in tests/data/free_text_cvs/ (index.json: its true occupation family
and the skills it mentions, by their taxonomy names), writes one greedy JD with the workdir's
generator exactly as `girl generate` does (`girl_jax.stages.generate_cli.load_generator`,
`Generator.from_config`, the CV read by `generate_cli._read_cv`), parses it with
`girl_jax.data.market_text.parse_jd` and reports, per generator x guard setting:

* own_family: share of CVs whose JD is of the CV's own occupation family (a JD that does not
  parse counts as wrong);
* skill_share: mean over the JDs that name required skills of the share of those skills the
  CV mentions (skill_share_pooled: all JDs' required skills together);
* parse_rate: share of JDs `parse_jd` reads as valid (a family and a required skill);
* repeated_sentence: share of JDs with a sentence said twice (`generate_cli.repeated_sentences`);
* repeated_skill: share of JDs naming a skill twice or more (`generate_cli.repeated_skills`);
* stutter: share of JDs with a word three times in a row ("make make make").

`--market-seekers N` adds the same rows for the market's own CVs (the first N seekers, their
family and skills from the market, plus the oracle's true match): the in-distribution reference.
`--no-free-text` scores the market CVs alone: what to tune a decoding setting on, so that the
hand-written CVs stay held out.
`--lowercase` lower-cases every CV first: a diagnostic of how much the case alone costs, not
what `girl generate` does; for a workdir whose tokenizer was trained with
`tokenizer.normalize=nfkc_lower` it changes nothing (its tokenizer lower-cases every CV itself).
The report names the workdir's tokenizer normaliser and market `text_variation`.

Prints a markdown table; --json-out writes the table's numbers and every CV's JD and fields.
Each comma-separated value of --generator / --repetition-penalty / --no-repeat-ngram-size /
--encoder-repetition-penalty (the copy bias) adds rows (their product). The CVs are held out:
never use them for training or tuning.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CV_DIR = os.path.join(ROOT, "tests", "data", "free_text_cvs")
METRICS = (
    "own_family",
    "skill_share",
    "skill_share_pooled",
    "parse_rate",
    "repeated_sentence",
    "repeated_skill",
    "stutter",
)
_STUTTER = re.compile(r"\b(\w+)(?:\W+\1\b){2,}", re.IGNORECASE)


def load_cvs(cv_dir: str = CV_DIR, only=None, limit: int | None = None) -> list[dict]:
    """The index's CVs (file, family, skills) with their text as `girl generate` reads it."""
    from girl_jax.stages.generate_cli import _read_cv

    with open(os.path.join(cv_dir, "index.json")) as f:
        entries = json.load(f)["cvs"]
    if only:
        missing = set(only) - {e["file"] for e in entries}
        if missing:
            raise SystemExit(f"free_text_eval: not in the index: {sorted(missing)}")
        entries = [e for e in entries if e["file"] in set(only)]
    if limit:
        entries = entries[:limit]
    return [{**e, "text": _read_cv(os.path.join(cv_dir, e["file"]))} for e in entries]


def market_cvs(workdir: str, n: int) -> tuple[list[dict], list[int]]:
    """The first `n` market seekers' CVs with their family and skills, and their ids."""
    from girl_jax.data import market_taxonomy as tax
    from girl_jax.data import prepare
    from girl_jax.stages.generate import all_seekers

    data = prepare.load(workdir)
    if data.market is None:
        raise SystemExit("free_text_eval: --market-seekers needs a workdir of the embedded market")
    seekers = all_seekers(data).head(n)
    sk = data.market.seekers
    cvs = []
    for sid, text in zip(seekers["seeker_id"].tolist(), seekers["cv"]):
        skills = sk["skills"][sid][: sk["num_skills"][sid]]
        cvs.append(
            {
                "file": f"seeker {sid}",
                "family": tax.FAMILIES[int(sk["family"][sid])],
                "skills": [tax.SKILLS[int(x)] for x in skills],
                "text": text,
            }
        )
    return cvs, seekers["seeker_id"].tolist()


def text_setup(workdir: str) -> dict:
    """The workdir's tokenizer normaliser ("none", "nfkc_lower" or its JSON type) and the
    market's `text_variation` (0.0 when not recorded; None for user data)."""
    data_dir = os.path.join(workdir, "data")
    with open(os.path.join(data_dir, "tokenizer.json"), encoding="utf-8") as f:
        norm = json.load(f).get("normalizer")
    with open(os.path.join(data_dir, "final.json"), encoding="utf-8") as f:
        info = json.load(f)
    nfkc_lower = {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]}
    name = "none" if norm is None else "nfkc_lower" if norm == nfkc_lower else norm.get("type")
    variation = info.get("market_config", {}).get("text_variation", 0.0)
    return {"tokenizer_normalize": name, "text_variation": variation if "market" in info else None}


def score(cvs: list[dict], jds: list[str]) -> dict:
    """The report's numbers for JDs `jds` written for `cvs` (same order), and per-CV rows."""
    from girl_jax.stages.generate_cli import parsed_fields, repeated_sentences, repeated_skills

    rows, shares, hits, asked = [], [], 0, 0
    for cv, jd in zip(cvs, jds, strict=True):
        fields = parsed_fields(jd)
        required = fields["required"] if fields else []
        have = set(cv["skills"])
        n_hit = sum(s in have for s in required)
        if required:
            shares.append(n_hit / len(required))
            hits, asked = hits + n_hit, asked + len(required)
        rows.append(
            {
                "file": cv["file"],
                "family": cv["family"],
                "jd": jd,
                "jd_family": fields["family"] if fields else None,
                "own_family": bool(fields and fields["family"] == cv["family"]),
                "required": required,
                "required_in_cv": n_hit,
                "parsed": bool(fields and fields["valid"]),
                "repeated_sentences": repeated_sentences(jd),
                "repeated_skills": repeated_skills(jd),
                "stutter": bool(_STUTTER.search(jd)),
            }
        )
    n = len(rows)

    def mean(values):
        values = list(values)
        return sum(values) / len(values) if values else None

    by_family = {}
    for r in rows:
        by_family.setdefault(r["family"], []).append(r["own_family"])
    return {
        "n": n,
        "own_family": mean(r["own_family"] for r in rows),
        "skill_share": mean(shares),
        "skill_share_pooled": hits / asked if asked else None,
        "jds_with_skills": len(shares),
        "parse_rate": mean(r["parsed"] for r in rows),
        "repeated_sentence": mean(bool(r["repeated_sentences"]) for r in rows),
        "repeated_skill": mean(bool(r["repeated_skills"]) for r in rows),
        "stutter": mean(r["stutter"] for r in rows),
        "own_family_by_family": {k: mean(v) for k, v in sorted(by_family.items())},
        "cvs": rows,
    }


def generate_jds(
    workdir, config, generator, cvs, repetition_penalty, no_repeat_ngram_size, copy_bias=None
):
    """Greedy JDs for `cvs` by the workdir's `generator`, as `girl generate` writes JD 1."""
    import jax

    from girl_jax.stages.generate_cli import load_generator
    from girl_jax.stages.generator import Generator

    data, graphdef, params = load_generator(workdir, config, generator)
    gen = Generator.from_config(
        graphdef,
        params,
        data.tokenizer,
        config,
        greedy=True,
        batch_size=min(32, len(cvs)),
        repetition_penalty=repetition_penalty,
        no_repeat_ngram_size=no_repeat_ngram_size,
        encoder_repetition_penalty=copy_bias,
    )
    return gen.generate([cv["text"] for cv in cvs], jax.random.key(0))


def _fmt(v) -> str:
    return "–" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def markdown(results: list[dict]) -> str:
    cols = ("cv_set", "generator", "repetition_penalty", "no_repeat_ngram_size")
    if any(r.get("encoder_repetition_penalty", 1.0) != 1.0 for r in results):
        cols += ("encoder_repetition_penalty",)
    cols += ("n", *METRICS)
    if any(r.get("true_match") is not None for r in results):
        cols += ("true_match",)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in results:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    return "\n".join(lines)


def _floats(text):
    return [float(x) for x in str(text).split(",")]


def _ints(text):
    return [int(x) for x in str(text).split(",")]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--generator", default="ppo", help="ppo, sft or both: ppo,sft")
    ap.add_argument("--repetition-penalty", default=None, help="e.g. 1.0,1.2 (default: config)")
    ap.add_argument("--no-repeat-ngram-size", default=None, help="e.g. 0,3 (default: config)")
    ap.add_argument(
        "--encoder-repetition-penalty", default=None, help="copy bias, e.g. 1,1.5 (default: config)"
    )
    ap.add_argument("--config", default=None, help="defaults to the workdir's config.json")
    ap.add_argument("--cv-dir", default=CV_DIR)
    ap.add_argument("--only", default=None, help="comma-separated CV files of the index")
    ap.add_argument("--limit", type=int, default=None, help="the first N CVs of the index")
    ap.add_argument("--json-out", default=None, help="write the numbers and every JD here")
    ap.add_argument("--lowercase", action="store_true", help="diagnostic: lower-case the CVs")
    ap.add_argument(
        "--market-seekers", type=int, default=0, help="also score N market CVs (reference)"
    )
    ap.add_argument(
        "--no-free-text", action="store_true", help="score the market CVs only (for tuning)"
    )
    args, overrides = ap.parse_known_args(argv)
    bad = [a for a in overrides if not a.startswith("--config.")]
    if bad:
        ap.error(f"unrecognised arguments: {' '.join(bad)}")

    from girl_jax.stages.generate_cli import load_workdir_config

    workdir = os.path.abspath(args.workdir)
    config = load_workdir_config(workdir, args.config, overrides)
    setup = text_setup(workdir)
    print(f"free_text_eval: {workdir}: {setup}", file=sys.stderr)
    g = config.get("generate") or {}
    penalties = _floats(args.repetition_penalty or g.get("repetition_penalty", 1.0))
    ngrams = _ints(args.no_repeat_ngram_size or g.get("no_repeat_ngram_size", 0))
    copy_biases = _floats(
        args.encoder_repetition_penalty or g.get("encoder_repetition_penalty", 1.0)
    )
    if args.no_free_text and args.market_seekers <= 0:
        ap.error("--no-free-text needs --market-seekers N")
    generators = args.generator.split(",")
    for name in generators:
        if name not in ("ppo", "sft"):
            ap.error(f"--generator: ppo or sft, got {name!r}")
    cvs = (  # the hand-written CVs are not even read when tuning on market CVs
        []
        if args.no_free_text
        else load_cvs(args.cv_dir, args.only.split(",") if args.only else None, args.limit)
    )
    if args.lowercase:
        cvs = [{**cv, "text": cv["text"].lower()} for cv in cvs]
    sets = [] if args.no_free_text else [("free_text", cvs, None)]
    if args.market_seekers > 0:
        sets.append(("market", *market_cvs(workdir, args.market_seekers)))
    results = []
    for (kind, items, sids), name, penalty, ngram, copy_bias in itertools.product(
        sets, generators, penalties, ngrams, copy_biases
    ):
        t0 = time.time()
        jds = generate_jds(workdir, config, name, items, penalty, ngram, copy_bias)
        res = {
            "cv_set": kind,
            "generator": name,
            "repetition_penalty": penalty,
            "no_repeat_ngram_size": ngram,
            "encoder_repetition_penalty": copy_bias,
            **score(items, jds),
        }
        if sids is not None:
            from girl_jax.data import prepare

            market = prepare.load(workdir).market
            res["true_match"] = float(market.true_match(sids, jds).mean())
        res["seconds"] = round(time.time() - t0, 1)
        results.append(res)
        print(
            f"free_text_eval: {kind} {name} penalty={penalty} ngram={ngram} "
            f"copy_bias={copy_bias}: own family "
            f"{_fmt(res['own_family'])}, skill share {_fmt(res['skill_share'])} "
            + (f", true match {res['true_match']:.3f}" if sids is not None else "")
            + f" ({res['seconds']} s)",
            file=sys.stderr,
        )
    table = markdown(results)
    print(table)
    if args.json_out:
        with open(args.json_out, "w") as f:
            report = {"workdir": workdir, "cv_dir": args.cv_dir, "lowercase": args.lowercase}
            report.update(setup)
            json.dump({**report, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
