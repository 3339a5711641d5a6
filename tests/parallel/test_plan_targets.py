"""Plan targets: topology names, GPU target specs and the one-line error without a GPU compiler."""

import pytest

from girl_jax.errors import ConfigError
from girl_jax.parallel import plan_targets as T

GIB = 1024**3


@pytest.mark.parametrize(
    "name, kind, gen, dims",
    [
        ("v5e:16x16", "tpu", "v5e", (16, 16)),
        ("v5p:4x4x4", "tpu", "v5p", (4, 4, 4)),
        ("h100:1x1x8", "gpu", "h100", (1, 1, 8)),
        ("H200:2x4x8", "gpu", "h200", (2, 4, 8)),
        ("a100:1x8x8", "gpu", "a100", (1, 8, 8)),
        ("cpu:4", "local", "cpu", (4,)),
        ("local", "local", "local", ()),
        ("auto:v5e", "auto", "v5e", ()),
    ],
)
def test_parse_topology(name, kind, gen, dims):
    topo = T.parse_topology(name)
    assert (topo.kind, topo.generation, topo.dims) == (kind, gen, dims)


def test_parse_topology_errors_say_the_form():
    with pytest.raises(ConfigError, match=r"h100:SLICESxHOSTSxGPUS, e\.g\. h100:1x1x8"):
        T.parse_topology("h100:8")
    with pytest.raises(ConfigError, match="type:AxB"):
        T.parse_topology("v5e:16")
    with pytest.raises(ConfigError, match="unknown device type 'tpu9'"):
        T.parse_topology("tpu9:2x2")
    with pytest.raises(ConfigError, match="auto:GEN"):
        T.parse_topology("auto:h100")


def test_auto_candidates_smallest_first():
    names = T.auto_candidates("auto:v5e")
    assert names[0] == "v5e:2x2" and names[-1] == "v5e:16x16"
    chips = [T.parse_topology(n).devices for n in names]
    assert chips == sorted(chips) and chips[-1] == 256


def test_gpu_specs_shipped_with_the_cards_memory():
    for gen, expected_gib in (("h100", 79.1), ("h200", 141.0), ("a100", 79.3)):
        text = T.gpu_target_config(gen)
        assert "Apache License" in text and "github.com/openxla/xla" in text
        assert "gpu_device_info" in text and 'platform_name: "CUDA"' in text
        assert T.gpu_memory_bytes(gen) / GIB == pytest.approx(expected_gib, abs=0.1)
        assert T.capacity_bytes(f"{gen}:1x1x8") == T.gpu_memory_bytes(gen)
    assert T.capacity_bytes("v5e:16x16") == 16 * GIB


def test_missing_gpu_compiler_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setattr(T, "gpu_compiler_available", lambda: False)
    with pytest.raises(ConfigError) as info:
        T.topology_devices("h100:1x1x8")
    message = str(info.value)
    assert "\n" not in message
    assert "GPU compiler is not installed" in message
    assert "[gpu-plan]" in message and "jax-cuda12-plugin==" in message
    assert "JAX_PLATFORMS=cpu" in message


@pytest.mark.skipif(T.gpu_compiler_available(), reason="the GPU compiler is installed here")
def test_without_the_plugin_a_gpu_plan_names_what_to_install():
    from girl_jax.parallel import plan

    config = dict(mesh=dict(data=1, fsdp=-1, tensor=1), sft=dict(batch_size=8))
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[gpu-plan\]'"):
        plan.plan_config(config, "a100:1x1x8")
