"""XLA flags for the processes the tests start: the suite's own flags with another device count.

tests/conftest.py sets XLA_FLAGS (8 simulated CPU devices and the backend optimisation level the
suite compiles at) before JAX starts; a `girl` subprocess, a multi-host worker or the notebook's
kernel must compile the same way, or results made in-process and in the subprocess differ.
"""

import os

DEVICE_FLAG = "--xla_force_host_platform_device_count"


def xla_flags(devices: int | None) -> str:
    """This process's XLA_FLAGS with `devices` simulated CPU devices (None: XLA's default, one)."""
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_FLAG)]
    if devices is not None:
        kept.append(f"{DEVICE_FLAG}={devices}")
    return " ".join(kept)
