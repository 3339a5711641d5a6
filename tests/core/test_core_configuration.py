"""Config loading: variants, typed overrides, clear errors naming the key."""

import pytest

from girl_jax.configuration import load_config
from girl_jax.errors import ConfigError


def test_variants_and_overrides():
    c = load_config(
        "configs/default.py:smoke", ["--config.ppo.kl_coef=0.1", "--config.sft.steps=7"]
    )
    assert c.ppo.kl_coef == 0.1 and c.sft.steps == 7
    assert load_config("configs/default.py").sft.steps > c.sft.steps
    c = load_config("configs/default.py", ["--config.ppo.whiten_advantages=false"])
    assert c.ppo.whiten_advantages is False
    c = load_config("configs/default.py", ["--config.recommend.predictors=['mlp']"])
    assert list(c.recommend.predictors) == ["mlp"]


@pytest.mark.parametrize(
    "override,match",
    [
        ("--config.ppo.klcoef=0.1", "config.ppo.klcoef"),
        ("--config.nope.x=1", "config.nope"),
        ("--config.sft.steps=-5", "config.sft.steps"),
        ("--config.sft.steps=abc", "config.sft.steps"),
        ("--config.ppo.whiten_advantages=maybe", "config.ppo.whiten_advantages"),
        ("--config.mesh.data=0", "config.mesh.data"),
        ("--config.ppo.minibatches=3", "config.ppo.minibatches"),
        ("--config.generate.repetition_penalty=0", "config.generate.repetition_penalty"),
        ("--config.generate.no_repeat_ngram_size=-1", "config.generate.no_repeat_ngram_size"),
        (
            "--config.generate.encoder_repetition_penalty=0",
            "config.generate.encoder_repetition_penalty",
        ),
    ],
)
def test_bad_overrides_name_the_key(override, match):
    with pytest.raises(ConfigError, match=match.replace(".", r"\.")):
        load_config("configs/default.py", [override])


def test_missing_file_and_bad_variant(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.py"))
    with pytest.raises(ConfigError, match="unknown variant"):
        load_config("configs/default.py:huge")
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(arg):\n    return 1/0\n")
    with pytest.raises(ConfigError, match="bad.py"):
        load_config(str(bad))


@pytest.mark.parametrize("name", ["default.py", "llama2_7b_ppo.py", "gpt2_xl_ppo.py"])
def test_every_config_loads_and_its_stage_configs_validate(name):
    from girl_jax.stages import ppo, recommend, reward, sft

    c = load_config(f"configs/{name}")
    sft.SFTConfig.from_config(c.sft)
    reward.RewardConfig.from_config(c.reward)
    ppo.PPOConfig.from_config(c.ppo)
    recommend.RecommendConfig.from_config(c.recommend)
