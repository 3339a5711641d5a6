"""Tokenised, padded numpy arrays for each stage, and length buckets that bound jit shapes.

Sequence layout (SFT and reward): `[bos] <|cv|> CV <|jd|> JD [eos]`, then right padding
with pad_id. The prompt is `[bos] <|cv|> CV <|jd|>`; the response is `JD [eos]`.

Masks, one convention everywhere: `target_mask` is aligned with `input_ids` and is 1 on the
response tokens (JD and its eos), 0 on prompt and padding. The next-token loss is therefore

    logits_BxLxV[:, :-1]  vs  input_ids[:, 1:]  weighted by  target_mask[:, 1:]

Truncation (counted in the returned `.stats`):
- a long CV loses its end; bos and both markers are always kept;
- a long JD loses its end and gets NO eos, so the model is never taught to stop mid-sentence
  (generation is cut at the length limit anyway).
"""

import jax
import numpy as np

from girl_jax.data.prompt import PROMPT_PREFIX, PROMPT_SUFFIX, clean_text
from girl_jax.errors import ConfigError, DataError


class Encoded(dict):
    """A dict of arrays (one row per example) with `.stats`: row and truncation counts.

    Registered as a JAX pytree (flattened like a dict), so it can go straight to `device_put`.
    """

    def __init__(self, arrays, stats):
        super().__init__(arrays)
        self.stats = stats


def _flatten(enc):
    keys = sorted(enc)
    return [enc[k] for k in keys], (tuple(keys), tuple(sorted(enc.stats.items())))


def _unflatten(aux, values):
    keys, stats = aux
    return Encoded(dict(zip(keys, values)), dict(stats))


jax.tree_util.register_pytree_node(Encoded, _flatten, _unflatten)


def _template(tokenizer) -> tuple[list[int], list[int]]:
    head = [tokenizer.bos_id] + tokenizer.encode(PROMPT_PREFIX)
    return head, tokenizer.encode(PROMPT_SUFFIX)


def _encode_texts(tokenizer, texts) -> list[list[int]]:
    return tokenizer.encode_batch([clean_text(t) for t in texts])


def _prompt(head, cv_ids, tail, max_len) -> tuple[list[int], bool]:
    budget = max_len - len(head) - len(tail)
    return head + cv_ids[:budget] + tail, len(cv_ids) > budget


def _response(jd_ids, eos_id, max_len) -> tuple[list[int], bool]:
    if len(jd_ids) + 1 <= max_len:
        return jd_ids + [eos_id], False
    return jd_ids[:max_len], True


def _check_lengths(cvs, jds, labels=None) -> None:
    if len(cvs) != len(jds) or (labels is not None and len(labels) != len(cvs)):
        sizes = f"{len(cvs)} cvs, {len(jds)} jds" + (
            "" if labels is None else f", {len(labels)} labels"
        )
        raise DataError(f"batches: inputs differ in length ({sizes})")
    if len(cvs) == 0:
        raise DataError("batches: no examples to encode")


def _min_prompt_len(head, tail, key: str, value: int) -> None:
    if value < len(head) + len(tail) + 1:
        raise ConfigError(
            f"{key}={value} leaves no room for the CV: the template alone takes "
            f"{len(head) + len(tail)} tokens"
        )


def _fill(rows, length, pad_id, *, left=False) -> tuple[np.ndarray, np.ndarray]:
    ids_NxL = np.full((len(rows), length), pad_id, dtype=np.int32)
    mask_NxL = np.zeros((len(rows), length), dtype=np.int32)
    for i, row in enumerate(rows):
        if left:
            ids_NxL[i, length - len(row) :] = row
            mask_NxL[i, length - len(row) :] = 1
        else:
            ids_NxL[i, : len(row)] = row
            mask_NxL[i, : len(row)] = 1
    return ids_NxL, mask_NxL


def encode_sft(tokenizer, cvs, jds, *, max_prompt_len: int, max_response_len: int) -> Encoded:
    """SFT rows: input_ids, attention_mask, target_mask, int32 [N, L = prompt + response len]."""
    _check_lengths(cvs, jds)
    head, tail = _template(tokenizer)
    _min_prompt_len(head, tail, "max_prompt_len", max_prompt_len)
    if max_response_len < 1:
        raise ConfigError(f"max_response_len={max_response_len} must be at least 1")
    rows, starts, cv_cut, jd_cut = [], [], 0, 0
    for cv_ids, jd_ids in zip(_encode_texts(tokenizer, cvs), _encode_texts(tokenizer, jds)):
        prompt, cut_p = _prompt(head, cv_ids, tail, max_prompt_len)
        response, cut_r = _response(jd_ids, tokenizer.eos_id, max_response_len)
        rows.append(prompt + response)
        starts.append(len(prompt))
        cv_cut += cut_p
        jd_cut += cut_r
    ids_NxL, mask_NxL = _fill(rows, max_prompt_len + max_response_len, tokenizer.pad_id)
    positions_L = np.arange(ids_NxL.shape[1])
    target_NxL = (positions_L[None, :] >= np.asarray(starts)[:, None]).astype(np.int32) * mask_NxL
    stats = {"rows": len(rows), "cv_truncated": cv_cut, "jd_truncated": jd_cut}
    return Encoded(
        {"input_ids": ids_NxL, "attention_mask": mask_NxL, "target_mask": target_NxL}, stats
    )


def encode_reward(tokenizer, cvs, jds, labels, *, max_len: int) -> Encoded:
    """Reward rows: input_ids, attention_mask, response_mask [N, max_len] int32, label float32,
    last_index int32 (response_mask is 1 on the JD tokens and its EOS).

    When prompt + response exceed `max_len`, the response keeps at least half of it (or all it
    needs) and the CV loses its end first.
    """
    _check_lengths(cvs, jds, labels)
    head, tail = _template(tokenizer)
    _min_prompt_len(head, tail, "max_len // 2", max_len // 2)
    rows, starts, cv_cut, jd_cut = [], [], 0, 0
    for cv_ids, jd_ids in zip(_encode_texts(tokenizer, cvs), _encode_texts(tokenizer, jds)):
        prompt_full = len(head) + len(cv_ids) + len(tail)
        response_budget = min(len(jd_ids) + 1, max(max_len - prompt_full, max_len // 2))
        response, cut_r = _response(jd_ids, tokenizer.eos_id, response_budget)
        prompt, cut_p = _prompt(head, cv_ids, tail, max_len - len(response))
        rows.append(prompt + response)
        starts.append(len(prompt))
        cv_cut += cut_p
        jd_cut += cut_r
    ids_NxL, mask_NxL = _fill(rows, max_len, tokenizer.pad_id)
    labels_N = np.asarray(labels, dtype=np.float32)
    if not np.all((labels_N == 0) | (labels_N == 1)):
        raise DataError("batches: labels must be 0 or 1")
    stats = {"rows": len(rows), "cv_truncated": cv_cut, "jd_truncated": jd_cut}
    starts_N = np.asarray(starts, np.int32).reshape(-1, 1)
    arrays = {
        "input_ids": ids_NxL,
        "attention_mask": mask_NxL,
        "response_mask": (mask_NxL.astype(bool) & (np.arange(max_len) >= starts_N)).astype(
            np.int32
        ),
        "label": labels_N,
        "last_index": (mask_NxL.sum(axis=1) - 1).astype(np.int32),
    }
    return Encoded(arrays, stats)


def encode_prompts(tokenizer, cvs, *, max_prompt_len: int) -> tuple[np.ndarray, np.ndarray]:
    """Sampler prompts, LEFT-padded: (ids [N, P] int32, mask [N, P] int32), P = max_prompt_len."""
    if len(cvs) == 0:
        raise DataError("batches: no prompts to encode")
    head, tail = _template(tokenizer)
    _min_prompt_len(head, tail, "max_prompt_len", max_prompt_len)
    rows = [_prompt(head, ids, tail, max_prompt_len)[0] for ids in _encode_texts(tokenizer, cvs)]
    return _fill(rows, max_prompt_len, tokenizer.pad_id, left=True)


def trim_prompts(ids_NxP, mask_NxP, *, multiple: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Left-padded prompts cut to the width their longest row needs, rounded up to `multiple`
    (never wider than given): the leading columns dropped are padding in every row.

    The same sequences at fewer positions (positions count the mask, `prompt_positions`), so the
    sampler's prefill, its KV cache and every forward over prompt + response get shorter: the
    default market's CVs need <= 104 of `sft.max_prompt_len` 128 tokens.
    """
    if multiple < 1:
        raise ConfigError(f"trim_prompts: multiple={multiple} must be >= 1")
    P = np.shape(mask_NxP)[1]
    out = trim_to_bucket(
        {"ids": ids_NxP, "mask": mask_NxP},
        range(multiple, P + multiple, multiple),
        mask_key="mask",
        left=True,
    )
    return out["ids"], out["mask"]


def decode_responses(tokenizer, tokens_NxT, mask_NxT) -> list[str]:
    """Texts of sampled responses: masked-out tokens dropped, each stops at its first eos."""
    tokens_NxT, mask_NxT = np.asarray(tokens_NxT), np.asarray(mask_NxT)
    return tokenizer.decode_batch([row[m.astype(bool)] for row, m in zip(tokens_NxT, mask_NxT)])


def bucket_lengths(max_len: int, *, min_len: int = 32) -> tuple[int, ...]:
    """Doubling lengths from `min_len`, capped by (and ending at) `max_len`: few jit shapes."""
    if max_len < 1 or min_len < 1:
        raise ConfigError(f"bucket_lengths: max_len={max_len} and min_len={min_len} must be >= 1")
    sizes, size = [], min_len
    while size < max_len:
        sizes.append(size)
        size *= 2
    return (*sizes, max_len)


def trim_to_bucket(batch, buckets, *, mask_key: str = "attention_mask", left: bool = False):
    """Cuts a padded batch to the smallest bucket that holds every valid token.

    Every 2-D array whose width equals the mask's is cut: right-padded arrays keep their first
    columns, left-padded ones (`left=True`) their last. Other arrays pass through unchanged.
    """
    mask_NxL = np.asarray(batch[mask_key])
    width = mask_NxL.shape[1]
    valid_L = mask_NxL.any(axis=0)
    if not valid_L.any():
        needed = 0
    elif left:
        needed = width - int(np.argmax(valid_L))
    else:
        needed = width - int(np.argmax(valid_L[::-1]))
    target = min([b for b in buckets if b >= needed] or [width])
    target = min(target, width)
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if value.ndim == 2 and value.shape[1] == width:
            value = value[:, width - target :] if left else value[:, :target]
        out[key] = value
    return out
