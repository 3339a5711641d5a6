"""The RL registry is a leaf: importing it loads no estimator; a lookup loads the built-ins."""

import subprocess
import sys

PROBE = """
import sys
import girl_jax.rl.registry as registry
before = sorted(m for m in sys.modules if m.startswith("girl_jax.rl"))
fn = registry.get("advantage", "grpo")
after = sorted(m for m in sys.modules if m.startswith("girl_jax.rl"))
import girl_jax.rl as rl
print(before)
print(after)
print(fn.__module__, rl.losses.masked_mean is rl.masked.masked_mean)
"""


def test_registry_import_is_a_leaf_and_lookup_loads_the_builtins():
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, check=True
    ).stdout.splitlines()
    assert out[0] == "['girl_jax.rl', 'girl_jax.rl.registry']"
    assert "'girl_jax.rl.advantages'" in out[1] and "'girl_jax.rl.masked'" in out[1]
    assert out[2] == "girl_jax.rl.advantages True"


def test_public_names_still_import_from_where_they_were():
    from girl_jax import rl
    from girl_jax.rl import advantages, filters, kl, losses, registry, shaping
    from girl_jax.rl.losses import masked_mean, masked_sum

    assert rl.advantages is advantages and rl.shaping is shaping and rl.filters is filters
    assert losses.masked_mean is masked_mean and losses.masked_sum is masked_sum
    assert set(registry.names("kl")) == {"k1", "k2", "k3"} and kl.FixedKLController
    assert {"advantages", "kl", "losses", "registry"} <= set(dir(rl))
