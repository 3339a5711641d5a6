"""Mixed precision: `DecoderConfig.matmul_dtype="bfloat16"` multiplies bf16 operands with float32
accumulation in the projections and the LM head; everything else (params, norms, attention,
residual stream, logits) stays float32."""

import dataclasses

import jax
import jax.extend.core
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx

from girl_jax.configuration import load_config
from girl_jax.errors import ConfigError
from girl_jax.models import layers
from girl_jax.models.decoder import Decoder, DecoderConfig
from girl_jax.models.lora import LoRALinear
from girl_jax.stages import common


def _cfg(**kw):
    base = dict(family="gpt2", vocab_size=61, max_len=32, d_model=32, num_layers=2, num_heads=4)
    return DecoderConfig(**{**base, **kw})


def test_matmul_is_the_float32_product_of_bf16_rounded_operands():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 48)).astype(np.float32)
    w = rng.standard_normal((48, 7)).astype(np.float32)
    got = np.asarray(layers.matmul(jnp.asarray(x), jnp.asarray(w), jnp.float32, "bfloat16"))
    xr = x.astype(ml_dtypes.bfloat16).astype(np.float64)
    wr = w.astype(ml_dtypes.bfloat16).astype(np.float64)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, xr @ wr, rtol=1e-5, atol=1e-5)
    # and not the float32 product (the operands really were rounded)
    assert np.abs(got - x.astype(np.float64) @ w).max() > 1e-3
    # the same dtype (or None) is the plain product
    same = layers.matmul(jnp.asarray(x), jnp.asarray(w), jnp.float32, "float32")
    np.testing.assert_array_equal(np.asarray(same), np.asarray(jnp.asarray(x) @ jnp.asarray(w)))


def _dots(jaxpr):
    """Every dot_general of a jaxpr, nested calls included: (lhs dtype, rhs dtype, preferred)."""
    out = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            lhs, rhs = (v.aval.dtype for v in eqn.invars)
            out.append((lhs, rhs, eqn.params.get("preferred_element_type")))
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
            out += _dots(sub)
    return out


def test_bf16_dot_with_float32_accumulation_in_the_program():
    model = Decoder(_cfg(matmul_dtype="bfloat16"), rngs=nnx.Rngs(0))
    ids = jnp.ones((2, 5), jnp.int32)
    dots = _dots(jax.make_jaxpr(lambda i: model(i)[0])(ids).jaxpr)
    mixed = [d for d in dots if d == (jnp.bfloat16, jnp.bfloat16, jnp.float32)]
    # 4 projections + 2 MLP per layer, and the LM head; the attention's 2 per layer stay float32
    assert len(mixed) == 2 * 6 + 1, dots
    assert len(dots) - len(mixed) == 2 * 2, dots


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_decoder_close_to_float32_params_stay_float32(family):
    f32 = Decoder(_cfg(family=family), rngs=nnx.Rngs(1))
    graphdef, params = nnx.split(f32)
    mixed_graph, _ = nnx.split(
        Decoder(_cfg(family=family, matmul_dtype="bfloat16"), rngs=nnx.Rngs(1))
    )
    ids = jnp.asarray(np.random.default_rng(0).integers(1, 61, (3, 9)), jnp.int32)
    mask = jnp.ones_like(ids)

    def loss(p, g):
        logits, _ = nnx.merge(g, p)(ids, mask)
        return jax.nn.log_softmax(logits)[..., 3].mean(), logits

    (l32, z32), g32 = jax.value_and_grad(loss, has_aux=True)(params, graphdef)
    (l16, z16), g16 = jax.value_and_grad(loss, has_aux=True)(params, mixed_graph)
    assert z16.dtype == jnp.float32
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(g16))
    diff = float(jnp.abs(z16 - z32).max())
    assert 0 < diff < 0.02 * float(jnp.abs(z32).max()) + 1e-3
    a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32)])
    b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16)])
    assert np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
    assert abs(float(l16 - l32)) < 1e-2


def test_lora_linear_takes_the_matmul_dtype():
    lin = LoRALinear(8, 4, rank=2, alpha=4.0, rngs=nnx.Rngs(0), matmul_dtype="bfloat16")
    lin.lora_b[...] = jnp.ones_like(lin.lora_b[...])
    x = jnp.asarray(np.random.default_rng(1).standard_normal((3, 8)), jnp.float32)
    base = layers.matmul(x, lin.kernel[...], jnp.float32, "bfloat16") + lin.bias[...]
    adapter = lin.lora_scale * (x @ lin.lora_a[...] @ lin.lora_b[...])  # float32
    np.testing.assert_allclose(np.asarray(lin(x)), np.asarray(base + adapter), rtol=1e-6)


def test_config_values():
    assert _cfg(matmul_dtype="").matmul_dtype is None
    assert _cfg().matmul_dtype is None
    cfg = _cfg(matmul_dtype="bfloat16")
    assert DecoderConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="matmul_dtype"):
        _cfg(matmul_dtype="float16")


def test_run_config_sets_it():
    config = load_config("configs/default.py")
    assert common.decoder_config(config, 97).matmul_dtype is None
    config.model.matmul_dtype = "bfloat16"
    assert common.decoder_config(config, 97).matmul_dtype == "bfloat16"
    assert dataclasses.replace(common.decoder_config(config, 97), matmul_dtype=None) == (
        common.decoder_config(load_config("configs/default.py"), 97)
    )
    mixed = load_config("configs/default.py:mixed")
    assert common.decoder_config(mixed, 97).matmul_dtype == "bfloat16"
    # applied after smoke, whose model section replaces the default's
    assert load_config("configs/default.py:mixed+smoke").model.matmul_dtype == "bfloat16"


def test_pretrained_directory_loads_with_the_matmul_dtype(tmp_path):
    # what sft.init_from does with config.model.matmul_dtype (sft.build_state)
    from girl_jax.models import from_pretrained, save_pretrained

    model = Decoder(_cfg(), rngs=nnx.Rngs(2))
    save_pretrained(model, str(tmp_path / "hf"))
    loaded = from_pretrained(str(tmp_path / "hf"), matmul_dtype="bfloat16")
    assert loaded.cfg.matmul_dtype == "bfloat16"
    mixed = nnx.merge(
        nnx.graphdef(Decoder(_cfg(matmul_dtype="bfloat16"), rngs=nnx.Rngs(2))), nnx.state(model)
    )
    ids = jnp.asarray([[1, 5, 7, 9]], jnp.int32)
    np.testing.assert_allclose(np.asarray(loaded(ids)[0]), np.asarray(mixed(ids)[0]), rtol=1e-6)
    assert from_pretrained(str(tmp_path / "hf")).cfg.matmul_dtype is None
