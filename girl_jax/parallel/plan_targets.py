"""Plan targets: topology names, the devices to compile for, and each device's memory.

Names: `v5e:16x16`, `v5p:4x4x4`, `v6e:8x8`, `v4:2x2x1` (TPU, via libtpu: `pip install -e
'.[tpu]'`); `h100:1x8x8`, `h200:1x1x8`, `a100:2x4x8` (GPU: slices x hosts x GPUs per host,
via the CUDA compiler of `pip install -e '.[gpu-plan]'` and an XLA `GpuTargetConfigProto` in
`gpu_targets/`); `cpu:8` / `local` (this process's devices); `auto:v5e` (the smallest slice
that fits, searched by `girl_jax.stages.plans.plan`).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import re
from collections.abc import Sequence
from typing import Any

import jax

from girl_jax.errors import ConfigError

GiB = 1024**3
# HBM per chip / card (bytes). TPU figures are per chip (v4 / v5p chips are two-core megacore).
# GPU plans read the card's usable memory from its target spec (`device_memory_size`) instead.
HBM_BYTES = {
    "v4": 32 * GiB,
    "v5e": 16 * GiB,
    "v5litepod": 16 * GiB,
    "v5p": 95 * GiB,
    "v6e": 32 * GiB,
    "h100": 80 * GiB,
    "h200": 141 * GiB,
    "a100": 80 * GiB,
}
GPU_TARGETS_DIR = os.path.join(os.path.dirname(__file__), "gpu_targets")
GPU_TARGET_FILES = {
    "h100": "h100_sxm.txtpb",
    "h200": "h200_sxm.txtpb",
    "a100": "a100_sxm_80.txtpb",
}
TPU_GENERATIONS = ("v4", "v5e", "v5litepod", "v5p", "v6e")
# `auto:GEN` tries these slices, smallest first (chips = product of the dims).
AUTO_SLICES = {
    "v5e": ("2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
    "v6e": ("2x2", "2x4", "4x4", "4x8", "8x8", "8x16", "16x16"),
    "v5p": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8"),
    "v4": ("2x2x1", "2x2x2", "2x2x4", "2x4x4", "4x4x4", "4x4x8", "4x8x8", "8x8x8"),
}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A parsed topology name: `kind` is tpu, gpu, local or auto."""

    name: str
    kind: str
    generation: str
    dims: tuple[int, ...] = ()

    @property
    def devices(self) -> int:
        n = 1
        for d in self.dims:
            n *= d
        return n


def parse_topology(name: str) -> Topology:
    """`v5e:16x16` -> Topology(tpu, v5e, (16, 16)); ConfigError naming the expected form."""
    text = name.strip()
    gen, _, rest = text.partition(":")
    gen = gen.strip().lower()
    if gen in ("local", "cpu"):
        if rest and not rest.isdigit():
            raise ConfigError(f"topology {name!r}: use cpu:N (N local devices) or local")
        return Topology(text, "local", gen, (int(rest),) if rest else ())
    if gen == "auto":
        target = rest.strip().lower()
        if target not in AUTO_SLICES:
            raise ConfigError(
                f"topology {name!r}: auto:GEN searches one of {sorted(AUTO_SLICES)}, e.g. auto:v5e"
            )
        return Topology(text, "auto", target)
    if gen in GPU_TARGET_FILES:
        if not re.fullmatch(r"\d+x\d+x\d+", rest):
            raise ConfigError(
                f"topology {name!r}: a GPU topology is {gen}:SLICESxHOSTSxGPUS, e.g. {gen}:1x1x8 "
                "(one host of 8 GPUs) or {gen}:1x8x8 (8 hosts)".replace("{gen}", gen)
            )
        return Topology(text, "gpu", gen, tuple(int(d) for d in rest.split("x")))
    if gen in TPU_GENERATIONS:
        if not re.fullmatch(r"\d+(x\d+){1,2}", rest):
            raise ConfigError(f"topology {name!r} is not of the form type:AxB[xC], e.g. v5e:16x16")
        return Topology(text, "tpu", gen, tuple(int(d) for d in rest.split("x")))
    known = sorted({*TPU_GENERATIONS, *GPU_TARGET_FILES, "cpu", "local", "auto"})
    raise ConfigError(f"topology {name!r}: unknown device type {gen!r}; one of {known}")


@functools.cache
def gpu_target_config(generation: str) -> str:
    """The text `GpuTargetConfigProto` of a GPU generation (shipped in `gpu_targets/`)."""
    path = os.path.join(GPU_TARGETS_DIR, GPU_TARGET_FILES[generation])
    if not os.path.exists(path):
        raise ConfigError(
            f"no GPU target spec at {path}; GPU plans need one (see gpu_targets/README.md)"
        )
    with open(path) as f:
        return f.read()


def gpu_memory_bytes(generation: str) -> int:
    """The card's usable memory from its target spec (`device_memory_size`)."""
    match = re.search(r"device_memory_size:\s*(\d+)", gpu_target_config(generation))
    return int(match.group(1)) if match else HBM_BYTES[generation]


def gpu_compiler_available() -> bool:
    """Whether JAX's CUDA plugin (the GPU compiler, `[gpu-plan]` extra) is importable."""
    try:
        return importlib.util.find_spec("jax_plugins.xla_cuda12") is not None
    except (ImportError, ValueError):
        return False


def _gpu_missing(name: str) -> ConfigError:
    version = jax.__version__
    return ConfigError(
        f"topology {name!r}: the GPU compiler is not installed; "
        f"pip install -e '.[gpu-plan]' (jax-cuda12-plugin=={version} "
        f"jax-cuda12-pjrt=={version}) and plan with JAX_PLATFORMS=cpu"
    )


def capacity_bytes(topology: str, devices: Sequence[Any] | None = None) -> int | None:
    """Memory per device for a topology name (`v5e:16x16`, `h100:1x8x8`) or local devices."""
    gen = topology.split(":", 1)[0].strip().lower()
    if gen in GPU_TARGET_FILES and os.path.exists(
        os.path.join(GPU_TARGETS_DIR, GPU_TARGET_FILES[gen])
    ):
        return gpu_memory_bytes(gen)
    if gen in HBM_BYTES:
        return HBM_BYTES[gen]
    for device in devices or ():
        stats = getattr(device, "memory_stats", lambda: None)
        try:
            limit = (stats() or {}).get("bytes_limit")
        except Exception:  # noqa: BLE001 - CPU / topology devices have no stats
            limit = None
        if limit:
            return int(limit)
    return None


def topology_devices(name: str, *, num_slices: int = 1) -> list[Any]:
    """Devices of a target, for compiling only (see the module docstring for the names)."""
    topo = parse_topology(name)
    if topo.kind == "auto":
        raise ConfigError(f"topology {name!r}: auto is a search; plan it with stages.plans.plan")
    if topo.kind == "local":
        devices = jax.devices()
        if topo.dims:
            if topo.dims[0] > len(devices):
                raise ConfigError(f"topology {name!r}: only {len(devices)} local devices")
            devices = devices[: topo.dims[0]]
        return list(devices)
    from jax.experimental import topologies  # TPU/GPU AOT plans only (device plugins)

    if topo.kind == "gpu":
        target_config = gpu_target_config(topo.generation)
        if not gpu_compiler_available():
            raise _gpu_missing(name)
        try:
            desc = topologies.get_topology_desc(
                platform="cuda",
                topology_name="",
                target_config=target_config,
                topology="x".join(str(d) for d in topo.dims),
            )
        except NotImplementedError as exc:  # the cuda plugin did not register
            raise _gpu_missing(name) from exc
        except Exception as exc:  # noqa: BLE001 - a spec this XLA cannot parse, a bad shape
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise ConfigError(f"topology {name!r}: the GPU compiler refused it: {first}") from exc
        return list(desc.devices)
    kwargs: dict[str, Any] = {"num_slices": num_slices} if num_slices > 1 else {}
    if topo.generation == "v4":
        kwargs["chip_config_name"] = "megacore"
    try:
        desc = topologies.get_topology_desc(platform="tpu", topology_name=topo.name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - missing libtpu or unknown name
        raise ConfigError(
            f"topology {name!r}: cannot describe TPU devices ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); is 'jax[tpu]' installed?"
        ) from exc
    return list(desc.devices)


def auto_candidates(name: str) -> list[str]:
    """The slices `auto:GEN` searches, smallest first: `['v5e:2x2', ..., 'v5e:16x16']`."""
    topo = parse_topology(name)
    if topo.kind != "auto":
        raise ConfigError(f"topology {name!r} is not auto:GEN")
    return [f"{topo.generation}:{dims}" for dims in AUTO_SLICES[topo.generation]]


__all__ = [
    "AUTO_SLICES",
    "GPU_TARGET_FILES",
    "HBM_BYTES",
    "Topology",
    "auto_candidates",
    "capacity_bytes",
    "gpu_compiler_available",
    "gpu_memory_bytes",
    "gpu_target_config",
    "parse_topology",
    "topology_devices",
]
