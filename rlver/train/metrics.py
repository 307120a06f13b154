"""The update's numbers: per optimizer step and for the whole update, in `metrics.json`
and the run's TensorBoard.

Besides the losses and CleanRL's diagnostics (clip fraction, approx KL, entropy, gradient
norm, explained variance), the health numbers RL-for-LLM users look for first (verl
logs the same): reply length, the share of replies cut at `rollout.max_new_tokens`, the
share of GRPO groups whose rewards do not differ (they carry no gradient), the
advantages' spread, the mean reward by how dialogues ended, and the share of simulator
turns of the iteration's rollouts that fell back (`simulator_fallback_rate`).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rlver import algorithms as A
from rlver.fallbacks import fallback_stats
from rlver.scalars import Point, numbers
from rlver.schema import OUTCOMES
from rlver.train import mismatch
from rlver.train.batch import Terms, action_positions


def replies(row: dict[str, Any]) -> list[tuple[int, bool]]:
    """(tokens, cut at max_new_tokens) of each reply a row trains on: all of a dialogue's
    (nothink), or the one of its own turn (think: one row per turn)."""
    spans = A.turn_spans(action_positions(row))
    cut = row["truncated"]
    if len(spans) != len(cut):  # a think row: its one reply is turn `sample`
        cut = [cut[row["sample"]]] * len(spans)
    # A reply's first token is never at position 0, so the spans hold every sampled token.
    return [(len(s), c) for s, c in zip(spans, cut, strict=True)]


def zero_spread_groups(rows: list[dict[str, Any]]) -> dict[str, bool]:
    """For each group, whether its rewards are all equal over the update."""
    rewards = torch.tensor([r["reward"] for r in rows], dtype=torch.float32)
    return A.zero_spread(rewards, [r["group_id"] for r in rows])


def health(rows: list[dict[str, Any]], terms: Terms, which: list[int],
           zero_spread: dict[str, bool]) -> dict[str, float]:
    """The health numbers of rows `which`: reply length (mean, max), share of replies
    truncated, share of their groups with zero reward spread, advantage mean/std/min/max
    over their tokens, and mean reward by outcome (`reward_<outcome>`)."""
    lengths, cut = [], []
    for i in which:
        for n, c in replies(rows[i]):
            lengths.append(n)
            cut.append(c)
    groups = {rows[i]["group_id"] for i in which}
    adv = torch.cat([terms[i]["adv"] for i in which]) if which else torch.zeros(0)
    out = {
        "reply_length_mean": sum(lengths) / len(lengths) if lengths else 0.0,
        "reply_length_max": float(max(lengths, default=0)),
        "truncated_share": sum(cut) / len(cut) if cut else 0.0,
        "zero_spread_groups": sum(zero_spread[g] for g in groups) / max(1, len(groups)),
        "adv_mean": adv.mean().item() if adv.numel() else 0.0,
        "adv_std": adv.std(unbiased=False).item() if adv.numel() else 0.0,
        "adv_min": adv.min().item() if adv.numel() else 0.0,
        "adv_max": adv.max().item() if adv.numel() else 0.0,
    }
    for outcome in OUTCOMES:
        rewards = [rows[i]["reward"] for i in which if rows[i]["outcome"] == outcome]
        if rewards:
            out[f"reward_{outcome}"] = sum(rewards) / len(rewards)
    return out


def summary(iteration: int, cfg: Any, rows: list[dict[str, Any]], terms: Terms,
            zero_spread: dict[str, bool], progress: Any, t0: float,
            world: int, excluded: int = 0) -> dict[str, Any]:
    """The update's summary: token-weighted means over its steps (`progress.steps`), the
    batch's numbers and its health (with the engine-trainer gap, rlver.train.mismatch),
    and every step's record under `steps`. `excluded`: rows left out (outcome error)."""
    steps = progress.steps
    tokens = sum(s["tokens"] for s in steps)

    def token_mean(key: str) -> float:
        return sum(s[key] * s["tokens"] for s in steps) / max(1, tokens)

    rewards = torch.tensor([r["reward"] for r in rows], dtype=torch.float32)
    metrics: dict[str, Any] = {
        "iteration": iteration,
        "algorithm": cfg.algorithm.name,
        "loss": token_mean("loss"),
        "clip_fraction": token_mean("clip_frac"),
        "approx_kl": token_mean("approx_kl"),
        "entropy": token_mean("entropy"),
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std(unbiased=False).item(),
        "num_samples": len(rows),
        "excluded_error_rows": excluded,
        "num_tokens": sum(len(action_positions(r)) for r in rows),
        "grad_norm": sum(s["grad_norm"] for s in steps) / len(steps),
        "lr": steps[-1]["lr"],
        "optimizer_steps": len(steps),
        "world_size": world,
        "carried_state": steps[0]["carried_state"],
        "resumed_at_steps": progress.resumed_at,
        "seconds": progress.seconds + time.perf_counter() - t0,
        "tokens_per_s": progress.tokens_seen / max(1e-9, progress.train_seconds),
    }
    if cfg.algorithm.kl_coef > 0:
        metrics["kl_ref"] = token_mean("kl_ref")
    if cfg.algorithm.name == "ppo":
        values = torch.cat([terms[i]["old_values"] for i in range(len(rows))])
        returns = torch.cat([terms[i]["returns"] for i in range(len(rows))])
        metrics |= {
            "value_loss": token_mean("value_loss"),
            "value_clip_fraction": token_mean("value_clip_frac"),
            "explained_variance": A.explained_variance(values, returns,
                                                       torch.ones_like(values)),
            "value_mean": values.mean().item(),
            "critic_grad_norm": sum(s["critic_grad_norm"] for s in steps) / len(steps),
            "critic_lr": steps[-1]["critic_lr"],
        }
    metrics |= health(rows, terms, list(range(len(rows))), zero_spread)
    metrics |= mismatch.gap(terms, cfg.algorithm) | {
        "clip_fraction_first_step": steps[0]["clip_frac"],
        "approx_kl_first_step": steps[0]["approx_kl"]}
    metrics |= fallback_stats(rows)
    metrics["steps"] = steps
    return metrics


def points(metrics: dict[str, Any], first_step: int) -> list[Point]:
    """The summary at the iteration (`update/*`), and every optimizer step's record at its
    global step (`step/*`), for the run's TensorBoard (rlver.scalars)."""
    iteration = metrics["iteration"]
    out = numbers({k: v for k, v in metrics.items() if k != "steps"}, "update", iteration)
    for k, record in enumerate(metrics["steps"]):
        out += numbers(record, "step", first_step + k, ())
    return out
