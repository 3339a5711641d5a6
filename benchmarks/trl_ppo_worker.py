"""TRL 1.12 PPO iteration timing; runs inside `.venv-trl` and prints one JSON object.

Usage: .venv-trl/bin/python benchmarks/trl_ppo_worker.py --model-dir HF_DIR [--iterations 2]

The policy and reference load the exported GPT-2 directory (AutoModelForCausalLM), the
reward model and the critic load it with a fresh scalar head (AutoModelForSequenceClassification,
num_labels=1). Prompts are random token ids (never the pad id), every response is exactly
`response_length` tokens (no stop token), float32, no gradient checkpointing. One warm-up
iteration, then `iterations` timed ones (3 by default; a callback stamps the end of each);
`--bf16` runs with bfloat16 autocast, TRL's fastest setting on CPUs with bf16 matrix units.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--model-dir", required=True)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--response", type=int, default=64)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--minibatches", type=int, default=1)
    p.add_argument("--iterations", type=int, default=3, help="timed iterations after 1 warm-up")
    p.add_argument(
        "--bf16",
        action="store_true",
        help="bfloat16 autocast (TRL's fastest setting on CPUs with AMX-BF16 / AVX512-BF16)",
    )
    args = p.parse_args(argv)

    import datasets
    import numpy as np
    import tokenizers
    import torch
    import transformers
    import trl
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForSequenceClassification,
        PreTrainedTokenizerFast,
        TrainerCallback,
    )
    from trl.experimental.ppo import PPOConfig, PPOTrainer
    from trl.experimental.ppo import ppo_trainer as ppo_mod

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import bench_common

    threads, probe = bench_common.best_torch_threads(rows=64 * 64, calls=10)
    torch.manual_seed(0)
    hf_cfg = json.load(open(os.path.join(args.model_dir, "config.json")))
    vocab = hf_cfg["vocab_size"]
    tok_model = tokenizers.models.WordLevel({f"t{i}": i for i in range(vocab)}, unk_token="t1")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tokenizers.Tokenizer(tok_model), pad_token="t0", eos_token="t2"
    )

    policy = AutoModelForCausalLM.from_pretrained(args.model_dir)
    ref = AutoModelForCausalLM.from_pretrained(args.model_dir)
    reward = AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=1)
    value = AutoModelForSequenceClassification.from_pretrained(args.model_dir, num_labels=1)
    for m in (policy, ref, reward, value):
        m.config.pad_token_id = 0

    n_iter = 1 + args.iterations
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab, (args.batch * n_iter, args.prompt)).tolist()
    dataset = datasets.Dataset.from_dict({"input_ids": ids})

    out_dir = tempfile.mkdtemp(prefix="trl-ppo-")
    cfg = PPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=args.batch // args.minibatches,
        gradient_accumulation_steps=1,
        num_mini_batches=args.minibatches,
        local_rollout_forward_batch_size=args.batch,
        total_episodes=args.batch * n_iter,
        num_ppo_epochs=args.epochs,
        response_length=args.response,
        temperature=1.0,
        stop_token=None,
        missing_eos_penalty=None,
        num_sample_generations=0,
        bf16=args.bf16,
        fp16=False,
        gradient_checkpointing=False,
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=10_000,
        learning_rate=2e-4,
        seed=0,
    )
    if args.minibatches > 1:
        cfg.per_device_train_batch_size = args.batch // args.minibatches
        cfg.gradient_accumulation_steps = 1

    # Split the rollout's sampling time from the rest: wrap TRL's generation helper.
    gen_times: list[float] = []
    orig_batch_generation = ppo_mod.batch_generation

    def timed_batch_generation(*a, **k):
        t0 = time.perf_counter()
        out = orig_batch_generation(*a, **k)
        gen_times.append(time.perf_counter() - t0)
        return out

    ppo_mod.batch_generation = timed_batch_generation

    stamps: list[float] = []

    class Stamp(TrainerCallback):
        def on_train_begin(self, *a, **k):
            stamps.append(time.perf_counter())

        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer = PPOTrainer(
        args=cfg,
        processing_class=tok,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=dataset,
        callbacks=[Stamp()],
    )
    t0 = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - t0
    iter_times = [b - a for a, b in zip(stamps, stamps[1:])]
    result = dict(
        iteration_s=iter_times,
        generation_s=gen_times,
        total_s=total,
        batch=args.batch,
        prompt=args.prompt,
        response=args.response,
        epochs=args.epochs,
        minibatches=args.minibatches,
        versions=dict(
            trl=trl.__version__,
            torch=torch.__version__,
            transformers=transformers.__version__,
            python=sys.version.split()[0],
        ),
        threads=torch.get_num_threads(),
        thread_probe_s=probe,
        precision="bfloat16 autocast" if args.bf16 else "float32",
        first_iteration_s=iter_times[0] if iter_times else None,  # warm-up, not timed
    )
    print("TRL_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
