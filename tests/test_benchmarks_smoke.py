"""`benchmarks/run_all.py --quick`: every benchmark runs at tiny shapes and writes the schema."""

import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")
sys.path.insert(0, BENCH)

import bench_common as bc  # noqa: E402
import run_all  # noqa: E402

FIGURE_KEYS = {"name", "unit", "ours", "peer", "peer_name", "ratio", "higher_is_better", "target"}
HAS_TRL = os.path.exists(os.path.join(REPO, ".venv-trl", "bin", "python"))


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    md = out.with_suffix(".md")
    proc = subprocess.run(
        [
            sys.executable,
            os.path.join(BENCH, "run_all.py"),
            "--quick",
            "--out",
            str(out),
            "--md",
            str(md),
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), md.read_text(), proc.stdout


def test_every_benchmark_reports_figures_with_peer_and_ratio(quick_results):
    results, _, _ = quick_results
    assert set(results["details"]) == set(run_all.BENCHES)
    by_bench = {}
    for f in results["figures"]:
        assert FIGURE_KEYS <= set(f), f
        by_bench.setdefault(f["benchmark"], []).append(f)
        if f["benchmark"] == "ppo" and f["unit"] == "samples/s" and not HAS_TRL:
            continue  # the TRL peer needs .venv-trl
        assert f["ours"] > 0 and f["peer"] > 0, f
        assert math.isclose(f["ratio"], f["ours"] / f["peer"], rel_tol=1e-9), f
    assert set(by_bench) == set(run_all.BENCHES)


def test_meta_records_versions_cpu_date_and_load(quick_results):
    results, _, _ = quick_results
    meta = results["meta"]
    for key in ("date", "cpu", "loadavg_before", "loadavg_after", "versions"):
        assert meta[key], key
    for name in ("jax", "torch", "transformers"):
        assert meta["versions"][name], name
    if HAS_TRL:
        assert meta["versions"]["trl"] == "1.12.0"


def test_markdown_table_has_a_row_per_figure(quick_results):
    results, md, stdout = quick_results
    if HAS_TRL:  # the peer's own packages are named beside ours
        assert "; .venv-trl: " in md and "transformers " in md.split(".venv-trl: ")[1]
    rows = [line for line in md.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + len(results["figures"])  # header + figures
    assert md.strip() in stdout


def test_greedy_sampler_matches_transformers_on_the_same_weights(quick_results):
    results, _, _ = quick_results
    runs = results["details"]["sampler"]["details"]["runs"]
    greedy = [r for k, r in runs.items() if k.startswith("greedy")]
    assert greedy and all(r["greedy_identical_prefix"] == 8 for r in greedy)


def test_sampler_over_one_device_per_core_draws_the_same_tokens(quick_results):
    runs = quick_results[0]["details"]["sampler"]["details"]["runs"]
    cores = os.cpu_count() or 1
    if cores < 2 or 2 % cores:  # --quick samples 2 rows: one per device needs 2 cores
        pytest.skip(f"{cores} cores: no per-core run at batch 2")
    per_core = [r for r in runs.values() if "per_core_devices" in r]
    assert per_core and per_core[0]["per_core_devices"] == os.cpu_count()
    assert per_core[0]["per_core_same_tokens"] == 1.0
    assert len(per_core[0]["times_s"]["ours_per_core"]) == len(per_core[0]["times_s"]["ours"])


def test_reward_probe_layouts_time_the_same_arithmetic(quick_results):
    """The probe's cached layout and the one before it, side by side: same steps, same bits."""
    bench = quick_results[0]["details"]["reward_probe"]
    details = bench["details"]
    assert details["bit_identical"] is True
    assert len(details["times_s"]["ours"]) == len(details["times_s"]["peer"]) >= 2
    (fig,) = [f for f in quick_results[0]["figures"] if f["benchmark"] == "reward_probe"]
    assert fig["unit"] == "steps/s" and fig["ours"] > 0 and fig["peer"] > 0


def test_host_threads_bench_writes_the_same_jds_on_both_sides(quick_results):
    """Two batches in flight against one at a time: the same Generator, the same JDs."""
    bench = quick_results[0]["details"]["host_threads"]
    details = bench["details"]
    assert details["identical"] is True and details["workers"] >= 2
    assert len(details["times_s"]["ours"]) == len(details["times_s"]["peer"]) >= 1
    (fig,) = [f for f in quick_results[0]["figures"] if f["benchmark"] == "host_threads"]
    assert fig["unit"] == "CVs/s" and fig["ours"] > 0 and fig["peer"] > 0


def test_rows_per_pass_bench_times_both_samplers(quick_results):
    """The rollout decoded in passes against one pass: the same sampler, both sides timed."""
    details = quick_results[0]["details"]["rows_per_pass"]["details"]
    assert 0 < details["rows_per_pass"] < details["batch"]
    assert details["greedy_tokens_identical"] is True  # batch size does not change greedy JDs
    times = details["times_s"]
    assert len({len(times[k]) for k in times}) == 1 and len(times["passes"]) >= 2
    figs = [f for f in quick_results[0]["figures"] if f["benchmark"] == "rows_per_pass"]
    assert len(figs) == 2
    assert all(f["unit"] == "rows/s" and f["ours"] > 0 and f["peer"] > 0 for f in figs)


def test_dense_vjp_bench_compares_equal_gradients(quick_results):
    """The written-out backward against autodiff's: the same gradients, both sides timed."""
    details = quick_results[0]["details"]["dense_vjp"]["details"]
    assert details["max_abs_grad_difference"] < 1e-5
    assert len(details["ours_s"]) == len(details["autodiff_s"]) >= 2
    (fig,) = [f for f in quick_results[0]["figures"] if f["benchmark"] == "dense_vjp"]
    assert fig["unit"] == "steps/s" and fig["ours"] > 0 and fig["peer"] > 0


def test_logprobs_bench_compares_equal_gradients(quick_results):
    """The fused log-probs + entropy against autodiff of the textbook formulas."""
    details = quick_results[0]["details"]["logprobs"]["details"]
    assert details["max_abs_grad_difference"] < 1e-4 * max(details["max_abs_grad"], 1.0)
    assert len(details["ours_s"]) == len(details["textbook_s"]) >= 2
    (fig,) = [f for f in quick_results[0]["figures"] if f["benchmark"] == "logprobs"]
    assert fig["unit"] == "steps/s" and fig["ours"] > 0 and fig["peer"] > 0


def test_fsdp_state_shrinks_with_fsdp(quick_results):
    rows = quick_results[0]["details"]["fsdp_memory"]["details"]["rows"]
    assert rows["2"]["device0_bytes"] < rows["1"]["device0_bytes"]
    assert rows["2"]["device0_bytes"] == rows["2"]["state_bytes_per_device"]


def test_flop_counts_scale_as_expected():
    cfg = bc.decoder_config("bench-small")
    # d 256, 4 layers, mlp 1024, vocab 8192: 12·d²·L + d·V
    assert bc.matmul_params(cfg) == 12 * 256**2 * 4 + 256 * 8192
    f1 = bc.forward_flops(cfg, 1, 64, lm_head=False)
    f2 = bc.forward_flops(cfg, 2, 64, lm_head=False)
    assert f2 == pytest.approx(2 * f1)
    # Decoding N tokens costs about as much as a forward over them (minus the LM head rows).
    dec = bc.decode_flops(cfg, 1, 1, 64)
    assert 0.9 < dec / bc.forward_flops(cfg, 1, 64) < 1.1


def test_figure_ratio_and_target():
    f = bc.figure("x", "u", 10.0, 2.0, "peer", target=3.0)
    assert f["ratio"] == 5.0 and f["target_met"] is True
    g = bc.figure("y", "bytes", 12.0, 10.0, "ideal", higher_is_better=False, target=1.1)
    assert g["target_met"] is False
    assert bc.figure("z", "u", 1.0, None, "missing")["ratio"] is None
