"""Data layer: synthetic job market, schema + validated I/O, tokenizer, batches, input pipeline.

Submodules load on first use (`girl_jax.data.market`, `.io`, ...): importing the package costs
nothing, and it imports even while a submodule is missing.
"""

import importlib

from girl_jax.errors import DataError

__all__ = ["DataError"]


def __getattr__(name):
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{name}":
            raise  # the submodule exists but one of its own imports is missing
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
