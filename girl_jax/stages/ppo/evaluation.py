"""PPO's evaluation, shared by the stage driver (`driver`) and `girl sweep --vmap`.

`make_evaluator` returns `evaluate(params) -> (metrics, texts)`: greedy JDs for the first
`ppo.num_eval_prompts` validation CVs, their reward-model (proxy) score, and, on the embedded
market, the oracle's true match and the parse rate. `result` is the stage's eval.json.
"""

from __future__ import annotations

import numpy as np

from girl_jax.data import batches
from girl_jax.metrics import read_metrics
from girl_jax.stages import common
from girl_jax.stages.generator import EVAL_BATCH, Generator, score_texts
from girl_jax.stages.ppo.rewards import is_gold
from girl_jax.stages.scoring import score_dataset


def make_evaluator(config, cfg, data, graphs, frozen, score_fn, judge_fn=None):
    """evaluate(actor params) -> ({eval_proxy_reward, eval_true_match_rate, ...}, texts);
    `judge_fn` (the held-out judge's jitted scorer, `reward.judge.judge_scorer`): also
    eval_judge_reward, the judge's mean score of the same greedy JDs."""
    tok = data.tokenizer
    P = config.sft.max_prompt_len
    eval_seekers = data.seekers("validation").iloc[: cfg.num_eval_prompts]
    cvs = list(eval_seekers["cv"])
    gen = Generator(
        graphs.actor,
        None,
        tok,
        max_prompt_len=P,
        max_new_tokens=cfg.max_new_tokens,
        greedy=True,
        batch_size=max(1, min(EVAL_BATCH, len(eval_seekers))),
    )

    def evaluate(params):
        gen.params = params
        texts = gen.generate(cvs, common.fold_rng(config.seed, "ppo-eval", 0))
        enc = batches.encode_reward(
            tok, cvs, texts, [0] * len(texts), max_len=P + cfg.max_new_tokens
        )
        s = score_dataset(score_fn, frozen.reward, enc, 64)
        out = {"eval_proxy_reward": float(np.mean(s))}
        if judge_fn is not None:
            judged = score_dataset(judge_fn, frozen.reward, enc, 64)
            out["eval_judge_reward"] = float(np.mean(judged))
        res = score_texts(data.market, eval_seekers["seeker_id"].to_numpy(), texts)
        out.update({f"eval_{k}": v for k, v in res.items()})
        return out, texts

    return evaluate


def select_step(out_dir: str, iterations: int, select: str) -> tuple[int, dict | None]:
    """(step, its eval metrics) of the stage's final model: the last iteration, or (select
    judge) the evaluated step > 0 with the highest eval_judge_reward (the first on a tie), read
    from metrics.jsonl so that a resumed run chooses among every evaluation it made."""
    if select == "last":
        return iterations, None
    rows = [h for h in read_metrics(out_dir) if "eval_judge_reward" in h and h["step"] > 0]
    if not rows:
        return iterations, None
    best = max(rows, key=lambda h: (h["eval_judge_reward"], -h["step"]))
    return int(best["step"]), {k: v for k, v in best.items() if k.startswith("eval_")}


def result(cfg, out_dir: str, start_eval: dict, last_eval: dict, step: int | None = None) -> dict:
    """The stage's eval.json: start / end of the greedy evaluation, the last KL, the settings;
    `step`: the selected final step (ppo.select), whose evaluation `last_eval` is."""
    rollouts = [h for h in read_metrics(out_dir) if "proxy_reward" in h]
    step = cfg.iterations if step is None else step
    at = [h for h in rollouts if h["step"] == step]
    out = dict(
        proxy_reward_start=start_eval.get("eval_proxy_reward"),
        proxy_reward_end=last_eval.get("eval_proxy_reward"),
        true_match_rate_start=start_eval.get("eval_true_match_rate"),
        true_match_rate_end=last_eval.get("eval_true_match_rate"),
        parse_rate_start=start_eval.get("eval_parse_rate"),
        parse_rate_end=last_eval.get("eval_parse_rate"),
        kl_end=(at or rollouts)[-1]["kl"] if rollouts else None,
        kl_coef_end=rollouts[-1]["kl_coef"] if rollouts else None,
        iterations=cfg.iterations,
        algorithm=cfg.algorithm,
        advantage=cfg.advantage,
        policy_loss=cfg.policy_loss,
        reward=cfg.reward,
        gold_reward=is_gold(cfg.reward_terms),
        select=cfg.select,
        selected_step=step,
    )
    if "eval_judge_reward" in last_eval:
        out["judge_reward_start"] = start_eval.get("eval_judge_reward")
        out["judge_reward_end"] = last_eval["eval_judge_reward"]
    return out
