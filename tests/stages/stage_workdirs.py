"""Workdirs the stage tests share: prepared data and a final, untrained SFT model."""

from girl_jax import checkpoint as ckpt_mod
from girl_jax.data import prepare
from girl_jax.parallel import mesh as mesh_mod
from girl_jax.parallel import rules as rules_mod
from girl_jax.parallel import state as state_mod
from girl_jax.stages import common, sft


def untrained_sft_workdir(config, workdir: str) -> int:
    """Prepares `workdir`'s data and saves an untrained SFT model as the stage's final one (the
    trunk's quality does not matter to the tests that use it); returns the vocabulary size."""
    prepare.prepare(config, workdir)
    vocab = prepare.load(workdir).tokenizer.vocab_size
    _, model_fn = sft.build_model_fn(config, vocab, config.seed)
    s = config.sft
    tx = common.make_optimizer(  # as sft.load_final_params builds it
        s.learning_rate,
        s.steps,
        warmup_steps=s.warmup_steps,
        weight_decay=s.weight_decay,
        grad_clip=s.grad_clip,
    )
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    _, state, _ = state_mod.create_train_state(model_fn, tx, mesh, rules, seed=config.seed)
    ckpt = ckpt_mod.StageCheckpointer(common.stage_dir(workdir, "sft"))
    ckpt.save(0, state, {})
    ckpt.mark_final(0)
    ckpt.close()
    return vocab
