"""Metrics against references; checkpoints: atomic JSON, save / restore, resume truncation."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from girl_jax import checkpoint, metrics
from girl_jax.errors import CheckpointError


def test_ece_against_loop_and_auc_logloss_against_definitions():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.3 + rng.random(500) * 0.7, 0, 1)
    bins = np.minimum((p * 10).astype(int), 9)
    ref = sum(
        (bins == b).mean() * abs(p[bins == b].mean() - y[bins == b].mean())
        for b in range(10)
        if (bins == b).any()
    )
    assert metrics.ece(y, p) == pytest.approx(ref, abs=1e-9)
    pos, neg = p[y == 1], p[y == 0]
    pairs = (pos[:, None] > neg[None]).mean() + 0.5 * (pos[:, None] == neg[None]).mean()
    assert metrics.auc(y, p) == pytest.approx(pairs, abs=1e-9)
    pc = np.clip(p, 1e-7, 1 - 1e-7)
    ll = -np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))
    assert metrics.logloss(y, p) == pytest.approx(ll, rel=1e-9)


def test_metric_writer_truncates_after_resume_step(tmp_path):
    w = metrics.MetricWriter(str(tmp_path))
    for s in (10, 20, 30):
        w.write(s, {"loss": s / 10})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 40, "loss"')  # a line cut by a kill
    w = metrics.MetricWriter(str(tmp_path), resume_step=20)
    w.write(30, {"loss": 9.0})
    w.close()
    steps = [r["step"] for r in metrics.read_metrics(str(tmp_path))]
    assert steps == [10, 20, 30]
    assert metrics.read_metrics(str(tmp_path))[-1]["loss"] == 9.0
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))


def test_write_json_atomic_keeps_old_file_on_failure(tmp_path):
    path = str(tmp_path / "x.json")
    checkpoint.write_json_atomic(path, {"a": 1})
    with pytest.raises(TypeError):
        checkpoint.write_json_atomic(path, {"a": object()})
    assert json.load(open(path)) == {"a": 1}
    assert os.listdir(tmp_path) == ["x.json"]


def test_save_restore_and_final_marker(tmp_path):
    tree = {"w": jnp.arange(6.0).reshape(2, 3), "step": jnp.asarray(3)}
    ck = checkpoint.StageCheckpointer(str(tmp_path), keep=2)
    for step in (1, 2, 3):
        scaled = jax.tree.map(lambda x, s=step: x * s, tree)
        ck.save(step, scaled, {"data_iterator": {"pos": step}})
    assert ck.latest_step() == 3
    assert sorted(ck.manager.all_steps()) == [2, 3]  # keep-last-K
    ck.save(3, tree)  # saving an existing step again is a no-op
    restored, extra = ck.restore(3, checkpoint.abstract_like(tree))
    np.testing.assert_array_equal(restored["w"], tree["w"] * 3)
    assert extra == {"data_iterator": {"pos": 3}}
    ck.mark_final(3, {"note": "x"})
    ck.close()
    state, _, final = checkpoint.restore_final_state(
        str(tmp_path), "x", checkpoint.abstract_like(tree)
    )
    assert final["step"] == 3
    with pytest.raises(CheckpointError, match="run `girl sft"):
        checkpoint.read_final(str(tmp_path / "nothing"), "sft")


def test_uncommitted_step_directory_is_ignored(tmp_path):
    tree = {"w": jnp.ones(3)}
    ck = checkpoint.StageCheckpointer(str(tmp_path))
    ck.save(1, tree)
    ck.close()
    # A step that a kill interrupted: Orbax writes into a tmp directory, then renames.
    os.makedirs(tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-123" / "state")
    ck = checkpoint.StageCheckpointer(str(tmp_path))
    assert ck.latest_step() == 1
    ck.close()


def test_restore_onto_another_mesh(tmp_path):
    from jax.sharding import NamedSharding, PartitionSpec

    from girl_jax.parallel.mesh import make_mesh

    m8 = make_mesh({"data": 8, "fsdp": 1, "tensor": 1})
    m2 = make_mesh({"data": 1, "fsdp": 2, "tensor": 4})
    x = jax.device_put(jnp.arange(64.0).reshape(8, 8), NamedSharding(m8, PartitionSpec("data")))
    ck = checkpoint.StageCheckpointer(str(tmp_path))
    ck.save(1, {"x": x})
    target = {
        "x": jax.ShapeDtypeStruct(
            (8, 8), jnp.float32, sharding=NamedSharding(m2, PartitionSpec("fsdp", "tensor"))
        )
    }
    out, _ = ck.restore(1, target)
    ck.close()
    assert out["x"].sharding.spec == PartitionSpec("fsdp", "tensor")
    np.testing.assert_array_equal(np.asarray(out["x"]), np.arange(64.0).reshape(8, 8))
