"""Ahead-of-time plans: memory / FLOPs from compiling for a target, without allocating."""

import gc
import json

import jax
import pytest

from girl_jax.errors import ConfigError
from girl_jax.parallel import plan as P
from girl_jax.parallel.mesh import make_mesh
from girl_jax.parallel.rules import replicated


def tiny_config(batch_size=8, fsdp=-1):
    return dict(
        mesh=dict(data=1, fsdp=fsdp, tensor=1),
        model=dict(
            family="llama", vocab_size=128, d_model=64, num_layers=2, num_heads=4,
            num_kv_heads=4, mlp_dim=128, max_len=32, dtype="bfloat16", remat=True,
            scan_layers=True,
        ),
        sft=dict(batch_size=batch_size, max_prompt_len=8, max_response_len=8, learning_rate=1e-3),
    )  # fmt: skip


def _has_tpu_compiler() -> bool:
    try:
        P.topology_devices("v5e:2x2")
    except ConfigError:
        return False
    return True


@pytest.mark.slow
def test_plan_step_on_local_devices_does_not_allocate():
    mesh = make_mesh(dict(fsdp=-1))
    gc.collect()  # arrays other tests left behind may be freed at any moment: compare identities
    before = {id(a) for a in jax.live_arrays()}
    planned = P.build_sft_like(tiny_config(), mesh, P.normalize_rules(None))
    row = P.plan_step(
        planned.fn,
        planned.abstract_args,
        mesh,
        in_shardings=planned.in_shardings,
        out_shardings=planned.out_shardings,
        donate_argnums=planned.donate_argnums,
        capacity=1 << 40,
    )
    new = [a.shape for a in jax.live_arrays() if id(a) not in before]
    assert not new, f"planning allocated arrays: {new}"
    assert row["args_bytes"] > 0 and row["total_bytes"] >= row["args_bytes"]
    assert row["fits"] is True and row["devices"] == 8
    # args are the sharded state + batch: far below the unsharded total
    params = sum(x.size for x in jax.tree.leaves(planned.abstract_args[0].params))
    assert row["args_bytes"] < 3 * 4 * params  # params + 2 Adam moments, f32, unsharded
    top = row["largest_arrays"][0]
    assert top["bytes_per_device"] >= row["largest_arrays"][-1]["bytes_per_device"]
    small = P.plan_step(
        planned.fn, planned.abstract_args, mesh, in_shardings=planned.in_shardings,
        out_shardings=planned.out_shardings, capacity=1024,
    )  # fmt: skip
    assert small["fits"] is False


def test_simple_fn_flops_and_memory():
    mesh = make_mesh(dict(data=-1))
    x = jax.ShapeDtypeStruct((64, 128), "float32", sharding=P.batch_sharding(mesh, 2))
    w = jax.ShapeDtypeStruct((128, 256), "float32", sharding=replicated(mesh))
    row = P.plan_step(
        lambda x, w: x @ w, (x, w), mesh, in_shardings=(x.sharding, w.sharding),
        out_shardings=P.batch_sharding(mesh, 2),
    )  # fmt: skip
    assert row["args_bytes"] == (8 * 128 + 128 * 256) * 4
    assert row["output_bytes"] == 8 * 256 * 4
    assert row["flops"] == pytest.approx(2 * 8 * 128 * 256, rel=0.05)


def test_capacity_table_and_topology_names():
    gib = 1024**3
    assert P.capacity_bytes("v5e:16x16") == 16 * gib
    assert P.capacity_bytes("v4:2x2x1") == 32 * gib
    assert P.capacity_bytes("v5p:4x4x4") == 95 * gib
    assert P.capacity_bytes("v6e:8x8") == 32 * gib
    # GPUs: the usable memory of the card's XLA target spec (an H100 SXM: 79.1 GiB)
    assert P.capacity_bytes("h100:1x32x8") == pytest.approx(79.1 * gib, rel=1e-3)
    assert len(P.topology_devices("cpu:4")) == 4
    with pytest.raises(ConfigError, match="type:AxB"):
        P.topology_devices("v5e:16")
    with pytest.raises(ConfigError, match="local devices"):
        P.topology_devices("cpu:64")


def test_plan_config_errors_name_keys():
    with pytest.raises(ConfigError, match=r"sft\.batch_size=6"):
        P.plan_config(tiny_config(batch_size=6), "cpu:8")
    with pytest.raises(ConfigError, match=r"mesh\.fsdp=3"):
        P.plan_config(tiny_config(fsdp=3), "cpu:8")


def test_table_and_json_render_rows():
    rows = [
        dict(step="sft_like", topology="v5e:2x2", mesh=dict(data=1, fsdp=4, tensor=1),
             params=12_345_678, args_bytes=2 * 1024**3, temp_bytes=1024**3, output_bytes=0,
             total_bytes=3 * 1024**3, capacity_bytes=16 * 1024**3, fits=True, flops=3e12,
             compile_s=1.5, error=None, largest_arrays=[]),
        dict(step="ppo", topology="v5e:2x2", mesh=dict(data=1, fsdp=4, tensor=1), params=1,
             args_bytes=None, temp_bytes=None, output_bytes=None, total_bytes=None,
             capacity_bytes=16 * 1024**3, fits=False, flops=None, compile_s=2.0,
             error="RESOURCE_EXHAUSTED: out of HBM"),
    ]  # fmt: skip
    table = P.format_plan_table(rows)
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["step", "topology", "mesh"]
    assert "1x4x1" in lines[2] and "3.00" in lines[2] and "yes" in lines[2] and "12.3M" in lines[2]
    assert "NO" in lines[3] and "RESOURCE_EXHAUSTED" in table
    assert json.loads(P.plan_to_json(rows))[0]["total_bytes"] == 3 * 1024**3


@pytest.mark.slow
@pytest.mark.skipif(not _has_tpu_compiler(), reason="needs jax[tpu] (libtpu) for TPU topologies")
def test_plan_config_for_v5e_2x2():
    rows = P.plan_config(tiny_config(), "v5e:2x2")
    assert [r["step"] for r in rows] == ["sft_like"]
    row = rows[0]
    assert row["devices"] == 4 and row["mesh"] == dict(data=1, fsdp=4, tensor=1)
    assert row["fits"] is True and row["capacity_bytes"] == 16 * 1024**3
    assert 0 < row["total_bytes"] < 16 * 1024**3
    assert row["flops"] > 0 and row["compile_s"] < 60
    assert row["params"] > 0
    assert "v5e:2x2" in P.format_plan_table(rows)


def test_custom_step_hook():
    calls = []

    def build(config, mesh, rules):
        calls.append(dict(mesh.shape))
        x = jax.ShapeDtypeStruct((8, 4), "float32", sharding=P.batch_sharding(mesh, 2))
        return P.PlannedStep(
            fn=lambda x: x * 2, abstract_args=(x,), in_shardings=(x.sharding,),
            out_shardings=x.sharding, donate_argnums=(),
        )  # fmt: skip

    rows = P.plan_config(tiny_config(), "cpu:8", {"reward": P.StepSpec(build, "sft.batch_size")})
    assert calls == [dict(data=1, fsdp=8, tensor=1)]
    assert rows[0]["step"] == "reward" and rows[0]["args_bytes"] == 4 * 4
