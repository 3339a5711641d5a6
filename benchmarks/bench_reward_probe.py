"""The reward probe's step on its cached features: the layout the probe caches now against the
one it cached before, side by side, on the default run's shapes.

The default reward head (`attn_mlp` with match flags) reads each row's token states and 0 / 1
exact-match flags. The probe caches them once and then runs ~30 epochs of head steps over them.
Before 2026-12-04 the cache held the states in float16 and the flags apart, so every step
converted the states to float32 and concatenated the flags (~30% of the step, memory-bound);
now the cache holds `states` = [float16-rounded states, flags] in float32, the values the head
reads, and a step does neither. Both sides run the same jitted `probe_train_step` (value, grad,
AdamW) on the same rows, interleaved A B A B; the figure is steps per second, and the JSON
records whether the two layouts give bit-identical losses and parameters (they should: the
same float32 values enter the same arithmetic).

Shapes: the default market's probe batch (256 rows) at its trimmed width (192 tokens), d_model
128, head hidden 256; `--quick`: tiny.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402


def _rows(rng, n: int, width: int, d: int):
    """Cached features of n rows in both layouts (the same values), and labels."""
    import numpy as np

    lengths = rng.integers(width // 2, width + 1, n)
    mask = (np.arange(width)[None] < lengths[:, None]).astype(np.int32)
    resp = mask * (np.arange(width)[None] >= (lengths // 2)[:, None])
    hidden = rng.standard_normal((n, width, d)).astype(np.float16)
    flags = rng.integers(0, 2, (n, width, 2)).astype(np.float16) * mask[..., None]
    pooled = rng.standard_normal((n, 4 * d)).astype(np.float32)
    common = {"pooled": pooled, "mask": mask, "response_mask": resp}
    before = {**common, "hidden": hidden, "match": flags}
    states = np.concatenate([hidden.astype(np.float32), flags.astype(np.float32)], -1)
    now = {**common, "states": states}
    y = rng.integers(0, 2, n).astype(np.float32)
    return before, now, y


def run(args) -> dict:
    import jax
    import numpy as np
    from flax import nnx

    from girl_jax.models.heads import RewardHead
    from girl_jax.parallel import rules
    from girl_jax.stages.reward import probe

    quick = args.quick
    batch, width, d, hidden = (16, 24, 16, 32) if quick else (256, 192, 128, 256)
    repeats = args.repeats or (2 if quick else 7)
    steps = 2 if quick else 10  # steps per timed run
    rng = np.random.default_rng(0)
    before, now, y = _rows(rng, batch, width, d)
    head = RewardHead(d, "attn_mlp", hidden, rngs=nnx.Rngs(0), match=True)
    graphdef, params = nnx.split(head)
    mesh = probe.default_mesh()
    shardings = probe.batch_shardings(mesh, rules.DEFAULT_RULES, batch, "pointwise")
    tx, step, _ = probe._head_fns(graphdef, "pointwise", 0.0, 2e-3, 0.01, shardings)

    def side(x):
        state = {"s": probe.init_probe_state(params, tx, mesh)}
        b = probe.put_batch(x, y, *shardings)

        def run_steps():
            losses = []
            for _ in range(steps):
                state["s"], m = step(state["s"], b, None)
                losses.append(m["loss"])
            return jax.block_until_ready(losses)

        return state, run_steps

    sides = {"ours": side(now), "peer": side(before)}
    first = {}
    for name, (_, fn) in sides.items():
        first[name] = bc.time_call(fn)  # compile + the first run
    bc.progress(f"reward probe: first calls {first}")
    times = bc.interleaved({k: fn for k, (_, fn) in sides.items()}, repeats)
    # the two states took the same steps: equal to the last bit when the layouts agree
    p_now, p_before = (jax.device_get(s["s"].params) for s, _ in sides.values())
    identical = all(
        np.array_equal(a, b) for a, b in zip(jax.tree.leaves(p_now), jax.tree.leaves(p_before))
    )
    sps = {k: steps / bc.median(v) for k, v in times.items()}
    shape = f"{batch} x {width} x {d}"
    return {
        "figures": [
            bc.figure(
                f"reward probe step, attn_mlp + match flags, {shape}",
                "steps/s",
                sps["ours"],
                sps["peer"],
                "the same step on the float16 states + flags cache (before 2026-12-04)",
                note="same rows, same head, interleaved; bit-identical: "
                + ("yes" if identical else "NO"),
            )
        ],
        "details": {
            "batch": batch,
            "width": width,
            "d_model": d,
            "steps_per_run": steps,
            "times_s": times,
            "first_call_s": first,
            "bit_identical": identical,
        },
    }


def main(argv=None):
    bc.single_device_main(run, __doc__, argv)


if __name__ == "__main__":
    main()
