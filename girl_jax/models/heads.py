"""Scalar heads on the decoder trunk: the reward model, and a value head on the policy.

`ScoreModel` and `PolicyWithValueHead` subclass the same `Transformer` trunk as `Decoder`,
so their trunk parameters have the same names and an SFT checkpoint's trunk moves into
them with `transplant_trunk`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from girl_jax.errors import ModelError
from girl_jax.models.decoder import Cache, Decoder, DecoderConfig, Transformer
from girl_jax.models.layers import LayerNorm, Linear

TRUNK_KEYS = ("embed", "pos_embed", "layers", "final_norm")


class ScalarHead(nnx.Module):
    """hidden [B, T, D] -> float32 scalar per token [B, T]; zero-initialised by default."""

    def __init__(self, d_model: int, *, rngs: nnx.Rngs, zero_init: bool = True):
        init = (
            nnx.initializers.zeros_init()
            if zero_init
            else nnx.initializers.normal(1.0 / (d_model + 1) ** 0.5)
        )
        self.proj = Linear(
            d_model, 1, axes=("embed", None), rngs=rngs, kernel_init=init, dtype=jnp.float32
        )

    def __call__(self, h_BxTxD: jax.Array) -> jax.Array:
        return self.proj(h_BxTxD.astype(jnp.float32))[..., 0]


class ScoreModel(Transformer):
    """Reward model / separate critic: decoder trunk + `score_head` -> per-token scores."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, zero_init_head: bool = True):
        super().__init__(cfg, rngs=rngs)
        self.score_head = ScalarHead(cfg.d_model, rngs=rngs, zero_init=zero_init_head)

    def __call__(self, ids_BxT, attention_mask=None, positions=None):
        """Returns (values [B, T] float32, {"hidden": [B, T, D]})."""
        h, _ = self.hidden(ids_BxT, attention_mask, positions)
        return self.score_head(h), {"hidden": h}


class PolicyWithValueHead(Decoder):
    """A Decoder whose trunk also feeds a `value_head` (the shared-trunk critic)."""

    def __init__(self, cfg: DecoderConfig, *, rngs: nnx.Rngs, zero_init_head: bool = True):
        super().__init__(cfg, rngs=rngs)
        self.value_head = ScalarHead(cfg.d_model, rngs=rngs, zero_init=zero_init_head)

    def __call__(self, ids_BxT, attention_mask=None, positions=None, cache: Cache | None = None):
        """Returns (logits [B, T, V] float32, values [B, T] float32, aux)."""
        logits, aux = Decoder.__call__(self, ids_BxT, attention_mask, positions, cache)
        return logits, self.value_head(aux["hidden"]), aux

    def lm(self, ids_BxT, attention_mask=None, positions=None, cache: Cache | None = None):
        """The plain Decoder contract (logits, aux), for the sampler."""
        return Decoder.__call__(self, ids_BxT, attention_mask, positions, cache)


def last_token_score(values_BxT: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """Value at each row's last valid token [B] (right or left padding; 0th when none valid)."""
    T = values_BxT.shape[-1]
    idx_B = jnp.max(jnp.where(mask_BxT.astype(bool), jnp.arange(T), 0), axis=-1)
    return jnp.take_along_axis(values_BxT, idx_B[:, None], axis=-1)[:, 0]


REWARD_HEADS = ("last", "mean", "pooled_mlp", "attn_mlp")
TOKEN_HEADS = ("attn_mlp",)  # heads that read per-token states, not pooled features
MATCH_HEADS = ("pooled_mlp", "attn_mlp")  # heads that can read exact-match features


def pool_features(
    h_BxTxD: jax.Array, mask_BxT: jax.Array, response_mask_BxT=None, head: str = "last"
) -> jax.Array:
    """Sequence features [B, F] float32 from trunk states for a reward head.

    `last`: the state at the last valid token (F = D). `mean`: the mean state over the response
    (JD) tokens (F = D). `pooled_mlp`: [last, mean JD, mean CV, mean JD * mean CV] (F = 4D).
    """
    h = h_BxTxD.astype(jnp.float32)
    T = h.shape[1]
    idx_B = jnp.max(jnp.where(mask_BxT.astype(bool), jnp.arange(T), 0), axis=-1)
    last = jnp.take_along_axis(h, idx_B[:, None, None], axis=1)[:, 0]
    if head == "last":
        return last
    if response_mask_BxT is None:
        raise ModelError(f"reward head {head!r} needs the response mask")
    valid = mask_BxT.astype(bool)
    r = (response_mask_BxT.astype(bool) & valid).astype(jnp.float32)[..., None]
    mean_jd = (h * r).sum(1) / jnp.maximum(r.sum(1), 1.0)
    if head == "mean":
        return mean_jd
    c = (valid[..., None] & (r == 0)).astype(jnp.float32)
    mean_cv = (h * c).sum(1) / jnp.maximum(c.sum(1), 1.0)
    return jnp.concatenate([last, mean_jd, mean_cv, mean_jd * mean_cv], axis=-1)


def match_flags(ids_BxT: jax.Array, mask_BxT: jax.Array, response_mask_BxT: jax.Array):
    """Exact-match features [B, T, 2] float32 (DrQA's, Chen et al. 2017) from token ids.

    Channel 0: this token also occurs in the other segment (a JD token in the CV, a CV token in
    the JD); channel 1: so does the bigram ending here (both tokens in one segment there too).
    Zero on padding. Whether each required skill or the city of a JD is in the CV is an exact
    lookup that a small trunk's states blur; the flags hand it to the reward head directly.
    """
    valid = mask_BxT.astype(bool)
    jd = response_mask_BxT.astype(bool) & valid
    cv = valid & ~jd
    other = (jd[:, :, None] & cv[:, None, :]) | (cv[:, :, None] & jd[:, None, :])  # [B, T, S]
    same = (ids_BxT[:, :, None] == ids_BxT[:, None, :]) & other
    unigram = same.any(-1)

    def prev(a):  # a[:, t - 1] at t (False at 0), along every position axis given
        return jnp.pad(a[:, :-1], [(0, 0), (1, 0)] + [(0, 0)] * (a.ndim - 2))

    pair = (jd & prev(jd)) | (cv & prev(cv))  # tokens t - 1 and t in the same segment
    same_prev = jnp.pad(same[:, :-1, :-1], ((0, 0), (1, 0), (1, 0)))  # [t - 1, s - 1] matched
    bigram = (same & same_prev & pair[:, None, :]).any(-1) & pair
    return jnp.stack([unigram, bigram], -1).astype(jnp.float32)


def match_means(flags_BxTx2: jax.Array, mask_BxT: jax.Array, response_mask_BxT: jax.Array):
    """[B, 4]: the share of JD tokens (unigram, bigram) found in the CV, and of CV tokens in
    the JD."""
    valid = mask_BxT.astype(bool)
    jd = (response_mask_BxT.astype(bool) & valid).astype(jnp.float32)[..., None]
    cv = (valid & ~response_mask_BxT.astype(bool)).astype(jnp.float32)[..., None]
    f = flags_BxTx2.astype(jnp.float32)
    share = [(f * seg).sum(1) / jnp.maximum(seg.sum(1), 1.0) for seg in (jd, cv)]
    return jnp.concatenate(share, -1)


def attention_pool(h_BxTxD: jax.Array, logits_BxTxQ: jax.Array, select_BxT: jax.Array):
    """Q softmax-weighted means of the selected tokens' states -> [B, Q * D] float32."""
    a = jnp.where(select_BxT[..., None], logits_BxTxQ.astype(jnp.float32), -1e9)
    w_BxTxQ = jax.nn.softmax(a, axis=1) * select_BxT.any(1)[:, None, None]  # none: zeros
    pooled = jnp.einsum("btq,btd->bqd", w_BxTxQ, h_BxTxD.astype(jnp.float32))
    return pooled.reshape(h_BxTxD.shape[0], -1)


class RewardHead(nnx.Module):
    """Features -> score [B]: linear (`last`, `mean`) or a one-hidden-layer MLP.

    `pooled_mlp` reads pooled features [B, 4D]. `attn_mlp` reads the token states
    {"hidden": [B, T, D], "mask", "response_mask"(, "pooled")}: the pooled_mlp features (taken
    from "pooled" when given: the probe computes them once) plus `queries`
    learned attention poolings over the JD tokens and as many over the CV tokens (a query can
    single out the requirements, pay or place of a JD, which a plain mean blurs). The probe's
    cache gives {"states": [B, T, D (+ 2)] float32, "pooled", "mask", "response_mask"} instead:
    the states with their match flags already concatenated, as the poolings read them (the same
    values; no conversion or concatenation in every step).
    """

    def __init__(
        self, d_model: int, head: str, hidden: int, *, rngs: nnx.Rngs, queries=4, match=False
    ):
        if head not in REWARD_HEADS:
            raise ModelError(f"reward head must be one of {REWARD_HEADS}, got {head!r}")
        if match and head not in MATCH_HEADS:
            raise ModelError(f"match features need a reward head in {MATCH_HEADS}, got {head!r}")
        self.head = head
        self.match = match
        zero = nnx.initializers.zeros_init()
        if head in ("pooled_mlp", "attn_mlp"):
            width = 4 * d_model + (4 if match else 0)
            if head == "attn_mlp":
                d = d_model + (2 if match else 0)  # token states with their match flags
                self.query_jd = Linear(d, queries, axes=(None, None), rngs=rngs)
                self.query_cv = Linear(d, queries, axes=(None, None), rngs=rngs)
                width += 2 * queries * d
            self.norm = LayerNorm(width, axes=(None,), rngs=rngs)
            self.hidden = Linear(width, hidden, axes=(None, "mlp"), rngs=rngs, dtype=jnp.float32)
            self.out = Linear(hidden, 1, axes=("mlp", None), rngs=rngs, kernel_init=zero)
        else:
            self.out = Linear(d_model, 1, axes=(None, None), rngs=rngs, kernel_init=zero)

    def __call__(self, feats) -> jax.Array:
        if self.head == "attn_mlp":
            mask, resp = feats["mask"], feats["response_mask"]
            valid = mask.astype(bool)
            jd = resp.astype(bool) & valid
            if "states" in feats:  # the probe's cache: states (+ flags) and pooled features
                h, pooled = feats["states"].astype(jnp.float32), feats["pooled"]
            else:
                h = feats["hidden"].astype(jnp.float32)
                pooled = feats.get("pooled")  # cached by the probe; else computed here
                if pooled is None:
                    pooled = pool_features(h, mask, resp, "pooled_mlp")
                if self.match:
                    h = jnp.concatenate([h, feats["match"].astype(jnp.float32)], axis=-1)
            if h.shape[-1] != self.query_jd.in_features:  # static: a clear error at trace
                raise ModelError(
                    f"reward head: the token states have {h.shape[-1]} features per token, the "
                    f"head reads {self.query_jd.in_features} (states + match flags: "
                    f"{self.match}); a probe cache built for another reward head?"
                )
            parts = [pooled]
            if self.match:  # the flags are the last 2 features of each token
                parts.append(match_means(h[..., -2:], mask, resp))
            parts += [
                attention_pool(h, self.query_jd(h), jd),
                attention_pool(h, self.query_cv(h), valid & ~jd),
            ]
            x = jnp.concatenate(parts, axis=-1)
        else:
            x = feats.astype(jnp.float32)
        if self.head in ("pooled_mlp", "attn_mlp"):
            x = jax.nn.gelu(self.hidden(self.norm(x)))
        return self.out(x)[..., 0]


class RewardModel(Transformer):
    """Decoder trunk + `reward_head` on pooled states: one score per (CV, JD) sequence.

    `head="last"` is the InstructGPT / lm-human-preferences reward (linear on the last token).
    `mean` averages the JD tokens' states (each attended to the CV); `pooled_mlp` adds the CV's
    mean state and its product with the JD's, read by a small MLP; `attn_mlp` adds learned
    attention poolings of the JD's and the CV's tokens.

    `feature_layer=k` (1 <= k < num_layers) has the head read the residual stream after block k
    (later blocks are kept, for a critic initialised from this trunk, but not run);
    0 or num_layers: the final normed states. `match_features` adds exact-match flags
    (`match_flags`) to what `pooled_mlp` / `attn_mlp` read.
    """

    def __init__(
        self,
        cfg: DecoderConfig,
        *,
        rngs: nnx.Rngs,
        head="last",
        head_hidden=256,
        feature_layer: int = 0,
        match_features: bool = False,
    ):
        if not 0 <= feature_layer <= cfg.num_layers:
            raise ModelError(
                f"reward feature_layer must be in [0, {cfg.num_layers}], got {feature_layer}"
            )
        super().__init__(cfg, rngs=rngs)
        self.feature_layer = feature_layer
        self.reward_head = RewardHead(
            cfg.d_model, head, head_hidden, rngs=rngs, match=match_features
        )

    def features(self, ids_BxT, attention_mask, response_mask=None, positions=None):
        """What the head reads: pooled [B, F], or for token heads the states and masks."""
        h, _ = self.hidden(ids_BxT, attention_mask, positions, depth=self.feature_layer or None)
        head, match = self.reward_head.head, self.reward_head.match
        if (head != "last" or match) and response_mask is None:
            raise ModelError(f"reward head {head!r} needs the response mask")
        flags = match_flags(ids_BxT, attention_mask, response_mask) if match else None
        if head in TOKEN_HEADS:
            feats = {"hidden": h, "mask": attention_mask, "response_mask": response_mask}
            return feats if flags is None else {**feats, "match": flags}
        pooled = pool_features(h, attention_mask, response_mask, head)
        if flags is None:
            return pooled
        return jnp.concatenate([pooled, match_means(flags, attention_mask, response_mask)], -1)

    def __call__(self, ids_BxT, attention_mask, response_mask=None, positions=None):
        """Returns (scores [B] float32, {"features": pooled [B, F] or the token-head inputs})."""
        f = self.features(ids_BxT, attention_mask, response_mask, positions)
        return self.reward_head(f), {"features": f}


def sequence_score(model, ids_BxT, mask_BxT, response_mask_BxT=None) -> jax.Array:
    """Score [B] float32 of a `RewardModel`, or of a `ScoreModel` read at the last token."""
    if isinstance(model, RewardModel):
        return model(ids_BxT, mask_BxT, response_mask_BxT)[0]
    values, _ = model(ids_BxT, mask_BxT)
    return last_token_score(values, mask_BxT).astype(jnp.float32)


def transplant_trunk(src: Any, dst: Any) -> Any:
    """Copies the trunk params (embed, pos_embed, layers, final_norm) of `src` into `dst`.

    `src` / `dst` are modules or `nnx.State`s (e.g. a Decoder's and a ScoreModel's);
    heads are left as they are. Returns the updated `dst` (modules are updated in place).
    """
    src_state = nnx.state(src, nnx.Param) if isinstance(src, nnx.Module) else src
    dst_state = nnx.state(dst, nnx.Param) if isinstance(dst, nnx.Module) else dst
    src_flat = {tuple(p): v for p, v in nnx.to_flat_state(src_state)}
    for path, var in nnx.to_flat_state(dst_state):
        path = tuple(path)
        if path[0] not in TRUNK_KEYS:
            continue
        name = "/".join(map(str, path))
        if path not in src_flat:
            raise ModelError(f"transplant_trunk: source has no parameter {name}")
        value = src_flat[path][...]
        if value.shape != var.shape:
            raise ModelError(
                f"transplant_trunk: {name} has shape {value.shape} in the source, "
                f"{var.shape} in the target"
            )
        var.set_value(value)
    if isinstance(dst, nnx.Module):
        nnx.update(dst, dst_state)
    return dst


def score_model_from_decoder(
    decoder: Decoder, *, rngs: nnx.Rngs, zero_init_head: bool = True
) -> ScoreModel:
    """A ScoreModel with `decoder`'s config and trunk and a fresh score head."""
    model = ScoreModel(decoder.cfg, rngs=rngs, zero_init_head=zero_init_head)
    return transplant_trunk(decoder, model)
