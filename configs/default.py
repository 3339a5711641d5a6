"""The embedded-market run that `make run` executes: SFT -> reward -> PPO -> recommenders.

Command:
    girl run --config configs/default.py --workdir workdir/default
    girl run --config configs/default.py:smoke --workdir /tmp/smoke  # whole pipeline, ~3 min

The market's CVs are written as people write them (layouts, case, synonyms, omissions, typos;
docs/data.md), JDs in the plain templates, and JDs are decoded with a copy bias towards the CV
and a repetition guard. Outputs: `workdir/default/results.json` and `report.md` with the
Base / GIRL-SFT / GIRL table (AUC, LogLoss for MLP and Dot predictors), reward-model AUC on
held-out recruiter labels, and PPO proxy vs true match rate (README: the measured figures).
Variants, combined with "+" (`:plain+gold`): `default` (= `varied`), `plain` (the 4 plain
templates, greedy decoding: the default until 2026-12-04), `gold` (PPO on the recruiter
oracle, docs/rl.md), `smoke` (tiny).
"""

import ml_collections


def model_config(d_model=128, num_layers=4, num_heads=4, max_len=256, family="gpt2"):
    return ml_collections.ConfigDict(
        dict(
            family=family,
            vocab_size=0,  # 0: taken from the tokenizer
            max_len=max_len,
            d_model=d_model,
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=0,  # 0: = num_heads
            mlp_dim=0,  # 0: family default
            dtype="float32",
            # "bfloat16": projections and LM head multiply bf16 operands, accumulate in float32
            # (the CPU's bf16 matrix units; docs/benchmarks.md "bf16 matmuls"). "": dtype.
            matmul_dtype="",
            remat=False,
            scan_layers=False,
            lora_rank=0,
            lora_alpha=16.0,
        )
    )


# PPO settings of the gold-reward run (docs/rl.md, "Measured: gold-reward runs", goldM): GRPO
# with rollouts near the greedy policy, each iteration 32 CVs x 8 samples at temperature 0.35,
# 3 epochs x 4 minibatches, no KL penalty: +0.204 on the 128 validation CVs and +0.192 over
# all seekers in 40 iterations (1 epoch, goldL: +0.122; best-of-8 distillation, goldI: +0.100;
# GRPO at temperature 0.7 on 64 samples, goldE: +0.066 in 80). lr 1.5e-4 drifts (KL 32).
GOLD_PPO = dict(
    reward="oracle",
    advantage="grpo",
    iterations=40,
    batch_size=256,
    group_size=8,
    temperature=0.35,
    learning_rate=5e-5,
    minibatches=4,
    epochs=3,
    kl_controller="fixed",
    kl_coef=0.0,
    eval_every=10,
)


VARIANTS = ("default", "varied", "plain", "gold", "smoke", "mixed")


def get_config(arg=None):
    variants = (arg or "default").split("+")
    for v in variants:
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}: use {', '.join(VARIANTS)}, joined by '+'")
    c = ml_collections.ConfigDict()
    c.name = f"default:{arg or 'default'}"
    c.seed = 0

    c.data = dict(
        source="market",  # "market" | "files"
        path="",  # JSONL / CSV / Parquet with cv, jd, label (used when source == "files")
        num_seekers=3000,
        num_jobs=500,
        applications_per_seeker=8,
        positive_rate=0.25,
        max_chars=4000,
        # share of market CVs / JDs written in a varied style (layouts, case, synonyms, noise;
        # docs/data.md). 0.0: the 4 plain templates, byte for byte the text of earlier runs.
        # Every CV varied, JDs plain: the generator reads any CV and learns one JD style
        # (hand-written CVs get a JD of their own occupation 26% -> 96%, docs/data.md).
        text_variation=1.0,
        # the JDs' share when it should differ from the CVs' (< 0: the same as text_variation)
        jd_text_variation=0.0,
    )
    # normalize: "none" | "nfkc_lower" (NFKC + lower case before BPE; girl_jax/data/tokenizer.py):
    # "SQL", "sql" and "Sql" are one token sequence, for training and for `girl generate` alike.
    c.tokenizer = dict(vocab_size=4096, path="", normalize="nfkc_lower")

    c.model = model_config()
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.logical_axis_rules = [
        ("batch", ("data", "fsdp")),
        ("embed", "fsdp"),
        ("heads", "tensor"),
        ("kv_heads", "tensor"),
        ("mlp", "tensor"),
        ("vocab", "tensor"),
    ]
    c.distributed = dict(coordinator_address="", num_processes=0, process_id=-1, init_timeout_s=120)

    c.sft = dict(
        init_from="",  # local HF directory (GPT-2 / Llama) or "" for from scratch
        batch_size=32,
        grad_accum=1,
        steps=300,
        learning_rate=3e-3,
        warmup_steps=50,
        weight_decay=0.01,
        grad_clip=1.0,
        max_prompt_len=128,
        max_response_len=112,
        eval_every=150,
        eval_batches=4,
        num_eval_samples=64,
        checkpoint_every=150,
        keep=2,
        log_every=20,
    )
    c.reward = dict(
        objective="pointwise",  # "pointwise" (BCE on labels) | "pairwise" (Bradley-Terry)
        # head: "last" (linear on the last token's state, InstructGPT) | "mean" (linear on the
        # JD tokens' mean state) | "pooled_mlp" (MLP on [last, mean JD, mean CV, JD*CV])
        # | "attn_mlp" (pooled_mlp + learned attention pooling over the JD's and the CV's tokens)
        head="attn_mlp",
        head_hidden=256,
        # The head reads the residual stream after this many trunk blocks (0: the last block's
        # normed output, specialised for next-token prediction); docs/results.md, "Reward model".
        feature_layer=3,
        # Exact-match flags per token (a JD token / bigram found in the CV and vice versa,
        # DrQA-style) beside the trunk states: pooled_mlp / attn_mlp heads only.
        match_features=True,
        # Linear probing first: the head is fitted on features of the frozen SFT trunk, computed
        # once (epochs are cheap), early-stopped on validation AUC; then `steps` of end-to-end
        # fine-tuning (0: keep the probed model). See girl_jax/stages/reward/probe.py.
        # > 0: synthetic hard negatives per positive (an accepted JD with one field made wrong:
        # city, pay, years, degree or skills), girl_jax/data/negatives.py; docs/rl.md.
        synthetic_negatives=1.0,
        # the fields they corrupt; "repeat" (a skill or duty repeated) is opt-in (docs/rl.md)
        synthetic_negative_kinds="city,pay,years,degree,skills",
        probe_epochs=30,
        probe_batch_size=256,
        probe_learning_rate=2e-3,
        probe_patience=4,
        batch_size=32,
        steps=0,
        learning_rate=1e-3,
        warmup_steps=30,
        weight_decay=0.01,
        grad_clip=1.0,
        margin=0.0,
        center_coef=0.0,  # penalty on the mean score (reward centring)
        eval_every=150,
        checkpoint_every=150,
        keep=2,
        log_every=20,
        # Reward-model ensemble (Coste et al. 2023): K >= 2 more heads fitted on the probe's
        # cached frozen-trunk features (needs steps=0), member k from seed seed+1000+k, each on
        # a bootstrap resample of the training rows when ensemble_bootstrap; 0: none.
        # Written to WORKDIR/reward/ensemble; see girl_jax/stages/reward/ensemble.py.
        ensemble_size=0,
        ensemble_bootstrap=True,
        # A held-out judge: one more head fitted on the validation labels alone (never the
        # proxy's training labels), for PPO's checkpoint choice (ppo.select=judge; docs/rl.md).
        holdout_judge=False,
    )
    c.ppo = dict(
        # GRPO, 16 samples per CV at temperature 0.7, against the RM trained with synthetic
        # negatives: the setting that raised the true match rate (docs/rl.md, "What works";
        # 16 rather than 8 samples per CV, then 8 CVs rather than 4 per iteration: each better
        # on all 3 seeds of the plain market, +0.055 / +0.163 / +0.081 over SFT; on the varied
        # market with kl_coef 0.1, +0.073 / +0.065 / +0.078; 20 iterations: less, docs/data.md).
        # 30 iterations: the varied market's gain peaks by then (greedy policy over all seekers,
        # seeds 0 / 1 / 2: +0.074 / +0.078 / +0.084 at 30 against +0.073 / +0.065 / +0.078 at 40;
        # docs/data.md), and PPO takes a quarter less time.
        iterations=30,
        batch_size=128,  # samples per iteration (batch_size / group_size CVs)
        group_size=16,  # k samples per CV (grpo / rloo need k > 1)
        epochs=2,
        minibatches=1,
        learning_rate=3e-5,  # >= 1e-4 drifts (KL 5-7 in 10 iterations, docs/rl.md)
        critic_learning_rate=5e-4,
        grad_clip=1.0,
        # gae | grpo | dr_grpo | rloo | bon | reinforce | reinforce_pp | grpo_process (+ spans)
        advantage="grpo",
        policy_loss="clipped",  # clipped | dual_clip
        value_loss="clipped",  # clipped | plain
        kl_estimator="k1",  # k1 | k2 | k3
        kl_in_reward=True,  # False: KL as a loss term
        kl_controller="fixed",  # fixed | adaptive
        # 0.1: PPO peaks early on the varied market, a tighter leash than the plain market's 0.05
        # gains on every seed (+0.073 / +0.065 / +0.078, docs/data.md)
        kl_coef=0.1,
        target_kl=4.0,
        kl_horizon=10000,
        gamma=1.0,
        lam=0.95,
        clip_eps=0.2,
        value_clip_eps=0.2,
        dual_clip_c=3.0,
        vf_coef=0.5,
        ent_coef=0.0,
        whiten_advantages=True,
        whiten_scores=False,
        score_clip=5.0,
        missing_eos_penalty=-1.0,
        ratio_threshold=0.0,  # >0: skip a minibatch whose mean ratio leaves [1/thr, thr]
        critic="separate",  # separate (initialised from the RM) | value_head (on the policy trunk)
        temperature=0.7,  # 1.0: rollouts far below the greedy policy (0.28 vs 0.57 true match)
        top_k=0,
        top_p=1.0,
        max_new_tokens=96,  # the market's JDs are <= 91 tokens with EOS
        eval_every=10,
        num_eval_prompts=128,
        checkpoint_every=10,
        keep=2,
        on_nonfinite="stop",  # stop | skip
        # Reward terms, summed: model | ensemble | oracle (gold, diagnosis only) | oracle_credit
        # (gold token-level credit: spans) | python:package.module:function, each with an
        # optional :weight (docs/rl.md).
        reward="model",
        ensemble_agg="mean",  # mean | min | mean_minus_std (reward=ensemble)
        ensemble_lambda=1.0,  # std weight of mean_minus_std
        clip_eps_high=0.0,  # > 0: DAPO clip-higher (ratio in [1 - clip_eps, 1 + clip_eps_high])
        loss_agg="token_mean",  # token_mean | seq_mean_token_mean | seq_mean_token_sum_norm
        baseline="none",  # reinforce: none | mean | value
        grpo_eps=1e-4,
        scale_by_std=True,  # grpo: divide by the group's std
        dynamic_sampling=False,  # DAPO: drop groups whose rewards are all equal
        algorithm="ppo",  # ppo | bon_distill (= advantage bon + policy_loss nll, docs/rl.md)
        # old log-probs: recompute (a full forward after sampling, exact PPO) | sampler (the
        # sampler's own, equal to ~1e-6 in float32: one actor forward fewer, docs/benchmarks.md)
        old_logprobs="recompute",
        # minibatches == 1 (and recompute): epoch 1's gradient goes back through the rollout's
        # own actor forward (one jax.vjp), so an iteration runs one forward fewer and epoch 1's
        # ratio is exactly 1 (docs/benchmarks.md). False: epoch 1 runs a forward of its own.
        reuse_rollout_forward=True,
        # > 1: rollouts drawn with a copy bias towards the CV's tokens (exploration; the loss and
        # the greedy evaluation see the unbiased policy, docs/rl.md). 1.0: off.
        rollout_copy_bias=1.0,
        # > 0: the rollout's rows decoded in passes of this many (one program). The sampler alone
        # runs 1.3x faster in passes of 32 on a CPU, but the default run's fused iteration did
        # not (7.26-8.09 s against 6.90-7.67 s one pass, docs/benchmarks.md). 0: one pass.
        rollout_rows_per_pass=0,
        # LoRA actor: train only the adapters, reference = actor with adapters off (one decoder
        # copy, docs/scale.md). None: on when model.lora_rank > 0; False: train every Param.
        shared_base=None,
        # The final model: last (the last iteration) | judge (the evaluated step whose greedy
        # validation JDs the held-out judge rates best: needs reward.holdout_judge).
        select="last",
    )
    # Optional Weights & Biases mirror of every stage's metrics (needs `pip install wandb`).
    c.wandb = dict(enabled=False, project="girl_jax", entity="", mode="", group="")
    c.generate = dict(
        greedy=True,
        temperature=1.0,
        top_k=0,
        top_p=1.0,
        # rows per sampler call: 32 decodes 1.5x faster per row than 128 on a CPU (the KV cache
        # stays in the processor's caches; docs/benchmarks.md); accelerators want larger batches
        batch_size=32,
        best_of=0,  # > 0: also a best-of-n row (n SFT samples, the reward model's favourite)
        best_of_temperature=0.7,
        # Repetition guard of the generate stage and `girl generate` (as Hugging Face generate):
        # > 1 divides / multiplies the logits of tokens already generated (1.0: off); n > 0 bans
        # any token that would complete an n-gram already generated (0: off).
        repetition_penalty=1.2,
        no_repeat_ngram_size=3,
        # Copy bias (Hugging Face's encoder_repetition_penalty): > 1 multiplies positive logits
        # of the CV's tokens by it and divides negative ones (1.0: off). With the guard above,
        # tuned on market CVs: the JD asks for the skills the CV has (docs/data.md).
        encoder_repetition_penalty=1.6,
        # When the decoding above is not plain greedy, also score plain greedy JDs of both
        # generators (`true_match_*_greedy`): the policy's own figure, PPO's measure.
        policy_eval=True,
    )
    c.recommend = dict(
        encoder=dict(
            init_from="",  # "" (tiny from scratch) | "minilm" | local BERT directory
            d_model=64,
            num_layers=2,
            num_heads=2,
            mlp_dim=128,
            max_len=96,
            pooling="mean",
        ),
        # frozen_encoder: the encoder trains once, end to end on Base (CV, JD) interactions with
        # an MLP head (`epochs`), then every text is embedded once and each feature set x
        # predictor x seed fits its predictor on the frozen embeddings (`head_*`).
        # end_to_end: every model trains its own encoder for `epochs` (6x the encoder cost).
        mode="frozen_encoder",
        predictors=["mlp", "dot"],
        feature_sets=["Base", "GIRL-SFT", "GIRL"],
        batch_size=128,
        epochs=3,
        learning_rate=2e-3,
        weight_decay=0.01,
        patience=1,
        head_epochs=40,
        head_batch_size=256,
        head_learning_rate=1e-3,
        head_patience=4,
        mlp_hidden=256,
        dot_dim=64,
        seeds=[0, 1, 2],
        max_train_interactions=0,  # 0: all
    )

    for variant in sorted(variants, key=lambda v: v == "mixed"):  # mixed last: smoke resets model
        _apply(c, variant)
    return c


def _apply(c, variant):
    if variant == "plain":
        # The market in its 4 plain templates, case kept, greedy decoding: the default run until
        # 2026-12-04 (README / docs/rl.md figures marked "plain market").
        c.data.update(text_variation=0.0, jd_text_variation=-1.0)
        c.tokenizer.normalize = "none"
        c.ppo.update(kl_coef=0.05, iterations=40)
        c.generate.update(
            repetition_penalty=1.0, no_repeat_ngram_size=0, encoder_repetition_penalty=1.0
        )
    elif variant == "gold":
        # Gold-reward PPO: the market's recruiter oracle is the reward (diagnosis only: it
        # proves the RL machinery can raise the true match rate when the reward is right).
        # Every section but ppo equals the variant it joins, so it runs on a finished workdir:
        #   rm -rf W/ppo && girl ppo --config configs/default.py:gold --workdir W
        c.ppo.update(GOLD_PPO)
    elif variant == "mixed":
        # Mixed precision in every decoder stage (SFT, reward, PPO, generation): bf16 matmul
        # operands with float32 accumulation, float32 everything else. Fast on a CPU with bf16
        # matrix units (AMX-BF16 / AVX512-BF16), slow on one without (docs/benchmarks.md).
        c.model.matmul_dtype = "bfloat16"
    elif variant == "smoke":
        c.data.num_seekers = 300
        c.data.num_jobs = 80
        c.data.applications_per_seeker = 6
        c.tokenizer.vocab_size = 1024
        c.model = model_config(d_model=64, num_layers=2, num_heads=2, max_len=256)
        c.sft.update(
            steps=40,
            batch_size=16,
            eval_every=20,
            checkpoint_every=20,
            num_eval_samples=16,
            eval_batches=2,
            log_every=10,
        )
        c.reward.update(
            feature_layer=1,  # of the smoke model's 2
            steps=30,
            probe_epochs=5,
            batch_size=16,
            eval_every=15,
            checkpoint_every=15,
            log_every=10,
        )
        c.ppo.update(
            iterations=4,
            batch_size=16,
            group_size=4,
            epochs=2,
            minibatches=1,
            max_new_tokens=48,
            eval_every=2,
            num_eval_prompts=16,
            checkpoint_every=2,
        )
        c.generate.batch_size = 32
        c.recommend.encoder.update(d_model=32, num_layers=1, num_heads=2, mlp_dim=64, max_len=64)
        c.recommend.update(
            epochs=1, batch_size=64, mlp_hidden=32, dot_dim=32, head_epochs=3, seeds=[0]
        )
    # "default" and "varied" (its name until 2026-12-04): nothing to change
