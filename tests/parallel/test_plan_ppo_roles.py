"""The PPO plan holds the roles the PPO stage trains: the reward model is the configured head."""

import importlib.util
import os

import jax
import pytest
from flax import nnx

from girl_jax.models.heads import RewardModel, ScalarHead, ScoreModel
from girl_jax.parallel import plan_targets as T
from girl_jax.parallel.mesh import make_mesh
from girl_jax.parallel.rules import normalize_rules
from girl_jax.stages import plans
from girl_jax.stages import reward as reward_stage

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(path, arg=None):
    spec = importlib.util.spec_from_file_location("_cfg", os.path.join(ROOT, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def tiny_ppo_config(head="attn_mlp", critic="separate"):
    c = load_config("configs/default.py", "smoke")
    c.model.update(d_model=32, num_layers=2, num_heads=2, max_len=64)
    c.tokenizer.vocab_size = 128
    c.sft.update(max_prompt_len=8, max_response_len=8)
    c.reward.update(head=head, head_hidden=16)
    if head not in ("pooled_mlp", "attn_mlp"):
        c.reward.match_features = False  # match flags need an MLP head
    c.ppo.update(batch_size=8, max_new_tokens=4, critic=critic)
    c.mesh.update(data=-1, fsdp=1, tensor=1)
    return c


def _build(config):
    mesh = make_mesh(config.mesh)
    return plans.build_ppo(config, mesh, normalize_rules(config.logical_axis_rules))


def _structure(tree):
    return jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), tree)


@pytest.mark.parametrize("head", ["attn_mlp", "mean"])
def test_ppo_plan_reward_model_is_the_configured_head(head):
    config = tiny_ppo_config(head=head)
    planned = _build(config)
    frozen = planned.abstract_args[1]
    graphs = planned.fn.keywords["graphs"]
    # the reward stage's own builder, as `reward.load_final_params` restores it
    _, model_fn = reward_stage.build_model_fn(config, 128, config.seed)
    expected = nnx.state(nnx.eval_shape(lambda: model_fn(nnx.Rngs(0))), nnx.Param)
    assert _structure(frozen.reward) == _structure(expected)
    model = nnx.merge(graphs.reward, frozen.reward)
    assert isinstance(model, RewardModel) and model.reward_head.head == head
    head_params = nnx.state(model.reward_head, nnx.Param)
    names = {
        jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(head_params)[0]
    }
    if head == "attn_mlp":
        assert any("query_jd" in n for n in names) and any("hidden" in n for n in names)
    else:
        assert not any("query_jd" in n for n in names)
    assert f"head {head}" in planned.note
    # the reference is the actor's decoder, without optimizer state
    actor = planned.abstract_args[0].actor
    assert _structure(frozen.reference) == _structure(actor.params)


def test_ppo_plan_critic_follows_ppo_critic():
    separate = _build(tiny_ppo_config(critic="separate"))
    head = _build(tiny_ppo_config(critic="value_head"))
    for planned, cls in ((separate, ScoreModel), (head, ScalarHead)):
        graphs = planned.fn.keywords["graphs"]
        critic = planned.abstract_args[0].critic
        assert isinstance(nnx.merge(graphs.critic, critic.params), cls)


@pytest.mark.slow
@pytest.mark.skipif(
    not T.gpu_compiler_available(), reason="needs the GPU compiler: pip install -e '.[gpu-plan]'"
)
def test_tiny_ppo_plan_compiles_for_gpu():
    config = tiny_ppo_config()
    config.ppo.update(epochs=1, minibatches=1)  # one update: the compile stays under a minute
    rows = plans.plan(config, "h100:1x1x8", ("ppo",))
    assert rows[0]["fits"] is True and rows[0]["devices"] == 8


def test_llama2_70b_config_variants():
    full = load_config("configs/llama2_70b_ppo.py")
    lora = load_config("configs/llama2_70b_ppo.py", "lora")
    assert full.model.d_model == 8192 and full.model.num_layers == 80
    assert (full.model.num_heads, full.model.num_kv_heads, full.model.mlp_dim) == (64, 8, 28672)
    assert full.model.vocab_size == 32000 and full.model.lora_rank == 0
    assert lora.model.lora_rank > 0
    with pytest.raises(ValueError, match="unknown variant"):
        load_config("configs/llama2_70b_ppo.py", "qlora")
