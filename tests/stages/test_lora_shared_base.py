"""PPO with LoRA on a shared frozen base: only the adapters train, the reference is the actor with
its adapters off (no second decoder), and `girl plan`'s abstract state is the real one.

Tiny config (d 32, 2 layers, rank 4) on a 2 x 2 x 2 mesh of the 8 simulated devices.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from girl_jax import checkpoint as ckpt_mod
from girl_jax.configuration import load_config
from girl_jax.errors import ConfigError
from girl_jax.models import lora
from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common, plans, ppo, reward, sft

VOCAB = 128
RANK, ALPHA = 4, 8.0


def tiny_config(lora_rank=RANK, **ppo_kw):
    c = load_config("configs/default.py:smoke")
    c.model.update(d_model=32, num_layers=2, num_heads=2, max_len=64)
    c.model.update(lora_rank=lora_rank, lora_alpha=ALPHA)
    c.tokenizer.vocab_size = VOCAB
    c.sft.update(max_prompt_len=8, max_response_len=8)
    c.reward.update(head="last", match_features=False)
    c.ppo.update(batch_size=8, max_new_tokens=4, learning_rate=1e-3, **ppo_kw)
    c.mesh.update(data=2, fsdp=2, tensor=2)
    return c


def _mesh_rules(config):
    return mesh_mod.make_mesh(config.mesh), rules_mod.normalize_rules(config.logical_axis_rules)


def _abstract(config):
    return ppo.build_state(config, *_mesh_rules(config), vocab_size=VOCAB, abstract=True)


def _paths(tree):
    return [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def _layout(tree):
    return jax.tree.map(
        lambda x: (tuple(x.shape), jnp.dtype(x.dtype), tuple(x.sharding.spec)), tree
    )


def _host(tree):
    return jax.tree.map(np.asarray, tree)


def assert_opt_state_covers_adapters_only(actor):
    adapters, _ = lora.split_adapters(actor.params)
    moments = [
        (path, leaf)
        for path, leaf in zip(_paths(actor.opt_state), jax.tree.leaves(actor.opt_state))
        if leaf.ndim > 0
    ]
    # AdamW: mu and nu per adapter leaf, nothing for the base (scalars: counts, learning rate)
    assert moments and all("lora_a" in p or "lora_b" in p for p, _ in moments)
    shapes = sorted(tuple(x.shape) for x in jax.tree.leaves(adapters))
    assert sorted(tuple(x.shape) for _, x in moments) == sorted(shapes * 2)


def test_shared_base_is_the_lora_default_and_needs_adapters():
    shared = _abstract(tiny_config())
    assert shared.cfg.shared_base is True and shared.frozen.reference is None
    assert_opt_state_covers_adapters_only(shared.state.actor)
    plain = _abstract(tiny_config(lora_rank=0))
    assert plain.cfg.shared_base is False and plain.frozen.reference is not None
    # opting out with adapters: every Param trains again, against a separate reference
    opted_out = _abstract(tiny_config(shared_base=False))
    assert opted_out.cfg.shared_base is False and opted_out.frozen.reference is not None
    with pytest.raises(ConfigError, match="shared_base=True needs LoRA adapters"):
        _abstract(tiny_config(lora_rank=0, shared_base=True))


def test_plan_state_has_no_reference_copy_and_fewer_bytes():
    config = tiny_config()
    mesh, rules = _mesh_rules(config)
    planned = plans.build_ppo(config, mesh, rules)  # `girl plan`'s step
    state, frozen = planned.abstract_args[:2]
    assert frozen.reference is None
    assert_opt_state_covers_adapters_only(state.actor)
    assert planned.fn.keywords["cfg"].shared_base is True
    before = plans.build_ppo(tiny_config(shared_base=False), mesh, rules)
    state0, frozen0 = before.abstract_args[:2]
    _, base = lora.split_adapters(state.actor.params)
    saved = state_mod.state_bytes_total(frozen0.reference) + 2 * state_mod.state_bytes_total(base)
    got = state_mod.state_bytes_total((state, frozen))
    was = state_mod.state_bytes_total((state0, frozen0))
    assert got == was - saved  # no reference decoder, no AdamW moments for the base
    per_device = state_mod.state_bytes_per_device
    assert per_device((state, frozen)) < per_device((state0, frozen0))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """Final SFT (its adapters trained: B != 0) and reward stages of the tiny LoRA config."""
    config = tiny_config()
    path = tmp_path_factory.mktemp("lora_shared_base")
    mesh, rules = _mesh_rules(config)
    sft_state = sft.build_state(config, mesh, rules, vocab_size=VOCAB, abstract=False).state
    key = iter(jax.random.split(jax.random.key(7), 64))
    params = jax.tree_util.tree_map_with_path(
        lambda p, x: (
            x + 0.05 * jax.random.normal(next(key), x.shape, x.dtype)
            if "lora_b" in jax.tree_util.keystr(p)
            else x
        ),
        sft_state.params,
    )
    sft_state = sft_state.replace(params=params)
    rm_state = reward.build_state(config, mesh, rules, vocab_size=VOCAB, abstract=False).state
    for name, state in (("sft", sft_state), ("reward", rm_state)):
        ckpt = ckpt_mod.StageCheckpointer(str(path / name))
        ckpt.save(1, state, {})
        ckpt.mark_final(1)
        ckpt.close()
    return str(path), _host(sft_state.params)


def _logprobs(graphdef, params, ids, mask, P):
    logits = ppo.forward.response_logits(graphdef, params, ids, mask, P)
    return common.token_logprobs(logits, ids[:, P:])


def _ids(B=8, P=8, N=4, seed=0):
    rng = np.random.default_rng(seed)
    ids = jnp.asarray(rng.integers(2, VOCAB, (B, P + N)), jnp.int32)
    mask = np.ones((B, P + N), np.int32)
    mask[: B // 2, :3] = 0  # left padding
    return ids, jnp.asarray(mask), P


def test_real_state_is_the_abstract_one_and_starts_at_the_sft_model(workdir):
    path, sft_params = workdir
    config = tiny_config()
    abstract = _abstract(config)
    real = ppo.build_state(
        config, *_mesh_rules(config), vocab_size=VOCAB, abstract=False, workdir=path
    )
    assert real.frozen.reference is None and real.cfg.shared_base is True
    assert _layout(abstract.state) == _layout(real.state)
    assert _layout(abstract.frozen) == _layout(real.frozen)
    assert_opt_state_covers_adapters_only(real.state.actor)
    actor = real.state.actor.params
    adapters, base = lora.split_adapters(actor)
    # fresh adapters: B = 0, so actor == reference until the first update
    assert all(
        not np.any(np.asarray(x))
        for p, x in zip(_paths(adapters), jax.tree.leaves(adapters))
        if "lora_b" in p
    )
    # the base is the SFT model with its (trained) adapters folded in: the same function
    ids, mask, P = _ids()
    graph = real.graphs.actor
    sft_lp = _logprobs(graph, sft_params, ids, mask, P)
    ref = ppo.step.reference_params(actor, real.frozen)
    np.testing.assert_allclose(_logprobs(graph, ref, ids, mask, P), sft_lp, atol=1e-5)
    np.testing.assert_allclose(_logprobs(graph, actor, ids, mask, P), sft_lp, atol=1e-5)
    # kernels without an adapter (embeddings, norms) are the SFT model's, bit for bit
    _, sft_base = lora.split_adapters(sft_params)
    for p, a, b in zip(_paths(base), jax.tree.leaves(base), jax.tree.leaves(sft_base)):
        if "proj" not in p:
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=p)


class _Tok:
    eos_id, pad_id = 1, 0


def test_ppo_updates_train_adapters_only(workdir):
    path, _ = workdir
    config = tiny_config()
    mesh, rules = _mesh_rules(config)
    b = ppo.build_state(config, mesh, rules, vocab_size=VOCAB, abstract=False, workdir=path)
    scfg = ppo.sampling_config(b.cfg, _Tok(), greedy=False)
    step = jax.jit(  # as the driver runs it: sharded, the state donated
        functools.partial(
            ppo.step.train_step,
            graphs=b.graphs,
            cfg=b.cfg,
            scfg=scfg,
            actor_tx=b.actor_tx,
            critic_tx=b.critic_tx,
            controller=b.controller,
        ),
        in_shardings=(b.shardings, None, state_mod.batch_sharding(mesh), None),
        out_shardings=(b.shardings, None, None),
        donate_argnums=(0,),
    )
    ids, mask, P = _ids()
    batch = state_mod.put_batch({"prompt_ids": ids[:, :P], "prompt_mask": mask[:, :P]}, mesh)
    adapters0, base0 = map(_host, lora.split_adapters(b.state.actor.params))
    state, kls = b.state, []
    for i in range(3):
        state, m, _ = step(state, b.frozen, batch, jax.random.key(i))
        kls.append(float(m["kl"]))
        assert float(m["finite"]) == 1.0 and float(m["skipped"]) == 0.0
    assert abs(kls[0]) < 1e-6  # actor == reference at the first rollout
    assert int(state.actor.step) == 3 * b.cfg.epochs * b.cfg.minibatches
    adapters, base = lora.split_adapters(state.actor.params)
    for p, x, y in zip(_paths(base), jax.tree.leaves(base0), jax.tree.leaves(base)):
        np.testing.assert_array_equal(x, np.asarray(y), err_msg=p)  # bit-identical
    moved = [
        p
        for p, x, y in zip(_paths(adapters), jax.tree.leaves(adapters0), jax.tree.leaves(adapters))
        if np.any(x != np.asarray(y))
    ]
    assert any("lora_b" in p for p in moved) and any("lora_a" in p for p in moved)
    assert_opt_state_covers_adapters_only(state.actor)
    assert _layout(state) == _layout(b.state)
    assert kls[-1] > 0  # the adapters moved the policy away from the reference


def test_reference_logprobs_equal_the_base_only_decoder():
    cfg = DecoderConfig(
        family="llama", vocab_size=VOCAB, max_len=32, d_model=32, num_layers=2, num_heads=4,
        num_kv_heads=2, lora_rank=RANK, lora_alpha=ALPHA, scan_layers=True,
    )  # fmt: skip
    graph, params = nnx.split(Decoder(cfg, rngs=nnx.Rngs(0)), nnx.Param)
    key = iter(jax.random.split(jax.random.key(1), 64))
    params = jax.tree_util.tree_map_with_path(  # trained adapters: B != 0
        lambda p, x: jax.random.normal(next(key), x.shape) if "lora_b" in str(p) else x, params
    )
    _, base = lora.split_adapters(params)
    plain = Decoder(dataclasses.replace(cfg, lora_rank=0), rngs=nnx.Rngs(5))
    plain_graph, plain_params = nnx.split(plain, nnx.Param)
    assert jax.tree.structure(plain_params) == jax.tree.structure(base)
    ids, mask, P = _ids()
    frozen = ppo.state.Frozen(reference=None, reward=None)
    ref = _logprobs(graph, ppo.step.reference_params(params, frozen), ids, mask, P)
    np.testing.assert_allclose(ref, _logprobs(plain_graph, base, ids, mask, P), atol=1e-5)
    actor = _logprobs(graph, params, ids, mask, P)
    assert float(jnp.max(jnp.abs(actor - ref))) > 1e-2  # the adapters do change the policy
    # folding the adapters into the kernels keeps the function (the PPO actor's start)
    folded = lora.fold_adapters(params, ALPHA / RANK)
    np.testing.assert_allclose(_logprobs(graph, folded, ids, mask, P), actor, atol=1e-5)
    merged = lora.merge_lora(nnx.merge(graph, params))
    merged_graph, merged_params = nnx.split(merged, nnx.Param)
    np.testing.assert_allclose(
        _logprobs(merged_graph, merged_params, ids, mask, P), actor, atol=1e-5
    )


def test_value_head_critic_on_the_shared_base_traces():
    """critic=value_head: the value loss reaches the trunk through the adapters alone."""
    config = tiny_config(critic="value_head", advantage="gae", group_size=1)
    planned = plans.build_ppo(config, *_mesh_rules(config))
    state, metrics, _ = jax.eval_shape(planned.fn, *planned.abstract_args)
    assert planned.fn.keywords["cfg"].shared_base is True
    assert _paths(state) == _paths(planned.abstract_args[0])
    assert "value_loss" in metrics and "actor_grad_norm" in metrics
