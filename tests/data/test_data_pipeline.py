"""grain input pipeline: checkpointable state, epochs, per-process shards, argument checks."""

import json

import numpy as np
import pytest

from girl_jax.data.pipeline import make_iterator
from girl_jax.errors import ConfigError, DataError


def arrays(n=40):
    return {"ids": np.arange(n * 3, dtype=np.int32).reshape(n, 3), "row": np.arange(n)}


def take(it, k):
    return [next(it) for _ in range(k)]


def test_state_round_trip_continues_exactly():
    it = make_iterator(arrays(), batch_size=6, seed=3, shard_index=0, shard_count=1)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # must survive a JSON file
    expected = take(it, 2)
    fresh = make_iterator(arrays(), batch_size=6, seed=3, shard_index=0, shard_count=1)
    fresh.set_state(state)
    got = take(fresh, 2)
    for a, b in zip(expected, got):
        assert a.keys() == b.keys()
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(got[0]["ids"], arrays()["ids"][got[0]["row"]])
    # A different seed gives a different order (the state is not the whole story).
    other = make_iterator(arrays(), batch_size=6, seed=4, shard_index=0, shard_count=1)
    other.set_state(state)
    assert not np.array_equal(next(other)["row"], expected[0]["row"])


def test_epochs_cover_every_row_once_and_reshuffle():
    it = make_iterator(arrays(40), batch_size=8, seed=0, num_epochs=2, shard_index=0, shard_count=1)
    rows = [b["row"] for b in it]
    assert len(rows) == 10 and all(r.shape == (8,) for r in rows)
    first, second = np.concatenate(rows[:5]), np.concatenate(rows[5:])
    assert sorted(first) == sorted(second) == list(range(40))
    assert not np.array_equal(first, second)
    ordered = make_iterator(
        arrays(10),
        batch_size=4,
        seed=0,
        shuffle=False,
        num_epochs=1,
        drop_remainder=False,
        shard_index=0,
        shard_count=1,
    )
    assert [list(b["row"]) for b in ordered] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]


def test_shards_are_disjoint_equal_and_cover_the_data():
    seen = []
    for index in range(2):
        it = make_iterator(
            arrays(40), batch_size=8, seed=1, num_epochs=1, shard_index=index, shard_count=2
        )
        batches = list(it)
        assert all(b["row"].shape == (4,) for b in batches)  # per-process = global // 2
        seen.append(np.concatenate([b["row"] for b in batches]))
    assert len(seen[0]) == len(seen[1]) == 20
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen)) == list(range(40))
    # With 41 rows both processes still get 20, so neither runs out before the other.
    sizes = [
        sum(
            len(b["row"])
            for b in make_iterator(
                arrays(41), batch_size=2, seed=1, num_epochs=1, shard_index=i, shard_count=2
            )
        )
        for i in range(2)
    ]
    assert sizes == [20, 20]


def test_defaults_use_the_jax_process():
    it = make_iterator(arrays(12), batch_size=4, seed=0, num_epochs=1, shuffle=False)
    assert sorted(np.concatenate([b["row"] for b in it])) == list(range(12))


def test_argument_errors():
    with pytest.raises(ConfigError, match="batch_size=6"):
        make_iterator(arrays(), batch_size=6, seed=0, shard_index=0, shard_count=4)
    with pytest.raises(ConfigError, match="shard_index=2"):
        make_iterator(arrays(), batch_size=4, seed=0, shard_index=2, shard_count=2)
    with pytest.raises(DataError, match="leading dimension"):
        make_iterator(
            {"a": np.zeros(4), "b": np.zeros(5)}, batch_size=2, seed=0, shard_count=1, shard_index=0
        )
    with pytest.raises(DataError, match="fewer than one batch"):
        make_iterator(arrays(6), batch_size=8, seed=0, shard_index=0, shard_count=1)
