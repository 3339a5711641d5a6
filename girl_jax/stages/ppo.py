"""Stage 3, PPO against the frozen reward model with a KL penalty to the frozen SFT reference.

One jitted `train_step(state, frozen, batch, rng)` per iteration: sample JDs for a batch of CVs
(KV-cache sampler), score them with the reward model at the last token, reference log-probs and
critic values, per-token rewards (-beta*KL + score), advantages from the registry, then
epochs x shuffled minibatches of clipped updates as nested `lax.scan`s. Old log-probs, values
and advantages are frozen at rollout time (lm-human-preferences semantics).
Reads WORKDIR/{sft,reward}, writes WORKDIR/ppo/.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from girl_jax import preemption, wandb_writer
from girl_jax.errors import ConfigError
from girl_jax.rl import advantages as adv_mod
from girl_jax.rl import kl as kl_mod
from girl_jax.rl import losses as loss_mod
from girl_jax.rl import registry, shaping
from girl_jax.stages import common


@dataclasses.dataclass(frozen=True)
class PPOConfig:
    iterations: int
    batch_size: int
    group_size: int
    epochs: int
    minibatches: int
    learning_rate: float
    critic_learning_rate: float
    grad_clip: float
    advantage: str
    policy_loss: str
    value_loss: str
    kl_estimator: str
    kl_in_reward: bool
    kl_controller: str
    kl_coef: float
    target_kl: float
    kl_horizon: float
    gamma: float
    lam: float
    clip_eps: float
    value_clip_eps: float
    dual_clip_c: float
    vf_coef: float
    ent_coef: float
    whiten_advantages: bool
    whiten_scores: bool
    score_clip: float
    missing_eos_penalty: float
    ratio_threshold: float
    critic: str
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    eval_every: int
    num_eval_prompts: int
    checkpoint_every: int
    keep: int
    on_nonfinite: str

    def __post_init__(self):
        for kind, name in (
            ("advantage", self.advantage),
            ("policy_loss", self.policy_loss),
            ("value_loss", self.value_loss),
            ("kl", self.kl_estimator),
        ):
            try:
                registry.get(kind, name)
            except ConfigError as exc:
                key = "kl_estimator" if kind == "kl" else kind
                raise ConfigError(f"config.ppo.{key}: {exc}") from None
        if self.batch_size % (self.minibatches * self.group_size):
            raise ConfigError("config.ppo.batch_size must be divisible by minibatches*group_size")
        if self.advantage in ("grpo", "rloo") and self.group_size < 2:
            raise ConfigError(
                f"config.ppo.advantage={self.advantage} needs config.ppo.group_size>1"
            )
        if self.critic != "separate":
            raise ConfigError(
                "config.ppo.critic: only 'separate' (initialised from the RM) is "
                "implemented; 'value_head' is not built yet"
            )
        if self.on_nonfinite not in ("stop", "skip"):
            raise ConfigError("config.ppo.on_nonfinite must be stop or skip")
        if self.temperature <= 0:
            raise ConfigError("config.ppo.temperature must be > 0")

    @property
    def needs_critic(self) -> bool:
        return self.advantage == "gae"

    @classmethod
    def from_config(cls, c) -> PPOConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(c.keys()) - names
        if unknown:
            raise ConfigError(f"unknown config key config.ppo.{sorted(unknown)[0]}")
        missing = names - set(c.keys())
        if missing:
            raise ConfigError(f"missing config key config.ppo.{sorted(missing)[0]}")
        return cls(**{k: c[k] for k in names})


@flax.struct.dataclass
class PPOState:
    actor: Any  # parallel.state.TrainState
    critic: Any  # parallel.state.TrainState
    kl: kl_mod.KLControllerState
    iteration: jax.Array


@flax.struct.dataclass
class Frozen:
    reference: Any  # nnx.State of the SFT decoder
    reward: Any  # nnx.State of the reward model


@dataclasses.dataclass(frozen=True)
class Graphs:
    actor: Any
    critic: Any
    reward: Any


# ---------------------------------------------------------------- pure pieces


def response_logits(graphdef, params, ids, mask, prompt_len):
    """Logits that predict each response token: positions P-1 .. P+N-2 of the full sequence.

    The LM head runs on those positions only (a decoder's `hidden` then `logits`), not on
    the prompt's: at P = N that halves the head's FLOPs, forward and backward.
    """
    model = nnx.merge(graphdef, params)
    if hasattr(model, "hidden") and hasattr(model, "logits"):
        h_BxTxD, _ = model.hidden(ids, mask)
        return model.logits(h_BxTxD[:, prompt_len - 1 : -1])
    logits, _ = model(ids, mask)
    return logits[:, prompt_len - 1 : -1]


def response_values(graphdef, params, ids, mask, prompt_len):
    values, _ = nnx.merge(graphdef, params)(ids, mask)
    return values[:, prompt_len - 1 : -1].astype(jnp.float32)


def sequence_scores(graphdef, params, ids, mask, response_mask=None):
    """The reward model's score per sequence [B] (`RewardModel`, or a `ScoreModel`'s last token)."""
    from girl_jax.models.heads import sequence_score

    return sequence_score(nnx.merge(graphdef, params), ids, mask, response_mask)


def explained_variance(values, returns, mask):
    var_r = loss_mod.masked_mean((returns - loss_mod.masked_mean(returns, mask)) ** 2, mask)
    diff = returns - values
    var_d = loss_mod.masked_mean((diff - loss_mod.masked_mean(diff, mask)) ** 2, mask)
    return 1.0 - var_d / jnp.maximum(var_r, 1e-8)


def rollout(state: PPOState, frozen: Frozen, batch, rng, *, graphs: Graphs, cfg: PPOConfig, scfg):
    """Sample, score and compute every quantity the update treats as constant."""
    from girl_jax import sampling

    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    P = prompt_ids.shape[1]
    step_fn, init_cache_fn = sampling.decoder_fns(graphs.actor)
    out = sampling.sample(
        step_fn, init_cache_fn, state.actor.params, prompt_ids, prompt_mask, rng, scfg
    )
    resp, resp_mask = out.tokens, out.mask.astype(jnp.float32)
    ids = jnp.concatenate([prompt_ids, resp], axis=1)
    mask = jnp.concatenate([prompt_mask, out.mask.astype(prompt_mask.dtype)], axis=1)

    logits = response_logits(graphs.actor, state.actor.params, ids, mask, P)
    logp_old = common.token_logprobs(logits, resp, cfg.temperature)
    ref_logits = response_logits(graphs.actor, frozen.reference, ids, mask, P)
    logp_ref = common.token_logprobs(ref_logits, resp, cfg.temperature)
    resp_full = jnp.concatenate([jnp.zeros_like(prompt_mask), out.mask.astype(mask.dtype)], 1)
    raw_score = sequence_scores(graphs.reward, frozen.reward, ids, mask, resp_full)
    if cfg.needs_critic:
        values = response_values(graphs.critic, state.critic.params, ids, mask, P) * resp_mask
    else:
        values = jnp.zeros_like(resp_mask)

    score = shaping.apply_missing_eos_penalty(raw_score, out.has_eos, cfg.missing_eos_penalty)
    score = shaping.clip_scores(score, cfg.score_clip or None)
    if cfg.whiten_scores:
        score = shaping.whiten_scores(score)
    kl_coef = state.kl.kl_coef
    kl_BxT = registry.get("kl", cfg.kl_estimator)(logp_old, logp_ref) * resp_mask
    kl_rewards = kl_mod.kl_penalty_rewards(
        logp_old, logp_ref, resp_mask, kl_coef if cfg.kl_in_reward else 0.0, cfg.kl_estimator
    )
    rewards = shaping.token_rewards(score, kl_rewards, resp_mask)
    advantages, returns = registry.get("advantage", cfg.advantage)(
        rewards=rewards,
        values=values,
        mask=resp_mask,
        scores=None
        if cfg.needs_critic
        else score - (kl_BxT.sum(1) * kl_coef if cfg.kl_in_reward else 0.0),
        config=cfg,
    )
    if cfg.whiten_advantages:
        advantages = adv_mod.whiten(advantages, resp_mask)
    lengths = resp_mask.sum(1)
    stats = dict(
        proxy_reward=raw_score.mean(),
        score=score.mean(),
        kl=kl_BxT.sum(1).mean(),
        kl_coef=kl_coef,
        response_length=lengths.mean(),
        eos_rate=out.has_eos.astype(jnp.float32).mean(),
        returns_mean=loss_mod.masked_mean(returns, resp_mask),
        advantages_std=jnp.sqrt(loss_mod.masked_mean(advantages**2, resp_mask)),
        explained_variance=explained_variance(values, returns, resp_mask),
        rewards_finite=common.all_finite(rewards, advantages).astype(jnp.float32),
    )
    data = dict(
        ids=ids,
        mask=mask,
        resp=resp,
        resp_mask=resp_mask,
        logp_old=logp_old,
        logp_ref=logp_ref,
        values_old=values,
        advantages=advantages,
        returns=returns,
    )
    return data, stats, out


def ppo_loss(actor_params, critic_params, mb, kl_coef, *, graphs: Graphs, cfg: PPOConfig, P: int):
    logits = response_logits(graphs.actor, actor_params, mb["ids"], mb["mask"], P)
    logits = logits.astype(jnp.float32) / cfg.temperature
    logp = common.token_logprobs(logits, mb["resp"])
    m = mb["resp_mask"]
    pg_loss, pm = registry.get("policy_loss", cfg.policy_loss)(
        logp, mb["logp_old"], mb["advantages"], m, config=cfg
    )
    entropy = loss_mod.entropy_from_logits(logits, m)
    total = pg_loss - cfg.ent_coef * entropy
    metrics = dict(policy_loss=pg_loss, entropy=entropy, **pm)
    if cfg.needs_critic:
        v = response_values(graphs.critic, critic_params, mb["ids"], mb["mask"], P)
        vf_loss, vm = registry.get("value_loss", cfg.value_loss)(
            v, mb["values_old"], mb["returns"], m, config=cfg
        )
        total = total + cfg.vf_coef * vf_loss
        metrics.update(value_loss=vf_loss, **{f"value_{k}": x for k, x in vm.items()})
    if not cfg.kl_in_reward:
        kl_term = loss_mod.masked_mean(
            registry.get("kl", cfg.kl_estimator)(logp, mb["logp_ref"]), m
        )
        total = total + kl_coef * kl_term
        metrics["kl_loss"] = kl_term
    metrics["total_loss"] = total
    return total, metrics


def ppo_update(state: PPOState, data, rng, *, graphs: Graphs, cfg: PPOConfig, actor_tx, critic_tx):
    """Epochs x shuffled minibatches as nested scans; non-finite / off-ratio minibatches skip."""
    B = data["ids"].shape[0]
    P = data["ids"].shape[1] - data["resp"].shape[1]
    mb_size = B // cfg.minibatches
    grad_fn = jax.value_and_grad(
        functools.partial(ppo_loss, graphs=graphs, cfg=cfg, P=P), argnums=(0, 1), has_aux=True
    )

    def minibatch(carry, idx):
        actor, critic = carry
        mb = jax.tree.map(lambda x: x[idx], data)
        (_, metrics), (g_actor, g_critic) = grad_fn(
            actor.params, critic.params, mb, state.kl.kl_coef
        )
        ok = common.all_finite(metrics, g_actor, g_critic)
        if cfg.ratio_threshold:
            ok = ok & ~loss_mod.ratio_skip(metrics["ratio_mean"], cfg.ratio_threshold)
        new_actor = actor.apply_gradients(g_actor, actor_tx)
        actor = common.select_tree(ok, new_actor, actor)
        if cfg.needs_critic:
            new_critic = critic.apply_gradients(g_critic, critic_tx)
            critic = common.select_tree(ok, new_critic, critic)
        metrics["skipped"] = 1.0 - ok.astype(jnp.float32)
        metrics["actor_grad_norm"] = optax.global_norm(g_actor)
        return (actor, critic), metrics

    def epoch(carry, key):
        perm = jax.random.permutation(key, B).reshape(cfg.minibatches, mb_size)
        return jax.lax.scan(minibatch, carry, perm)

    keys = jax.random.split(rng, cfg.epochs)
    (actor, critic), metrics = jax.lax.scan(epoch, (state.actor, state.critic), keys)
    metrics = jax.tree.map(jnp.mean, metrics)
    metrics["skipped"] = metrics["skipped"] * cfg.epochs * cfg.minibatches  # a count
    return state.replace(actor=actor, critic=critic), metrics


def train_step(
    state: PPOState,
    frozen: Frozen,
    batch,
    rng,
    *,
    graphs: Graphs,
    cfg: PPOConfig,
    scfg,
    actor_tx,
    critic_tx,
    controller,
):
    """One PPO iteration: rollout + update + KL-controller update, all in one program."""
    k_sample, k_update = jax.random.split(rng)
    data, stats, out = rollout(state, frozen, batch, k_sample, graphs=graphs, cfg=cfg, scfg=scfg)
    new_state, metrics = ppo_update(
        state, data, k_update, graphs=graphs, cfg=cfg, actor_tx=actor_tx, critic_tx=critic_tx
    )
    finite = stats["rewards_finite"] > 0.5
    new_state = common.select_tree(finite, new_state, state)
    kl_state = controller.update(state.kl, stats["kl"], jnp.asarray(cfg.batch_size, jnp.float32))
    new_state = new_state.replace(kl=kl_state, iteration=state.iteration + 1)
    metrics = {**stats, **metrics, "finite": finite.astype(jnp.float32)}
    return new_state, metrics, (out.tokens, out.mask)


def sampling_config(cfg: PPOConfig, tokenizer, *, greedy: bool):
    from girl_jax import sampling

    return sampling.SamplingConfig(
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        top_k=cfg.top_k,
        top_p=cfg.top_p,
        greedy=greedy,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
    )


# ---------------------------------------------------------------- driver


def build(config, workdir: str, data, mesh, rules):
    """Everything PPO holds: graphs, the initial state, frozen roles, optimizers, shardings."""
    from girl_jax.models.decoder import Decoder
    from girl_jax.models.heads import ScoreModel, transplant_trunk
    from girl_jax.parallel import state as state_mod
    from girl_jax.stages import reward, sft

    cfg = PPOConfig.from_config(config.ppo)
    tok = data.tokenizer
    mcfg = common.decoder_config(config, tok.vocab_size)
    updates = cfg.iterations * cfg.epochs * cfg.minibatches
    actor_tx = common.make_optimizer(
        cfg.learning_rate, updates, grad_clip=cfg.grad_clip, cosine=False
    )
    critic_tx = common.make_optimizer(
        cfg.critic_learning_rate, updates, grad_clip=cfg.grad_clip, cosine=False
    )
    sft_graph, sft_params = sft.load_final_params(workdir, config, tok.vocab_size)
    rm_graph, rm_params = reward.load_final_params(workdir, config, tok.vocab_size)
    actor_graph, actor, actor_sh = state_mod.create_train_state(
        lambda rngs: Decoder(mcfg, rngs=rngs), actor_tx, mesh, rules, seed=config.seed
    )
    actor = actor.replace(params=common.fresh_copy(sft_params, actor_sh.params))
    critic_graph, critic, critic_sh = state_mod.create_train_state(
        lambda rngs: ScoreModel(mcfg, rngs=rngs), critic_tx, mesh, rules, seed=config.seed
    )
    # The critic starts from the reward model's trunk (and its head when it is the same
    # per-token linear head; a pooled reward head does not give per-token values).
    if isinstance(nnx.merge(rm_graph, rm_params), ScoreModel):
        critic_params = rm_params
    else:
        critic_params = transplant_trunk(rm_params, critic.params)
    critic = critic.replace(params=common.fresh_copy(critic_params, critic_sh.params))
    controller = kl_mod.make_kl_controller(
        cfg.kl_controller, cfg.kl_coef, cfg.target_kl, cfg.kl_horizon
    )
    kl_state = controller.init()
    state = PPOState(actor=actor, critic=critic, kl=kl_state, iteration=jnp.zeros((), jnp.int32))
    from girl_jax.parallel.rules import replicated

    rep = replicated(mesh)
    shardings = PPOState(
        actor=actor_sh, critic=critic_sh, kl=jax.tree.map(lambda _: rep, kl_state), iteration=rep
    )
    state = jax.device_put(state, shardings)
    graphs = Graphs(actor=actor_graph, critic=critic_graph, reward=rm_graph)
    frozen = Frozen(reference=sft_params, reward=rm_params)
    return cfg, graphs, state, shardings, frozen, (actor_tx, critic_tx, controller)


def train_and_evaluate(config, workdir: str) -> dict:
    """Restore or init, train, evaluate, checkpoint; a finished stage returns its eval.json."""
    with common.activate_rules(config):
        return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config, workdir: str) -> dict:
    from girl_jax import checkpoint as ckpt_mod
    from girl_jax import metrics as metrics_mod
    from girl_jax.data import batches, pipeline, prepare
    from girl_jax.parallel import mesh as mesh_mod
    from girl_jax.parallel import rules as rules_mod
    from girl_jax.parallel import state as state_mod
    from girl_jax.stages.generation import Generator, score_texts

    out_dir = common.stage_dir(workdir, "ppo")
    if ckpt_mod.is_final(out_dir):
        return json.load(open(os.path.join(out_dir, "eval.json")))
    cfg = PPOConfig.from_config(config.ppo)
    data = prepare.load(workdir)
    tok = data.tokenizer
    mesh = mesh_mod.make_mesh(config.mesh)
    rules = rules_mod.normalize_rules(config.logical_axis_rules)
    mesh_mod.check_batch(cfg.batch_size, mesh, key="ppo.batch_size")
    cfg, graphs, state, shardings, frozen, (actor_tx, critic_tx, controller) = build(
        config, workdir, data, mesh, rules
    )
    scfg = sampling_config(cfg, tok, greedy=False)
    step_fn = jax.jit(
        functools.partial(
            train_step,
            graphs=graphs,
            cfg=cfg,
            scfg=scfg,
            actor_tx=actor_tx,
            critic_tx=critic_tx,
            controller=controller,
        ),
        in_shardings=(shardings, None, state_mod.batch_sharding(mesh), None),
        out_shardings=(shardings, None, None),
        donate_argnums=(0,),
    )
    score_fn = jax.jit(functools.partial(sequence_scores, graphs.reward))

    seekers = data.seekers("train")
    P = config.sft.max_prompt_len
    ids, mask = batches.encode_prompts(tok, list(seekers["cv"]), max_prompt_len=P)
    prompts = {"prompt_ids": ids, "prompt_mask": mask, "seeker_id": seekers["seeker_id"].to_numpy()}
    per_iter = cfg.batch_size // cfg.group_size
    it = pipeline.make_iterator(prompts, batch_size=per_iter, seed=config.seed + 2)

    eval_seekers = data.seekers("validation").iloc[: cfg.num_eval_prompts]
    gen = Generator(
        graphs.actor,
        None,
        tok,
        max_prompt_len=P,
        max_new_tokens=cfg.max_new_tokens,
        greedy=True,
        batch_size=max(1, min(64, len(eval_seekers))),
    )

    def evaluate(params):
        """Greedy JDs for fixed validation CVs: RM (proxy) score, oracle true match, parse rate."""
        gen.params = params
        texts = gen.generate(list(eval_seekers["cv"]), common.fold_rng(config.seed, "ppo-eval", 0))
        enc = batches.encode_reward(
            tok, list(eval_seekers["cv"]), texts, [0] * len(texts), max_len=P + cfg.max_new_tokens
        )
        from girl_jax.stages.reward import score_dataset

        s = score_dataset(score_fn, frozen.reward, enc, 64)
        out = {"eval_proxy_reward": float(np.mean(s))}
        res = score_texts(data.market, eval_seekers["seeker_id"].to_numpy(), texts)
        out.update({f"eval_{k}": v for k, v in res.items()})
        return out, texts

    ckpt = ckpt_mod.StageCheckpointer(out_dir, keep=cfg.keep)
    start = ckpt.latest_step() or 0
    start_eval_path = os.path.join(out_dir, "eval_start.json")
    if start:
        state, extra = ckpt.restore(start, ckpt_mod.abstract_like(state))
        it.set_state(extra["data_iterator"])
    if start and os.path.exists(start_eval_path):
        start_eval = json.load(open(start_eval_path))
    else:  # the start is the SFT model (the reference), whatever step we resume from
        start_eval, start_texts = evaluate(frozen.reference)
        if jax.process_index() == 0:
            ckpt_mod.write_json_atomic(start_eval_path, {**start_eval, "samples": start_texts[:8]})
    writer = metrics_mod.MetricWriter(
        out_dir,
        resume_step=start,
        enabled=jax.process_index() == 0,
        mirror=wandb_writer.from_config(config, "ppo", workdir),
    )
    if not start:
        writer.write(0, start_eval)
    bar = metrics_mod.Progress(cfg.iterations, "ppo", start=start)
    last_eval, skipped = dict(start_eval), 0
    for it_idx in range(start, cfg.iterations):
        raw = next(it)
        sids = np.repeat(raw.pop("seeker_id"), cfg.group_size)
        raw = {k: np.repeat(v, cfg.group_size, axis=0) for k, v in raw.items()}
        batch = state_mod.put_batch(raw, mesh)
        state, m, (tokens, resp_mask) = step_fn(
            state, frozen, batch, common.fold_rng(config.seed, "ppo", it_idx)
        )
        m = common.host(m)
        done = it_idx + 1
        skipped += common.check_finite(m, "ppo", done, cfg.on_nonfinite)
        if data.market is not None:
            texts = batches.decode_responses(tok, *jax.device_get((tokens, resp_mask)))
            m["rollout_true_match_rate"] = float(np.mean(data.market.true_match(sids, texts)))
        m["skipped_iterations"] = skipped
        if done % cfg.eval_every == 0 or done == cfg.iterations:
            last_eval, texts = evaluate(state.actor.params)
            m.update(last_eval)
            writer.text(done, "samples", texts[0] if texts else "")
        writer.write(done, m)
        bar.update(done, f"proxy {m['proxy_reward']:.3f} kl {m['kl']:.2f}")
        if done % cfg.checkpoint_every == 0 or done == cfg.iterations:
            ckpt.save(done, state, {"data_iterator": it.get_state()})
        preemption.check(
            "ppo", done, lambda d=done, s=state: ckpt.save(d, s, {"data_iterator": it.get_state()})
        )
    bar.close()
    if start >= cfg.iterations:  # killed after the last checkpoint, before final.json
        last_eval, _ = evaluate(state.actor.params)  # greedy: the same numbers as before
    history = metrics_mod.read_metrics(out_dir)
    rollouts = [h for h in history if "proxy_reward" in h]
    result = dict(
        proxy_reward_start=start_eval.get("eval_proxy_reward"),
        proxy_reward_end=last_eval.get("eval_proxy_reward"),
        true_match_rate_start=start_eval.get("eval_true_match_rate"),
        true_match_rate_end=last_eval.get("eval_true_match_rate"),
        parse_rate_start=start_eval.get("eval_parse_rate"),
        parse_rate_end=last_eval.get("eval_parse_rate"),
        kl_end=rollouts[-1]["kl"] if rollouts else None,
        kl_coef_end=rollouts[-1]["kl_coef"] if rollouts else None,
        iterations=cfg.iterations,
        advantage=cfg.advantage,
    )
    if jax.process_index() == 0:
        ckpt_mod.write_json_atomic(os.path.join(out_dir, "eval.json"), result)
        from girl_jax import report

        report.plot_ppo(out_dir)
    ckpt.mark_final(cfg.iterations)
    ckpt.close()
    writer.close()
    return result


def load_final_actor(workdir: str, config, data, mesh, rules):
    """(graphdef, params) of the final PPO actor."""
    from girl_jax import checkpoint as ckpt_mod

    cfg, graphs, state, _, _, _ = build(config, workdir, data, mesh, rules)
    restored, _, _ = ckpt_mod.restore_final_state(
        os.path.join(workdir, "ppo"), "ppo", ckpt_mod.abstract_like(state)
    )
    del cfg
    return graphs.actor, restored.actor.params
