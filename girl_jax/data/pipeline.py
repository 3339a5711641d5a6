"""Input pipeline on grain: shuffled, repeated, per-process sharded numpy batches.

`batch_size` is the GLOBAL batch size; each process yields `batch_size // shard_count` rows
per step (the driver assembles the global array from the per-process pieces). Rows are dealt
to processes round robin (row i goes to process i % shard_count) and every process gets the
same number, floor(N / shard_count), so no process runs out of batches before the others:
up to shard_count - 1 trailing rows are left out.

The returned iterator is checkpointable: `it.get_state()` is a small JSON-able dict and
`it.set_state(state)` on a freshly built iterator (same arrays and arguments) continues with
exactly the batches the saved one would have produced.
"""

import grain
import jax
import numpy as np

from girl_jax.errors import ConfigError, DataError


def _gather(arrays):
    def gather(indices_B):
        return {key: value[indices_B] for key, value in arrays.items()}

    return gather


def make_iterator(
    arrays,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool = True,
    num_epochs: int | None = None,
    shard_index: int | None = None,
    shard_count: int | None = None,
    drop_remainder: bool = True,
    prefetch: int = 4,
):
    """Builds a grain iterator of dict batches (numpy arrays, leading dim batch_size // shards).

    Args:
      arrays: name -> array, all with the same leading dimension N (one row per example).
      batch_size: the global batch size, divisible by shard_count.
      seed: shuffle seed; every epoch gets a different permutation derived from it.
      shuffle: False keeps the row order (evaluation).
      num_epochs: passes over the data; None repeats forever.
      shard_index, shard_count: this process and the number of processes; default
        jax.process_index() and jax.process_count().
      drop_remainder: drop a last partial batch (a partial batch means another jit shape).
      prefetch: batches prepared ahead by background threads (0: none).
    """
    if shard_index is None or shard_count is None:
        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    if not 0 <= shard_index < shard_count:
        raise ConfigError(f"shard_index={shard_index} is outside [0, shard_count={shard_count})")
    if batch_size < 1 or batch_size % shard_count:
        raise ConfigError(
            f"batch_size={batch_size} must be a positive multiple of the process count "
            f"{shard_count} (it is the global batch size)"
        )
    arrays = {key: np.asarray(value) for key, value in arrays.items()}
    if not arrays:
        raise DataError("pipeline: no arrays given")
    sizes = {key: value.shape[0] if value.ndim else None for key, value in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise DataError(f"pipeline: arrays differ in leading dimension: {sizes}")
    rows = next(iter(sizes.values()))
    per_process = batch_size // shard_count
    per_shard = rows // shard_count
    if per_shard == 0 or (drop_remainder and per_shard < per_process):
        raise DataError(
            f"pipeline: {rows} rows give {per_shard} per process, fewer than one batch of "
            f"{per_process} (batch_size={batch_size} over {shard_count} processes)"
        )

    ds = grain.MapDataset.range(rows)[shard_index : per_shard * shard_count : shard_count]
    if shuffle:
        ds = ds.shuffle(seed=seed)
    ds = ds.repeat(num_epochs).batch(per_process, drop_remainder=drop_remainder)
    ds = ds.map(_gather(arrays))
    options = grain.ReadOptions(num_threads=1 if prefetch else 0, prefetch_buffer_size=prefetch)
    return iter(ds.to_iter_dataset(options))
