"""One exception type per layer, each with a message a user can act on.

The CLI catches `GirlError` and prints its message on one line with a non-zero
exit code; anything else is a bug and keeps its traceback.
"""


class GirlError(Exception):
    """Base class of every error girl_jax raises on purpose."""


class ConfigError(GirlError):
    """A config key is unknown, out of range or inconsistent (names the key)."""


class DataError(GirlError):
    """User data is malformed (names the file, the 1-based line or record, and the field)."""


class CheckpointError(GirlError):
    """A checkpoint is missing, incomplete or does not match the model."""


class ModelError(GirlError):
    """A model directory or tensor does not match what the architecture expects."""


class NumericsError(GirlError):
    """A loss, gradient or reward is NaN / Inf: the update was refused."""


class DistributedError(GirlError):
    """A peer process is missing or died; raised instead of hanging."""
