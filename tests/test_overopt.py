"""girl_jax.overopt: Gao et al. (2022) fits, peaks, best-of-n KL, curves from metrics, plots."""

import math
import os

import numpy as np
import pytest

from girl_jax import overopt

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
D = np.linspace(0.0, 4.0, 17)


@pytest.mark.parametrize(
    "kind,fit,alpha,beta",
    [
        ("rl", overopt.fit_rl, 1.2, 0.8),
        ("rl", overopt.fit_rl, 0.3, -0.1),
        ("bon", overopt.fit_bon, 0.9, 0.25),
        ("bon", overopt.fit_bon, -0.2, 0.05),
    ],
)
def test_fits_recover_parameters_noiseless_and_noisy(kind, fit, alpha, beta):
    r = overopt.predict(kind, alpha, beta, D)
    a, b = fit(D, r)
    assert a == pytest.approx(alpha, abs=1e-9) and b == pytest.approx(beta, abs=1e-9)
    rng = np.random.default_rng(0)
    a, b = fit(D, r + rng.normal(0.0, 0.01, D.shape))
    assert a == pytest.approx(alpha, abs=0.05) and b == pytest.approx(beta, abs=0.05)


def test_forms_and_degenerate_fits():
    assert overopt.predict("rl", 1.0, 0.5, [0.0])[0] == 0.0
    assert overopt.predict("rl", 1.0, 0.5, [math.e])[0] == pytest.approx(math.e * 0.5)
    assert overopt.predict("bon", 1.0, 0.5, [2.0])[0] == pytest.approx(0.0)
    # one usable point (d = 0 carries nothing), NaNs dropped: no fit rather than a made-up one
    for fit in (overopt.fit_rl, overopt.fit_bon):
        assert all(math.isnan(x) for x in fit([0.0, 1.0], [0.0, 0.3]))
        assert all(math.isnan(x) for x in fit([], []))
        a, b = fit([0.0, 1.0, 2.0, 3.0], [0.0, 0.5, float("nan"), 0.6])
        assert math.isfinite(a) and math.isfinite(b)
    with pytest.raises(ValueError):
        overopt.peak_d("ppo", 1.0, 1.0)


@pytest.mark.parametrize(
    "kind,alpha,beta", [("rl", 1.0, 0.5), ("rl", 0.2, 0.4), ("bon", 1.0, 0.3), ("bon", 0.4, 2.0)]
)
def test_peak_d_matches_grid_argmax(kind, alpha, beta):
    grid = np.linspace(1e-6, 20.0, 400_001)
    brute = grid[np.argmax(overopt.predict(kind, alpha, beta, grid))]
    assert overopt.peak_d(kind, alpha, beta) == pytest.approx(brute, abs=1e-3)


def test_peak_d_none_without_a_peak():
    assert overopt.peak_d("rl", 1.0, 0.0) is None
    assert overopt.peak_d("rl", 1.0, -0.3) is None
    assert overopt.peak_d("bon", 1.0, -0.3) is None
    assert overopt.peak_d("rl", float("nan"), 1.0) is None
    assert overopt.peak_d("bon", -1.0, 1.0) == 0.0  # only falls: best at the start


def test_bon_kl():
    assert overopt.bon_kl(1) == 0.0
    assert overopt.bon_kl(2) == pytest.approx(math.log(2) - 0.5)
    assert overopt.bon_kl(16) == pytest.approx(math.log(16) - 15 / 16)
    np.testing.assert_allclose(
        overopt.bon_kl([1, 4, 1000]), [0.0, math.log(4) - 0.75, math.log(1000) - 0.999]
    )


def _rows():
    return [
        {"step": 0, "eval_proxy_reward": 0.1, "eval_true_match_rate": 0.2, "eval_parse_rate": 1.0},
        {"step": 1, "proxy_reward": 0.0, "kl": 0.5},  # not an eval iteration
        {"step": 2, "kl": 1.0, "eval_proxy_reward": 0.4, "eval_true_match_rate": 0.3},
        {"step": 3, "kl": 2.0},
        {"step": 4, "kl": 4.0, "eval_proxy_reward": 0.6, "eval_true_match_rate": 0.25},
        {"step": 5, "kl": "nan", "eval_proxy_reward": 0.7, "eval_true_match_rate": 0.2},
        {"step": 6, "kl": -0.01, "eval_proxy_reward": 0.1, "eval_true_match_rate": "nan"},
    ]


def test_curve_from_metrics_pairs_each_eval_with_the_next_rollout_kl():
    # iteration t's eval scores the policy after update t: the one iteration t+1 samples from
    c = overopt.curve_from_metrics(_rows())
    np.testing.assert_array_equal(c["iteration"], [0, 2, 4, 5, 6])
    np.testing.assert_allclose(c["d"], [0.0, 2**0.5, 0.0, 0.0, 0.0])  # 4, 5 -> step 6's KL
    last = overopt.curve_from_metrics(_rows()[:5])  # the last eval has no later rollout
    np.testing.assert_allclose(last["d"], [0.0, 2**0.5, 2.0])
    with pytest.raises(ValueError):
        overopt.curve_from_metrics(_rows(), kl_at="before")


def test_curve_from_metrics_same_row():
    c = overopt.curve_from_metrics(_rows(), kl_at="same")
    np.testing.assert_array_equal(c["iteration"], [0, 2, 4, 6])  # step 5: KL not finite
    np.testing.assert_allclose(c["d"], [0.0, 1.0, 2.0, 0.0])  # negative KL estimate -> 0
    np.testing.assert_allclose(c["proxy"], [0.1, 0.4, 0.6, 0.1])
    np.testing.assert_allclose(c["true"][:3], [0.2, 0.3, 0.25])
    assert math.isnan(c["true"][3])
    np.testing.assert_allclose(overopt.relative(c, "proxy"), [0.0, 0.3, 0.5, 0.0])
    # a resumed log repeats a step: the last line wins
    again = overopt.curve_from_metrics(_rows()[:3] + [dict(_rows()[2], eval_proxy_reward=0.9)])
    np.testing.assert_allclose(again["proxy"], [0.1, 0.9])
    np.testing.assert_allclose(again["d"], [0.0, 1.0])
    empty = overopt.curve_from_metrics([{"step": 1, "kl": 1.0, "proxy_reward": 0.3}])
    assert len(empty["d"]) == 0


def test_summary_and_table_survive_sparse_runs():
    no_oracle = overopt.curve_from_metrics(
        [{"step": 0, "eval_proxy_reward": 0.1}, {"step": 4, "kl": 1.0, "eval_proxy_reward": 0.3}]
    )
    s = overopt.summary(no_oracle)
    assert s["true"] is None and s["true_peak_d"] is None and s["points"] == 2
    assert s["proxy"] == {"alpha": None, "beta": None}  # one point with d > 0: no fit
    assert "no oracle" in overopt.summary_table(s)
    start_only = overopt.curve_from_metrics([_rows()[0]])
    assert "too few" in overopt.summary_table(overopt.summary(start_only))


def test_summary_finds_peak_of_true_reward():
    d = np.linspace(0.0, 6.0, 13)
    curve = {
        "d": d,
        "iteration": np.arange(13) * 10,
        "proxy": 1.0 + overopt.predict("rl", 1.0, 0.1, d),
        "true": 0.3 + overopt.predict("rl", 0.5, 0.4, d),
    }
    s = overopt.summary(curve)
    peak = math.exp(0.5 / 0.4 - 1)
    assert s["true_peak_d"] == pytest.approx(peak)
    assert s["true_peak_within_run"]
    assert s["true_peak_iteration"] == 10 * int(np.argmin(abs(d - peak)))
    assert s["proxy"]["alpha"] == pytest.approx(1.0) and s["proxy"]["beta"] == pytest.approx(0.1)
    assert "iteration" in overopt.summary_table(s)
    # averaging identical seeds gives the same curve
    m = overopt.mean_curve([curve, dict(curve)])
    np.testing.assert_allclose(m["true"], curve["true"])


def _read_png(path):
    from PIL import Image

    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with Image.open(path) as im:
        assert im.format == "PNG" and min(im.size) >= 100


@pytest.mark.parametrize("n", [1, 3])
def test_plot_writes_png(tmp_path, n):
    d = np.linspace(0.0, 3.0, 7)
    curves = {}
    for i in range(n):
        curves[f"run {i}"] = {
            "d": d * (1 + 0.2 * i),
            "iteration": np.arange(7),
            "proxy": overopt.predict("rl", 1.0, 0.1 * i, d),
            "true": overopt.predict("rl", 0.4, 0.3, d) if i != 1 else np.full(7, np.nan),
        }
    curves["one point"] = overopt.curve_from_metrics([_rows()[0]])
    path = str(tmp_path / "sub" / "over.png")
    assert overopt.plot(curves, path, title="t") == path
    _read_png(path)
    assert os.listdir(tmp_path / "sub") == ["over.png"]  # no temp file left behind


def test_plot_ppo_writes_overoptimisation_png(tmp_path):
    import json

    from girl_jax import report

    ppo_dir = tmp_path / "ppo"
    ppo_dir.mkdir()
    rows = [dict(r, proxy_reward=0.0, kl_coef=0.1) if r["step"] else r for r in _rows()]
    (ppo_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert report.plot_ppo(str(ppo_dir)) == str(ppo_dir / "proxy_vs_true.png")
    _read_png(str(ppo_dir / "overoptimisation.png"))
    # only the start evaluation (a run killed early): no crash, a one-point picture
    (ppo_dir / "metrics.jsonl").write_text(json.dumps(_rows()[0]) + "\n")
    assert report.plot_ppo(str(ppo_dir)) is None
    path = report.render(str(tmp_path))
    text = open(path).read()
    assert "## PPO reward over-optimisation" in text and "too few" in text
