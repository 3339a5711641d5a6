"""The op profile (benchmarks/profile_ops.py) and the causal-attention benchmark
(benchmarks/bench_causal_attention.py): they read what they time and leave no setting changed."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))

import profile_ops  # noqa: E402


def test_op_names_carry_the_primitive_and_the_einsum_spec():
    text = "\n".join(
        [
            "  %fusion.3 = f32[2,3]{1,0} fusion(%a), "
            'metadata={op_name="jit(f)/jvp(btd,dhk->bthk)/dot_general"}',
            '  ROOT %add.1 = f32[2]{0} add(%x, %y), metadata={op_name="jit(f)/add"}',
            "  %p = f32[2]{0} parameter(0)",
            "  %dot.7 = f32[4,1,9]{2,1,0} dot(%q, %k), lhs_batch_dims={0}",
        ]
    )
    assert profile_ops.op_names(text) == {
        "fusion.3": "dot_general btd,dhk->bthk",
        "add.1": "add",
        "dot.7": "[dot]",  # no op_name: XLA's own instruction, by its opcode
    }


def test_encoder_profile_sums_the_traced_ops(capsys):
    out = profile_ops.profile("encoder", runs=1, top=3)
    assert out["wall_s"] > 0 and out["gflops"] > 0
    ops = out["ms_by_op"]
    assert any(k.startswith("dot_general") for k in ops) and all(v >= 0 for v in ops.values())
    # the traced ops of one step add up to about one step (ops may overlap on 2 threads)
    assert 0.3 * out["wall_s"] * 1e3 < sum(ops.values()) < 3 * out["wall_s"] * 1e3
    assert "encoder:" in capsys.readouterr().out


def test_causal_attention_bench_times_both_paths_and_restores_the_threshold():
    import bench_causal_attention

    from girl_jax.models import decoder_blocks

    before = decoder_blocks.CAUSAL_SPLIT_MIN_LEN
    out = bench_causal_attention.measure(2, 64, rounds=1, calls=1)
    assert decoder_blocks.CAUSAL_SPLIT_MIN_LEN == before
    for k in ("full_forward_s", "two_blocks_forward_s", "full_grad_s", "two_blocks_grad_s"):
        assert out[k] > 0
    assert out["forward_speedup"] == out["full_forward_s"] / out["two_blocks_forward_s"]


def test_encoder_attention_bench_times_both_forms_and_restores_the_model():
    import bench_encoder_attention

    from girl_jax.models import bert

    before = bert.SelfAttention.__call__
    out = bench_encoder_attention.measure(rounds=1, calls=1)
    assert bert.SelfAttention.__call__ is before
    assert out["probabilities_first_s"] > 0 and out["after_values_s"] > 0
    assert out["speedup"] == out["probabilities_first_s"] / out["after_values_s"]


def test_sampler_profiles_in_both_precisions():
    # the cases build the bench's sampler; matmul_dtype reaches the model
    for name, mixed in (("sampler", None), ("sampler_bf16", "bfloat16")):
        fn, args, flops = profile_ops.CASES[name]()
        assert flops > 0 and args[1].shape == (32, 64)
        text = fn.lower(*args).as_text()
        assert ("bf16" in text) == (mixed is not None)


def test_mixed_sampler_figures_compare_like_with_like():
    import bench_common as bc
    import bench_sampler

    cfg = bc.decoder_config("bench-tiny")
    times = {
        "ours": [1.0],
        "ours_bf16": [0.5],
        "ours_bf16_per_core": [0.25],
        "peer": [2.0],
        "peer_autocast": [1.6],
        "peer_bfloat16": [1.25],
    }
    details = {"runs": {"sample_b4": {}}}
    rows = bench_sampler._mixed_figures(cfg, "bench-tiny", 4, 8, 8, times, details, peak=1e12)
    by_name = {r["name"].split(", ", 1)[1]: r for r in rows}
    assert by_name["bf16 matmuls (float32 accumulation)"]["ratio"] == 1.6 / 0.5
    assert by_name["bf16 matmuls (float32 accumulation), one CPU device per core"]["ratio"] == 6.4
    fastest = by_name["each at its fastest setting"]
    assert fastest["ratio"] == 1.25 / 0.25 and fastest["note"] == "ours ahead"
    assert "peer_bfloat16" in fastest["peer_name"]
    flops = by_name["bf16 matmuls (float32 accumulation) FLOP/s vs bf16 peak"]
    assert flops["ratio"] == bc.decode_flops(cfg, 4, 8, 8) / 0.5 / 1e12
