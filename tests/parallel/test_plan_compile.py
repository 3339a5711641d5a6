"""Tiny shapes compiled for a GPU and a TPU topology, so `girl plan` cannot break unseen.

Needs the plan compilers (`pip install -e '.[tpu,gpu-plan]'`, `make test-plan`); each test
skips with the reason when its compiler is not importable.
"""

import importlib.util

import pytest

from girl_jax.parallel import plan as P
from girl_jax.parallel import plan_targets as T

GIB = 1024**3
needs_gpu = pytest.mark.skipif(
    not T.gpu_compiler_available(),
    reason="needs the GPU compiler: pip install -e '.[gpu-plan]' (jax-cuda12-plugin)",
)
needs_tpu = pytest.mark.skipif(
    importlib.util.find_spec("libtpu") is None,
    reason="needs libtpu for TPU topologies: pip install -e '.[tpu]'",
)


def tiny_config(batch_size=16, tensor=1):
    return dict(
        mesh=dict(data=1, fsdp=-1, tensor=tensor),
        model=dict(
            family="llama", vocab_size=128, d_model=64, num_layers=2, num_heads=4,
            num_kv_heads=2, mlp_dim=128, max_len=32, dtype="bfloat16", remat=True,
            scan_layers=True,
        ),
        sft=dict(batch_size=batch_size, max_prompt_len=8, max_response_len=8, learning_rate=1e-3),
    )  # fmt: skip


@needs_gpu
@pytest.mark.parametrize("topology, devices", [("h100:1x2x8", 16), ("a100:1x1x4", 4)])
def test_gpu_plan_compiles_tiny_step(topology, devices):
    rows = P.plan_config(tiny_config(tensor=2), topology)
    row = rows[0]
    assert row["devices"] == devices and row["mesh"]["tensor"] == 2
    assert row["capacity_bytes"] == T.gpu_memory_bytes(topology.split(":")[0])
    assert 0 < row["args_bytes"] <= row["total_bytes"] < 1 * GIB
    assert row["fits"] is True and row["flops"] is None  # no cost model on GPU
    assert row["compile_s"] < 60


@needs_gpu
def test_gpu_plan_over_capacity_lists_largest_arrays(monkeypatch):
    monkeypatch.setattr(T, "gpu_memory_bytes", lambda gen: 4096)
    rows = P.plan_config(tiny_config(), "h200:1x1x8")
    assert rows[0]["fits"] is False and rows[0]["capacity_bytes"] == 4096
    table = P.format_plan_table(rows)
    assert "NO" in table.splitlines()[2]
    assert "GiB/dev" in table and "params/" in table  # the largest arguments, by path


@needs_tpu
def test_tpu_plan_compiles_tiny_step():
    rows = P.plan_config(tiny_config(), "v5e:2x2")
    row = rows[0]
    assert row["devices"] == 4 and row["mesh"] == dict(data=1, fsdp=4, tensor=1)
    assert row["fits"] is True and row["capacity_bytes"] == 16 * GIB
    assert 0 < row["total_bytes"] < GIB and row["flops"] > 0
