"""`auto:GEN`: the smallest slice that fits, searched smallest first (on local CPU devices)."""

from girl_jax.parallel import plan as P
from girl_jax.parallel import plan_search as S
from girl_jax.parallel import plan_targets as T


def tiny_config(batch_size=8):
    return dict(
        mesh=dict(data=1, fsdp=-1, tensor=1),
        model=dict(
            family="llama", vocab_size=128, d_model=64, num_layers=2, num_heads=4,
            num_kv_heads=4, mlp_dim=128, max_len=32, dtype="bfloat16", remat=True,
            scan_layers=True,
        ),
        sft=dict(batch_size=batch_size, max_prompt_len=8, max_response_len=8, learning_rate=1e-3),
    )  # fmt: skip


def test_smallest_slice_rules_out_small_slices_without_compiling(monkeypatch):
    # "chips" of 1 KB but on 8 devices 1 GB: cpu:1 and cpu:2 cannot hold the arguments
    def capacity(topology, devices=None):
        return 1 << 30 if topology == "cpu:8" else 1024

    monkeypatch.setattr(T, "auto_candidates", lambda name: ["cpu:1", "cpu:3", "cpu:2", "cpu:8"])
    monkeypatch.setattr(T, "capacity_bytes", capacity)
    monkeypatch.setattr(P, "capacity_bytes", capacity)
    compiled = []
    real_plan_step = P.plan_step
    monkeypatch.setattr(
        P, "plan_step", lambda *a, **k: compiled.append(1) or real_plan_step(*a, **k)
    )
    rows = S.smallest_slice(tiny_config(), "auto:v5e", P.default_steps())
    assert [r["topology"] for r in rows] == ["cpu:1", "cpu:3", "cpu:2", "cpu:8"]
    assert "not compiled: the arguments alone need" in rows[0]["error"]
    assert "skipped" in rows[1]["error"] and "sft.batch_size=8" in rows[1]["error"]
    assert rows[0]["params"] > 0 and rows[0]["args_bytes"] > 1024
    assert rows[-1]["fits"] is True and rows[-1]["smallest"] is True and rows[-1]["error"] is None
    assert not any(r["smallest"] for r in rows[:-1])
    assert all(r["search"] == "auto:v5e" for r in rows)
    assert len(compiled) == 1  # only the slice that could hold the arguments was compiled
    table = P.format_plan_table(rows)
    assert "not compiled" in table and "GiB/dev" in table


def test_chips():
    assert S.chips("v5e:4x8") == 32 and S.chips("v5p:4x4x4") == 64
