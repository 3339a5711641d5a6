"""Free-text CVs (tests/data/free_text_cvs/), `girl generate --json`, scripts/free_text_eval.py."""

from __future__ import annotations

import json
import os
import sys

import pytest

from girl_jax.data import market_taxonomy as tax
from girl_jax.data import market_text
from girl_jax.stages import generate_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, os.path.join(ROOT, "tests", "reliability"))
import free_text_eval  # noqa: E402
from helpers import CONFIG, run_cli  # noqa: E402

CV_DIR = os.path.join(ROOT, "tests", "data", "free_text_cvs")


def test_index_lists_every_cv_with_taxonomy_labels():
    index = json.load(open(os.path.join(CV_DIR, "index.json")))["cvs"]
    files = sorted(f for f in os.listdir(CV_DIR) if f.endswith(".txt"))
    assert sorted(e["file"] for e in index) == files and len(files) >= 20
    per_family = {}
    for e in index:
        assert e["family"] in tax.FAMILIES, e
        assert e["skills"] and all(s in tax.SKILLS for s in e["skills"]), e
        assert len(set(e["skills"])) == len(e["skills"]), e
        per_family[e["family"]] = per_family.get(e["family"], 0) + 1
    assert sum(n >= 3 for n in per_family.values()) >= 6  # several per occupation
    # Written the way people write, not the way the market does: capitals everywhere, and the
    # market's four CV openings never used.
    openings = ("Profile: ", "Current role: ", "I am a ")
    for f in files:
        text = open(os.path.join(CV_DIR, f), encoding="utf-8").read()
        assert any(c.isupper() for c in text) and not text.startswith(openings), f


def test_load_cvs_reads_the_text_as_girl_generate_does():
    cvs = free_text_eval.load_cvs(CV_DIR, only=["data_01.txt", "nursing_02.txt"])
    assert [c["file"] for c in cvs] == ["data_01.txt", "nursing_02.txt"]
    assert cvs[0]["text"] == generate_cli._read_cv(os.path.join(CV_DIR, "data_01.txt"))
    assert "\n" not in cvs[0]["text"] and cvs[0]["family"] == "data"
    assert len(free_text_eval.load_cvs(CV_DIR, limit=3)) == 3


def _jd(family: str, required: list[str], title_level: int = 1, **kw) -> str:
    fam = tax.FAMILIES.index(family)
    args = dict(
        company=0,
        family=fam,
        seniority=title_level,
        required=[tax.SKILLS.index(s) for s in required],
        nice=[],
        min_years=3,
        degree_level=1,
        degree_field=0,
        city=0,
        remote=1,
        salary_lo=40,
        salary_hi=50,
        duties=[fam * tax.RESP_PER_FAMILY],
    )
    return market_text.render_jd(kw.pop("template", 0), **{**args, **kw})


def test_score_gives_known_shares_on_stub_jds():
    cvs = [
        {"file": "a", "family": "data", "skills": ["sql", "power bi", "excel"]},
        {"file": "b", "family": "nursing", "skills": ["triage", "cpr"]},
        {"file": "c", "family": "teaching", "skills": ["phonics"]},
        {"file": "d", "family": "finance", "skills": ["payroll"]},
    ]
    jds = [
        _jd("data", ["sql", "power bi", "spark", "etl"]),  # own family, 2 of 4 skills
        _jd("teaching", ["lesson planning", "phonics"], template=3),  # wrong family, 0 of 2
        "nothing that parses, parses, parses at all",
        _jd("finance", ["payroll"]) + " Close the books each month. Close the books each month.",
    ]
    res = free_text_eval.score(cvs, jds)
    assert res["n"] == 4
    assert res["own_family"] == pytest.approx(2 / 4)
    assert res["jds_with_skills"] == 3
    assert res["skill_share"] == pytest.approx((2 / 4 + 0 / 2 + 1 / 1) / 3)
    assert res["skill_share_pooled"] == pytest.approx(3 / 7)
    assert res["parse_rate"] == pytest.approx(3 / 4)
    assert res["repeated_sentence"] == pytest.approx(1 / 4)
    assert res["repeated_skill"] == 0.0 and res["stutter"] == pytest.approx(1 / 4)
    assert res["own_family_by_family"] == {
        "data": 1.0,
        "finance": 1.0,
        "nursing": 0.0,
        "teaching": 0.0,
    }
    rows = {r["file"]: r for r in res["cvs"]}
    assert rows["a"]["required"] == ["sql", "power bi", "spark", "etl"]
    assert rows["a"]["required_in_cv"] == 2 and rows["b"]["jd_family"] == "teaching"
    assert rows["c"]["jd_family"] is None and not rows["c"]["parsed"]
    assert rows["d"]["repeated_sentences"] == ["close the books each month"]
    assert rows["c"]["stutter"] and not rows["a"]["stutter"]
    table = free_text_eval.markdown(
        [
            {
                "cv_set": "free_text",
                "generator": "sft",
                "repetition_penalty": 1.0,
                "no_repeat_ngram_size": 0,
                **res,
            }
        ]
    )
    assert table.splitlines()[2].startswith("| free_text | sft | 1.000 | 0 | 4 | 0.500 | 0.500 |")


def test_repeated_sentences_and_skills():
    text = "Join clear. Help every pupil reach their goals. Help every pupil reach their goals."
    assert generate_cli.repeated_sentences(text) == ["help every pupil reach their goals"]
    assert generate_cli.repeated_sentences("Role: a | Skills: b | Role: A") == ["role: a"]
    assert generate_cli.repeated_sentences(_jd("data", ["sql", "excel"])) == []
    assert generate_cli.repeated_skills("We need tutoring, tutoring, SQL and Power BI.") == [
        "tutoring"
    ]
    assert generate_cli.repeated_skills("sql, nosql") == []


def test_parsed_fields_by_name():
    fields = generate_cli.parsed_fields(_jd("data", ["sql", "excel"]))
    assert fields["valid"] and fields["family"] == "data" and fields["title"] == "data analyst"
    assert fields["required"] == ["sql", "excel"] and fields["nice"] == []
    assert (fields["salary_lo"], fields["salary_hi"], fields["min_years"]) == (40, 50, 3)
    assert fields["city"] == tax.CITIES[0] and fields["remote"] == "hybrid"
    assert generate_cli.parsed_fields("") is None


# On a tiny trained workdir (data + SFT only: `--generator sft`).

TINY_SFT = (
    "--config.data.num_seekers=120",
    "--config.data.num_jobs=40",
    "--config.sft.steps=4",
    "--config.sft.eval_every=4",
    "--config.sft.checkpoint_every=4",
    "--config.sft.log_every=2",
    "--config.sft.max_prompt_len=64",
    "--config.sft.max_response_len=32",
    "--config.sft.num_eval_samples=8",
    "--config.ppo.max_new_tokens=16",
)


@pytest.fixture(scope="module")
def tiny_sft(tmp_path_factory) -> str:
    w = str(tmp_path_factory.mktemp("free_text") / "w")
    res = run_cli(["sft", "--config", CONFIG, "--workdir", w, *TINY_SFT])
    assert res.code == 0 and res.error is None, (res.error, res.stderr[-3000:])
    assert os.path.isfile(os.path.join(w, "config.json"))
    return w


@pytest.mark.slow
def test_girl_generate_json(tiny_sft):
    cv = os.path.join(CV_DIR, "software_02.txt")
    argv = ["generate", "--workdir", tiny_sft, "--cv", cv, "--generator", "sft", "--jobs", "3"]
    guard = ["--no-repeat-ngram-size", "2", "--encoder-repetition-penalty", "1.5"]
    res = run_cli([*argv, "--num", "2", "--json", *guard])
    assert res.code == 0 and res.error is None, (res.error, res.stderr[-3000:])
    out = json.loads(res.stdout)  # one JSON object, nothing else on stdout
    assert out["generator"] == "sft" and out["cv"] == generate_cli._read_cv(cv)
    assert out["decoding"] == {
        "greedy_first": True,
        "best_of": 0,
        "repetition_penalty": 1.2,  # the workdir's config (the default's); the rest: flags
        "no_repeat_ngram_size": 2,
        "encoder_repetition_penalty": 1.5,
    }
    assert [jd["kind"] for jd in out["jds"]] == ["greedy", "sample 1"]
    for jd in out["jds"]:
        assert isinstance(jd["text"], str)
        assert jd["parsed"] == generate_cli.parsed_fields(jd["text"])
        assert jd["repeated_sentences"] == generate_cli.repeated_sentences(jd["text"])
    jobs = out["closest_jobs"]
    assert len(jobs) == 3 and all(set(j) == {"job_id", "similarity", "jd"} for j in jobs)
    sims = [j["similarity"] for j in jobs]
    assert sims == sorted(sims, reverse=True) and all(-1.0001 <= s <= 1.0001 for s in sims)
    # the plain output shows the same greedy JD and jobs
    # the same settings as overrides of the workdir's saved config
    over = ["--no-repeat-ngram-size", "2", "--config.generate.encoder_repetition_penalty=1.5"]
    again = run_cli([*argv, "--num", "1", "--json", *over])
    assert again.code == 0, again.stderr[-3000:]
    again = json.loads(again.stdout)
    assert again["decoding"] == out["decoding"] and again["jds"][0] == out["jds"][0]
    bad = run_cli([*argv, "--config.generate.nope=1"])
    assert bad.code != 0 and "config.generate.nope" in bad.stderr
    plain = run_cli([*argv, "--num", "1", *guard])
    assert plain.code == 0, plain.stderr[-3000:]
    assert out["jds"][0]["text"] in plain.stdout
    assert all(f"[job {j['job_id']}]" in plain.stdout for j in jobs)


PLAIN = ("--repetition-penalty", "1.0", "--encoder-repetition-penalty", "1.0")  # guard, copy off


@pytest.mark.slow
def test_free_text_eval_on_a_tiny_workdir(tiny_sft, tmp_path, capsys):
    only = "data_01.txt,nursing_01.txt,teaching_02.txt"
    out = str(tmp_path / "eval.json")
    argv = ["--workdir", tiny_sft, "--generator", "sft", "--only", only, "--json-out", out]
    assert (
        free_text_eval.main(
            [*argv, *PLAIN, "--no-repeat-ngram-size", "0,3", "--market-seekers", "4"]
        )
        == 0
    )
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith(
        "| cv_set | generator | repetition_penalty | no_repeat_ngram_size | n |"
    )
    assert table[0].endswith("| true_match |") and len(table) == 6
    assert table[2].startswith("| free_text | sft | 1.000 | 0 | 3 |")
    assert table[4].startswith("| market | sft | 1.000 | 0 | 4 |")
    report = json.load(open(out))
    results = report["results"]
    assert [(r["cv_set"], r["no_repeat_ngram_size"]) for r in results] == [
        ("free_text", 0),
        ("free_text", 3),
        ("market", 0),
        ("market", 3),
    ]
    assert all(0 <= r["true_match"] <= 1 for r in results[2:])
    cvs = free_text_eval.load_cvs(CV_DIR, only=only.split(","))
    market, _ = free_text_eval.market_cvs(tiny_sft, 4)
    assert [r["file"] for r in results[2]["cvs"]] == [c["file"] for c in market]
    for res in results[2:]:
        again = free_text_eval.score(market, [r["jd"] for r in res["cvs"]])
        assert all(res[key] == again[key] for key in free_text_eval.METRICS)
    for res in results[:2]:
        assert [r["file"] for r in res["cvs"]] == only.split(",")
        again = free_text_eval.score(cvs, [r["jd"] for r in res["cvs"]])  # numbers from the JDs
        for key in free_text_eval.METRICS:
            assert res[key] == again[key], key
        assert 0 <= res["own_family"] <= 1 and 0 <= res["parse_rate"] <= 1
    # tuning a decoding setting on the market CVs alone: no hand-written CV is read
    tune = ["--workdir", tiny_sft, "--generator", "sft", "--json-out", out, "--no-free-text"]
    argv = [*tune, "--market-seekers", "4", "--encoder-repetition-penalty", "1.0,3.0"]
    argv += ["--repetition-penalty", "1.0", "--no-repeat-ngram-size", "0"]
    assert free_text_eval.main(argv) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert "| encoder_repetition_penalty |" in table[0] and len(table) == 4
    assert table[2].startswith("| market | sft | 1.000 | 0 | 1.000 | 4 |")
    assert table[3].startswith("| market | sft | 1.000 | 0 | 3.000 | 4 |")
    tuned = json.load(open(out))["results"]
    assert [r["cv_set"] for r in tuned] == ["market", "market"]
    assert [r["jd"] for r in tuned[0]["cvs"]] == [r["jd"] for r in results[2]["cvs"]]
    with pytest.raises(SystemExit):
        free_text_eval.main(tune)  # --no-free-text without market CVs: nothing to score


def test_generator_from_config_reads_the_guard():
    import ml_collections

    from girl_jax.configuration import load_config
    from girl_jax.stages.generator import Generator

    class Recorder(Generator):
        def __init__(self, *args, **kwargs):
            self.kwargs = kwargs

    config = load_config(os.path.join(ROOT, "configs", "default.py:plain"))  # guard and copy off
    assert config.generate.repetition_penalty == 1.0 and config.generate.no_repeat_ngram_size == 0
    config.generate.no_repeat_ngram_size = 3
    kw = Recorder.from_config(None, None, None, config, no_repeat_ngram_size=None).kwargs
    assert (kw["repetition_penalty"], kw["no_repeat_ngram_size"]) == (1.0, 3)
    kw = Recorder.from_config(None, None, None, config, repetition_penalty=1.3).kwargs
    assert (kw["repetition_penalty"], kw["no_repeat_ngram_size"]) == (1.3, 3)
    assert kw["encoder_repetition_penalty"] == 1.0  # the copy bias: off by default
    config.generate.encoder_repetition_penalty = 1.4
    kw = Recorder.from_config(None, None, None, config).kwargs
    assert kw["encoder_repetition_penalty"] == 1.4
    kw = Recorder.from_config(None, None, None, config, encoder_repetition_penalty=2.0).kwargs
    assert kw["encoder_repetition_penalty"] == 2.0
    old = ml_collections.ConfigDict(config.to_dict())  # a workdir saved before the guard
    del old.generate["repetition_penalty"], old.generate["no_repeat_ngram_size"]
    del old.generate["encoder_repetition_penalty"]
    kw = Recorder.from_config(None, None, None, old).kwargs
    assert (kw["repetition_penalty"], kw["no_repeat_ngram_size"]) == (1.0, 0)
    assert kw["encoder_repetition_penalty"] == 1.0
    assert kw["max_new_tokens"] == config.ppo.max_new_tokens


def test_generated_stage_scores_greedy_jds_only_when_the_decoding_is_not_greedy():
    from girl_jax.configuration import load_config
    from girl_jax.stages.generate import stage_decodings

    g = load_config(os.path.join(ROOT, "configs", "default.py")).generate
    out = stage_decodings(g, market=True)
    assert out[""]["greedy"] and set(out) == {"", "_greedy"}
    assert out["_greedy"] == dict(
        greedy=True, repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_repetition_penalty=1.0
    )
    assert set(stage_decodings(g, market=False)) == {""}  # user data: no oracle to score it
    g.policy_eval = False
    assert set(stage_decodings(g, market=True)) == {""}
    plain = load_config(os.path.join(ROOT, "configs", "default.py:plain")).generate
    assert set(stage_decodings(plain, market=True)) == {""}  # already plain greedy
    plain.greedy = False  # sampled JDs: the greedy policy is scored beside them
    assert set(stage_decodings(plain, market=True)) == {"", "_greedy"}
