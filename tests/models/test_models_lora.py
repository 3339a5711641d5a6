"""LoRA: adapters start as identity, train alone, merge exactly, export to transformers."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from girl_jax.models import hub
from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.models.lora import BASE_PARAMS, LoRALinear, LoRAParam, merge_lora


def _cfg(**kw):
    base = dict(
        family="llama",
        vocab_size=41,
        max_len=32,
        d_model=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        lora_rank=4,
        lora_alpha=8.0,
    )
    return DecoderConfig(**{**base, **kw})


def _ids(seed=0):
    return jnp.asarray(np.random.default_rng(seed).integers(1, 41, size=(2, 6)), jnp.int32)


def _copy_base(src, dst):
    """Give `dst` (no LoRA) the base weights of `src` (with LoRA)."""
    from girl_jax.models.hf_decoder import flat_params, load_params

    flat = {p: v for p, v in flat_params(src).items() if p[-1] not in ("lora_a", "lora_b")}
    return load_params(dst, flat)


def test_adapters_start_as_identity():
    cfg = _cfg()
    adapted = Decoder(cfg, rngs=nnx.Rngs(0))
    assert isinstance(adapted.layers[0].attn.q_proj, LoRALinear)
    base = _copy_base(adapted, Decoder(dataclasses.replace(cfg, lora_rank=0), rngs=nnx.Rngs(1)))
    np.testing.assert_allclose(
        np.asarray(adapted(_ids())[0]), np.asarray(base(_ids())[0]), atol=1e-6
    )


def _train(model, steps=3):
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=LoRAParam)

    @nnx.jit
    def step(model, opt, ids):
        def loss(m):
            logits, _ = m(ids)
            return -jnp.mean(jax.nn.log_softmax(logits)[..., 3])

        grads = nnx.grad(loss, argnums=nnx.DiffState(0, LoRAParam))(model)
        opt.update(model, grads)

    for _ in range(steps):
        step(model, opt, _ids())
    return model


@pytest.mark.parametrize("scan", [False, True])
def test_only_adapters_train_and_merge_is_exact(scan):
    model = Decoder(_cfg(scan_layers=scan), rngs=nnx.Rngs(2))
    base_before = jax.tree.map(np.array, nnx.state(model, BASE_PARAMS))
    lora_before = jax.tree.map(np.array, nnx.state(model, LoRAParam))
    _train(model)
    base_after = jax.tree.map(np.array, nnx.state(model, BASE_PARAMS))
    for a, b in zip(jax.tree.leaves(base_before), jax.tree.leaves(base_after)):
        np.testing.assert_array_equal(a, b)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(lora_before),
            jax.tree.leaves(jax.tree.map(np.array, nnx.state(model, LoRAParam))),
        )
    ]
    assert all(changed)
    merged = merge_lora(model)
    assert merged.cfg.lora_rank == 0 and not jax.tree.leaves(nnx.state(merged, LoRAParam))
    diff = jnp.abs(merged(_ids(1))[0] - model(_ids(1))[0]).max()
    assert float(diff) <= 1e-5
    # and the merge actually moved the kernels
    assert (
        float(
            jnp.abs(
                merged(_ids(1))[0]
                - _copy_base(model, Decoder(merged.cfg, rngs=nnx.Rngs(0)))(_ids(1))[0]
            ).max()
        )
        > 1e-4
    )


def test_lora_targets_subset():
    model = Decoder(_cfg(lora_targets=("q_proj", "v_proj")), rngs=nnx.Rngs(0))
    attn = model.layers[0].attn
    assert isinstance(attn.q_proj, LoRALinear) and isinstance(attn.v_proj, LoRALinear)
    assert not isinstance(attn.k_proj, LoRALinear)
    assert not isinstance(model.layers[0].mlp.up_proj, LoRALinear)


def test_merged_export_loads_in_transformers(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = _train(Decoder(_cfg(), rngs=nnx.Rngs(3)))
    out = hub.save_pretrained(model, tmp_path / "lora_export")
    hf_model, info = transformers.AutoModelForCausalLM.from_pretrained(
        out, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = _ids(2)
    with torch.no_grad():
        ref = hf_model.eval()(input_ids=torch.tensor(np.asarray(ids))).logits.numpy()
    assert float(np.abs(np.asarray(model(ids)[0]) - ref).max()) <= 1e-4
