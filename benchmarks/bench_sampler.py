"""Sampler throughput: `girl_jax.sampling` (jitted prefill + while_loop decode, KV cache) vs
transformers `generate` (PyTorch, KV cache) on the same GPT-2 weights.

Exactly `new` tokens per row on both sides (no EOS stop), prompt 64, batch 8 and 32,
multinomial sampling (temperature 1, no top-k / top-p) and greedy. Timings are interleaved
A B A B after a warm-up; the medians are compared; our compile time is reported apart.

On a CPU the process has one XLA device per core (`--xla_force_host_platform_device_count`,
what `CPU_DEVICES=N launch/local.sh` sets for `girl`): the rows above run on one of them, as
every `girl` command does by default; the `one CPU device per core` row runs the same sampler
with the batch laid over all of them (`make_sampler(in_shardings=...)`, the data axis), timed
in the same interleaved loop as the batch-32 sampling row and its peer. XLA:CPU runs one
device's decode step mostly on one core (a step is a chain of small ops); one device per core
runs the rows' halves side by side.

Mixed precision (a CPU with AMX-BF16 / AVX512-BF16): the target run also times our sampler with
`matmul_dtype="bfloat16"` (projections and LM head multiply bf16 operands, accumulate in
float32; attention, norms, softmax, sampling float32), on one device and one device per core,
against `generate` under `torch.autocast(bfloat16)` (its matmuls in bf16 too) and with bf16
weights; a row compares each side at its fastest, and one the bf16 run's FLOP/s against XLA's
bf16 2048³ matmul.
"""

from __future__ import annotations

import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_common as bc  # noqa: E402


def run(args) -> dict:
    import time

    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    from girl_jax import sampling
    from girl_jax.models.decoder import Decoder

    shape = "bench-tiny" if args.quick else "bench-small"
    batches = (2,) if args.quick else (8, 32)
    prompt, new = (8, 8) if args.quick else (64, 128)
    repeats = args.repeats or (1 if args.quick else 5)
    dtype = "bfloat16" if args.device == "gpu" else "float32"

    cfg = bc.decoder_config(shape, dtype=dtype)
    model = Decoder(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    step_fn, init_cache_fn = sampling.decoder_fns(graphdef)

    torch_side = _torch_generate_factory(model, args.device)

    figures, details = [], {"shape": shape, "prompt": prompt, "new_tokens": new, "runs": {}}
    for mode in ("greedy",) if args.quick else ("sample", "greedy"):
        scfg = sampling.SamplingConfig(
            max_new_tokens=new,
            eos_id=None,
            pad_id=0,
            temperature=1.0,
            top_k=0,
            greedy=mode == "greedy",
            early_stop=False,
        )
        sampler = sampling.make_sampler(step_fn, init_cache_fn, scfg)
        for batch in batches:
            rng = np.random.default_rng(batch)
            ids_np = rng.integers(1, cfg.vocab_size, (batch, prompt), dtype=np.int32)
            ids, mask = jnp.asarray(ids_np), jnp.ones((batch, prompt), jnp.int32)
            key = jax.random.key(0)

            t0 = time.perf_counter()
            compiled = sampler.lower(params, ids, mask, key).compile()
            compile_s = time.perf_counter() - t0
            bc.progress(f"sampler {mode} batch {batch}: compiled in {compile_s:.1f}s")

            def ours(compiled=compiled, ids=ids, mask=mask, key=key):
                out = compiled(params, ids, mask, key)
                return jax.block_until_ready(out.tokens)

            ours_tokens = np.asarray(ours())  # warm-up
            fns = {"ours": ours}
            # the target run (quick: the greedy one, so that the tokens can be compared)
            per_core = (
                (mode == "sample" or args.quick) and batch == batches[-1] and _per_core_ok(batch)
            )
            if per_core:
                fns["ours_per_core"] = _per_core_sampler(sampler, params, ids, mask, key)
                per_core_tokens = np.asarray(fns["ours_per_core"]())
            peer_tokens = None
            if torch_side is not None:
                gen = torch_side(ids_np, new, greedy=mode == "greedy")
                peer_tokens = gen()  # warm-up
                fns["peer"] = gen
            # mixed precision, both sides: our bf16 matmuls (float32 accumulation) and HF under
            # torch.autocast(bfloat16), plus HF in bf16 weights (its fastest here, less precise)
            mixed = mode == "sample" and batch == batches[-1] and _mixed_ok(args)
            if mixed:
                fns.update(_mixed_fns(cfg, params, ids, mask, key, scfg, per_core))
                if torch_side is not None:
                    for precision in ("autocast", "bfloat16"):
                        gen = torch_side(ids_np, new, greedy=False, precision=precision)
                        gen()  # warm-up
                        fns[f"peer_{precision}"] = gen
            times = bc.interleaved(fns, repeats)
            tok = batch * new
            ours_tps = tok / bc.median(times["ours"])
            peer_tps = tok / bc.median(times["peer"]) if "peer" in times else None
            run_key = f"{mode}_b{batch}"
            details["runs"][run_key] = dict(
                torch_threads=getattr(torch_side, "threads", None),
                times_s=times,
                compile_s=compile_s,
                ours_flops_per_s=bc.decode_flops(cfg, batch, prompt, new)
                / bc.median(times["ours"]),
            )
            if mode == "greedy" and peer_tokens is not None:
                # Same weights: greedy prefixes agree until float rounding flips an argmax.
                same = ours_tokens == np.asarray(peer_tokens)
                first_diff = np.where(same.all(0) == 0)[0]
                details["runs"][run_key]["greedy_identical_prefix"] = int(
                    first_diff[0] if len(first_diff) else new
                )
            target = 5.0 if (batch == 32 and mode == "sample") else None
            if per_core:
                n_dev = len(jax.devices())
                details["runs"][run_key]["per_core_devices"] = n_dev
                # same key, same rows: the sharded run draws the same tokens (greedy: exactly)
                details["runs"][run_key]["per_core_same_tokens"] = float(
                    (per_core_tokens == ours_tokens).mean()
                )
                figures.append(
                    bc.figure(
                        f"sampler {shape} {mode} batch {batch}, one CPU device per core ({n_dev})",
                        "tokens/s",
                        tok / bc.median(times["ours_per_core"]),
                        peer_tps,
                        "transformers generate (torch, KV cache)",
                        target=target,
                        note="batch over the data axis of a mesh of every device",
                    )
                )
            if target is not None:  # the target run against the machine's compute limit
                peak, peak_name = bc.peak_flops(args.device, args.quick)
                figures.append(
                    bc.figure(
                        f"sampler {shape} {mode} batch {batch} FLOP/s vs peak",
                        "FLOP/s",
                        details["runs"][run_key]["ours_flops_per_s"],
                        peak,
                        peak_name,
                        target=0.4,
                        note="fraction of the machine's compute limit (FLOPs as bench_common)",
                    )
                )
            figures.append(
                bc.figure(
                    f"sampler {shape} {mode} batch {batch}",
                    "tokens/s",
                    ours_tps,
                    peer_tps,
                    "transformers generate (torch, KV cache)",
                    target=target,
                    note=f"compile {compile_s:.1f}s (excluded)",
                )
            )
            if mixed:
                figures += _mixed_figures(cfg, shape, batch, prompt, new, times, details)
    return {"figures": figures, "details": details}


def _mixed_ok(args) -> bool:
    """The mixed-precision rows: on a CPU with bf16 matrix units, not in --quick."""
    return not args.quick and args.device == "cpu" and bc.cpu_has_bf16_units()


def _mixed_fns(cfg, params, ids, mask, key, scfg, per_core: bool) -> dict:
    """Our sampler on the same weights with `matmul_dtype="bfloat16"`: one device, and (where
    the float32 run has that row) the batch over one CPU device per core."""
    import dataclasses

    import jax
    from flax import nnx

    from girl_jax import sampling
    from girl_jax.models.decoder import Decoder

    mixed_cfg = dataclasses.replace(cfg, matmul_dtype="bfloat16")
    graphdef = nnx.graphdef(Decoder(mixed_cfg, rngs=nnx.Rngs(0)))
    sampler = sampling.make_sampler(*sampling.decoder_fns(graphdef), scfg)
    compiled = sampler.lower(params, ids, mask, key).compile()

    def one():
        return jax.block_until_ready(compiled(params, ids, mask, key).tokens)

    one()  # warm-up
    fns = {"ours_bf16": one}
    if per_core:
        fns["ours_bf16_per_core"] = _per_core_sampler(sampler, params, ids, mask, key)
    return fns


def _mixed_figures(cfg, shape, batch, prompt, new, times, details, peak=None) -> list[dict]:
    tok = batch * new
    rate = {k: tok / bc.median(v) for k, v in times.items()}
    peer_name = "transformers generate under torch.autocast(bfloat16)"
    label = f"sampler {shape} sample batch {batch}, bf16 matmuls (float32 accumulation)"
    out = [
        bc.figure(
            label,
            "tokens/s",
            rate["ours_bf16"],
            rate.get("peer_autocast"),
            peer_name,
            note="matmuls in bf16 on both sides (matmul_dtype='bfloat16')",
        )
    ]
    if "ours_bf16_per_core" in rate:
        out.append(
            bc.figure(
                f"{label}, one CPU device per core",
                "tokens/s",
                rate["ours_bf16_per_core"],
                rate.get("peer_autocast"),
                peer_name,
                note="batch over the data axis of a mesh of every device",
            )
        )
    ours_best = max(v for k, v in rate.items() if k.startswith("ours"))
    peers = {k: v for k, v in rate.items() if k.startswith("peer")}
    if peers:
        best = max(peers, key=peers.get)
        out.append(
            bc.figure(
                f"sampler {shape} sample batch {batch}, each at its fastest setting",
                "tokens/s",
                ours_best,
                peers[best],
                f"transformers generate, fastest of float32 / autocast / bf16 weights ({best})",
                note="ours ahead" if ours_best > peers[best] else "peer ahead",
            )
        )
    peak = peak or bc.bf16_matmul_peak_flops()
    flops = bc.decode_flops(cfg, batch, prompt, new) / bc.median(times["ours_bf16"])
    details["runs"][f"sample_b{batch}"]["ours_bf16_flops_per_s"] = flops
    details["bf16_matmul_peak_flops"] = peak
    out.append(
        bc.figure(
            f"{label} FLOP/s vs bf16 peak",
            "FLOP/s",
            flops,
            peak,
            "XLA bf16 x bf16 -> f32 matmul 2048^3 (measured)",
            note="fraction of the machine's bf16 compute limit (FLOPs as bench_common)",
        )
    )
    return out


def _per_core_ok(batch: int) -> bool:
    import jax

    n = len(jax.devices())
    return jax.default_backend() == "cpu" and n > 1 and batch % n == 0


def _per_core_sampler(sampler, params, ids, mask, key):
    """The same jitted sampler with the batch over every CPU device (params replicated)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rep, rows = NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec("data"))
    p, i, m = jax.device_put(params, rep), jax.device_put(ids, rows), jax.device_put(mask, rows)
    k = jax.device_put(key, rep)
    compiled = sampler.lower(p, i, m, k).compile()

    def run():
        return jax.block_until_ready(compiled(p, i, m, k).tokens)

    run()  # warm-up
    return run


def _torch_generate_factory(model, device: str):
    """`(ids_np, new, greedy) -> callable` running HF generate on the exported weights."""
    try:
        import torch
        import transformers
    except ImportError:
        return None
    if device == "gpu" and not torch.cuda.is_available():
        return None
    threads, probe = bc.best_torch_threads()
    bc.progress(f"torch threads: {threads} (probe {probe})")
    dev = "cuda" if device == "gpu" else "cpu"
    path = bc.export_hf(model, os.path.join(tempfile.mkdtemp(prefix="bench-sampler-"), "hf"))
    hf = transformers.AutoModelForCausalLM.from_pretrained(path).to(dev).eval()
    if device == "gpu":
        hf = hf.to(torch.bfloat16)

    models = {"float32": hf}

    def factory(ids_np, new, *, greedy, precision="float32"):
        """`precision`: "float32", "autocast" (torch.autocast(bfloat16): matmuls in bf16) or
        "bfloat16" (the weights and every activation in bf16)."""
        factory.threads = threads
        if precision == "bfloat16" and precision not in models:
            models[precision] = (
                transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16)
                .to(dev)
                .eval()
            )
        model = models.get(precision, hf)
        autocast = precision == "autocast"
        ids = torch.as_tensor(ids_np, dtype=torch.long, device=dev)
        mask = torch.ones_like(ids)
        kwargs = (
            dict(do_sample=False)
            if greedy
            else dict(do_sample=True, temperature=1.0, top_k=0, top_p=1.0)
        )

        def gen():
            with torch.inference_mode(), torch.autocast(dev, torch.bfloat16, enabled=autocast):
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    min_new_tokens=new,
                    max_new_tokens=new,
                    pad_token_id=0,
                    use_cache=True,
                    **kwargs,
                )
            if dev == "cuda":
                torch.cuda.synchronize()
            return out[:, ids.shape[1] :].cpu().numpy()

        return gen

    return factory


def main(argv=None):
    args = bc.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    bc.single_device_env(args.device)
    if args.device == "cpu":  # one XLA device per core; the single-device rows use the first
        cores = os.cpu_count() or 1
        flag = f"--xla_force_host_platform_device_count={cores}"
        os.environ["XLA_FLAGS"] = f"{os.environ['XLA_FLAGS']} {flag}".strip()
    bc.emit(run(args), args.out)


if __name__ == "__main__":
    main()
