"""One state builder per stage: `build_state(..., abstract=True)` is the real state's layout.

For SFT, the reward model and PPO on a tiny config over a 2 x 2 x 2 mesh of the 8 simulated
devices: the abstract state (ShapeDtypeStructs) has the tree, shapes, dtypes and shardings of
the real one the driver trains; `girl plan` (stages/plans.py) compiles that same state; the
final-model loaders restore through it (and the PPO actor's loader builds the actor alone).
"""

import os
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from girl_jax import checkpoint as ckpt_mod
from girl_jax.configuration import load_config
from girl_jax.models.decoder import Decoder
from girl_jax.models.heads import RewardModel, ScalarHead, ScoreModel
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common, plans, ppo, reward, sft

VOCAB = 128


def tiny_config(head="attn_mlp", critic="separate", ensemble=False):
    c = load_config("configs/default.py:smoke")
    c.model.update(d_model=32, num_layers=2, num_heads=2, max_len=64)
    c.tokenizer.vocab_size = VOCAB
    c.sft.update(max_prompt_len=8, max_response_len=8)
    c.reward.update(head=head, head_hidden=16)
    if head not in ("pooled_mlp", "attn_mlp"):
        c.reward.match_features = False  # match flags need an MLP head
    c.ppo.update(batch_size=8, max_new_tokens=4, critic=critic)
    if ensemble:
        c.reward.update(ensemble_size=2, steps=0)
        c.ppo.reward = "ensemble"
    c.mesh.update(data=2, fsdp=2, tensor=2)
    return c


def _mesh_rules(config):
    return mesh_mod.make_mesh(config.mesh), rules_mod.normalize_rules(config.logical_axis_rules)


def _layout(tree):
    """Per leaf: (shape, dtype, mesh axes, partition spec); arrays and ShapeDtypeStructs alike."""
    return jax.tree.map(
        lambda x: (
            tuple(x.shape),
            jnp.dtype(x.dtype),
            tuple(x.sharding.mesh.shape.items()),
            tuple(x.sharding.spec),
        ),
        tree,
    )


def _specs(tree):
    """Per leaf: (mesh axes, partition spec) of a NamedSharding, or of a leaf's sharding."""

    def spec(x):
        sharding = x if isinstance(x, NamedSharding) else x.sharding
        return tuple(sharding.mesh.shape.items()), tuple(sharding.spec)

    return jax.tree.map(spec, tree, is_leaf=lambda x: isinstance(x, NamedSharding))


def _is_spec(x):
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[1], tuple)


def assert_same_layout(abstract, concrete):
    assert jax.tree.structure(abstract) == jax.tree.structure(concrete)
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))
    assert all(isinstance(x, jax.Array) for x in jax.tree.leaves(concrete))
    assert _layout(abstract) == _layout(concrete)


def assert_equal_arrays(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _build_both(build_state, config):
    mesh, rules = _mesh_rules(config)
    abstract = build_state(config, mesh, rules, vocab_size=VOCAB, abstract=True)
    concrete = build_state(config, mesh, rules, vocab_size=VOCAB, abstract=False)
    return abstract, concrete


def test_sft_abstract_state_is_the_real_one():
    config = tiny_config()
    abstract, concrete = _build_both(sft.build_state, config)
    assert_same_layout(abstract.state, concrete.state)
    assert _specs(abstract.shardings) == _specs(abstract.state)
    used = {
        a
        for _, spec in jax.tree.leaves(_specs(concrete.state.params), is_leaf=_is_spec)
        for axes in spec
        if axes
        for a in ((axes,) if isinstance(axes, str) else axes)
    }
    assert {"fsdp", "tensor"} <= used  # the layouts compared are really sharded
    assert abstract.graphdef == concrete.graphdef
    # the real state is the one the driver made before build_state: same seed, same optimizer
    mesh, rules = _mesh_rules(config)
    mcfg = common.decoder_config(config, VOCAB)
    _, before, _ = state_mod.create_train_state(
        lambda r: Decoder(mcfg, rngs=r), concrete.tx, mesh, rules, seed=config.seed
    )
    assert_equal_arrays(concrete.state, before)


@pytest.mark.parametrize("head", ["attn_mlp", "last"])
def test_reward_abstract_state_is_the_real_one(head):
    config = tiny_config(head=head)
    abstract, concrete = _build_both(reward.build_state, config)
    assert_same_layout(abstract.state, concrete.state)
    assert abstract.graphdef == concrete.graphdef
    model = nnx.merge(concrete.graphdef, concrete.state.params)
    assert isinstance(model, RewardModel) and model.reward_head.head == head
    mesh, rules = _mesh_rules(config)
    _, model_fn = reward.build_model_fn(config, VOCAB, config.seed)
    _, before, _ = state_mod.create_train_state(
        model_fn, concrete.tx, mesh, rules, seed=config.seed
    )
    assert_equal_arrays(concrete.state, before)


def _finished_workdir(config, tmp_path):
    """A workdir whose sft and reward stages are final (their freshly initialised states)."""
    mesh, rules = _mesh_rules(config)
    saved = {}
    for name, builder in (("sft", sft.build_state), ("reward", reward.build_state)):
        built = builder(config, mesh, rules, vocab_size=VOCAB, abstract=False)
        ckpt = ckpt_mod.StageCheckpointer(str(tmp_path / name))
        ckpt.save(1, built.state, {})
        ckpt.mark_final(1)
        ckpt.close()
        saved[name] = built
    if config.ppo.reward == "ensemble":
        abstract = reward._abstract_heads(config, VOCAB, 2)
        stacked = jax.tree.map(lambda a: jnp.full(a.shape, 0.5, a.dtype), abstract)
        reward.save_ensemble(str(tmp_path / "reward" / reward.ENSEMBLE_DIR), stacked, {"size": 2})
    return str(tmp_path), saved


def _ppo_both(config, tmp_path):
    workdir, saved = _finished_workdir(config, tmp_path)
    mesh, rules = _mesh_rules(config)
    abstract = ppo.build_state(config, mesh, rules, vocab_size=VOCAB, abstract=True)
    concrete = ppo.build_state(
        config, mesh, rules, vocab_size=VOCAB, abstract=False, workdir=workdir
    )
    return abstract, concrete, saved, workdir


@pytest.mark.parametrize(
    "head,critic,ensemble",
    [("attn_mlp", "separate", False), ("last", "value_head", False), ("mean", "separate", True)],
)
def test_ppo_abstract_state_is_the_real_one(head, critic, ensemble, tmp_path):
    config = tiny_config(head=head, critic=critic, ensemble=ensemble)
    abstract, concrete, saved, workdir = _ppo_both(config, tmp_path)
    assert_same_layout(abstract.state, concrete.state)
    assert_same_layout(abstract.frozen, concrete.frozen)
    assert _specs(abstract.shardings) == _specs(abstract.state)
    assert _specs(abstract.frozen_shardings) == _specs(concrete.frozen)
    assert (concrete.frozen.ensemble is not None) == ensemble
    for role in ("actor", "critic", "reward"):
        assert getattr(abstract.graphs, role) == getattr(concrete.graphs, role)
    critic_cls = ScalarHead if critic == "value_head" else ScoreModel
    assert isinstance(nnx.merge(concrete.graphs.critic, concrete.state.critic.params), critic_cls)
    # the actor and the reference start as the final SFT model, the reward model is the RM's
    assert_equal_arrays(concrete.state.actor.params, saved["sft"].state.params)
    assert_equal_arrays(concrete.frozen.reference, saved["sft"].state.params)
    assert_equal_arrays(concrete.frozen.reward, saved["reward"].state.params)
    # the driver's `build` is build_state(abstract=False)
    _, graphs, state, shardings, _, txs = ppo.build(config, workdir, _data(), *_mesh_rules(config))
    assert graphs == concrete.graphs and len(txs) == 3
    assert_equal_arrays(state, concrete.state)
    assert _specs(shardings) == _specs(abstract.state)


def _data():
    return types.SimpleNamespace(tokenizer=types.SimpleNamespace(vocab_size=VOCAB))


@pytest.mark.parametrize("head", ["attn_mlp", "last"])
def test_ppo_plan_is_the_abstract_state(head):
    config = tiny_config(head=head)
    mesh, rules = _mesh_rules(config)
    planned = plans.build_ppo(config, mesh, rules)
    built = ppo.build_state(config, mesh, rules, vocab_size=VOCAB, abstract=True)
    state, frozen = planned.abstract_args[:2]
    assert _layout(state) == _layout(built.state)
    assert _layout(frozen) == _layout(built.frozen)
    assert planned.in_shardings[:2] == (built.shardings, built.frozen_shardings)
    # the plan's reward model is the reward stage's state with the configured head
    rm = reward.build_state(config, mesh, rules, vocab_size=VOCAB, abstract=True)
    assert _layout(frozen.reward) == _layout(rm.state.params)
    graphs = planned.fn.keywords["graphs"]
    assert graphs.reward == rm.graphdef
    assert nnx.merge(graphs.reward, frozen.reward).reward_head.head == head


def test_sft_and_reward_plans_are_the_abstract_states():
    config = tiny_config()
    mesh, rules = _mesh_rules(config)
    for build_plan, builder in (
        (plans.build_sft, sft.build_state),
        (plans.build_reward, reward.build_state),
    ):
        planned = build_plan(config, mesh, rules)
        built = builder(config, mesh, rules, vocab_size=VOCAB, abstract=True)
        assert _layout(planned.abstract_args[0]) == _layout(built.state)
        assert planned.in_shardings[0] == built.shardings
        assert planned.fn.keywords["graphdef"] == built.graphdef


def test_final_loaders_restore_through_the_builders(tmp_path, monkeypatch):
    config = tiny_config()
    workdir, saved = _finished_workdir(config, tmp_path)
    for loader, name in ((sft.load_final_params, "sft"), (reward.load_final_params, "reward")):
        graphdef, params = loader(workdir, config, VOCAB)
        assert graphdef == saved[name].graphdef
        assert _layout(params) == _layout(saved[name].state.params)
        assert_equal_arrays(params, saved[name].state.params)
    # the PPO actor alone: no other role is built or read
    mesh, rules = _mesh_rules(config)
    state = ppo.build_state(config, mesh, rules, vocab_size=VOCAB, abstract=False, workdir=workdir)
    ckpt = ckpt_mod.StageCheckpointer(os.path.join(workdir, "ppo"))
    ckpt.save(1, state.state, {})
    ckpt.mark_final(1)
    ckpt.close()

    def refuse(*a, **k):
        raise AssertionError("load_final_actor built more than the actor")

    for module, name in (
        (ppo.driver, "build_state"),
        (ppo.driver, "build_roles"),
        (sft, "load_final_params"),
        (reward, "load_final_params"),
        (reward, "build_state"),
        (reward.state, "build_state"),
    ):
        monkeypatch.setattr(module, name, refuse)
    graphdef, params = ppo.load_final_actor(workdir, config, _data(), mesh, rules)
    assert graphdef == state.graphs.actor
    assert _layout(params) == _layout(state.state.actor.params)
    assert_equal_arrays(params, state.state.actor.params)
