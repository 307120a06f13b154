"""The training-inference mismatch: the trainer's own log-probs of the rollouts, the old
log-probs of the ratio (`algorithm.old_logprobs`), the importance-sampling correction
(`algorithm.rollout_is`) and the gap between engine and trainer, logged every update.

The rollout engine (vLLM, or transformers' generate with a KV cache, in bf16 at scale)
and the trainer (DeepSpeed, its own precision and kernels) compute the same policy's
log-probs differently. With the engine's as the old log-probs, the first step's ratio
is not 1 and the clip removes tokens for no reason; `recompute` takes the trainer's, from
one no-grad pass over the rows before the first step (as verl does), on the first
epoch's micro-batches, so that the first step computes them again bit for bit. With
`rollout` and no correction nothing needs them before the first step, so the pass is not
run (a forward over every row: a fifth of a CPU update's time): the first step's own
forward gives the trainer's log-probs of its rows, the same values, and the gap is
measured on those (every row where an epoch is one step, as in the paper's configs).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from rlver import algorithms as A
from rlver.registry import ROLLOUT_IS
from rlver.train.batch import Terms, action_positions, collate
from rlver.train.plan import MicroBatch


def needs_pass(alg: Any) -> bool:
    """Whether the update needs the trainer's log-probs of every row before its first
    step: as the ratio's old log-probs (`recompute`) or for the correction's weights."""
    return alg.old_logprobs == "recompute" or alg.rollout_is != "none"


def policy_logprobs(rows: list[dict[str, Any]], micro: list[MicroBatch], actor: Any,
                    temperature: float, world: int, pad_id: int,
                    device: torch.device) -> dict[int, torch.Tensor]:
    """The trainer's log-probs of each row's sampled tokens at the sampling temperature,
    with the weights before the first step, over `micro` (this rank's micro-batches of
    the first epoch, which hold every row once over the ranks); all ranks get all rows."""
    logps = []
    with torch.no_grad():
        for mb in micro:
            b = collate([rows[r] for r in mb.rows], [{} for _ in mb.rows], mb.weight, pad_id,
                        device)
            logits = actor(b["input_ids"], b["attention_mask"], b["rows"], b["cols"] - 1)
            logps.append(A.target_logprobs(logits, b["targets"], temperature))
    return _by_row(rows, micro, logps, world)


def _by_row(rows: list[dict[str, Any]], micro: list[MicroBatch], logps: list[torch.Tensor],
            world: int) -> dict[int, torch.Tensor]:
    """Per-micro-batch log-probs of this rank's `micro` split into rows; all ranks get
    every rank's rows (a collective)."""
    mine: dict[int, torch.Tensor] = {}
    for mb, logp in zip(micro, logps, strict=True):
        if mb.weight:
            sizes = [len(action_positions(rows[r])) for r in mb.rows]
            mine |= dict(zip(mb.rows, logp.cpu().split(sizes), strict=True))
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return {r: t for part in gathered for r, t in part.items()}


def first_step_logprobs(terms: Terms, rows: list[dict[str, Any]], micro: list[MicroBatch],
                        logps: list[torch.Tensor], world: int) -> None:
    """Without the pass (`needs_pass`): the trainer's log-probs of the first step's rows,
    `logps` of its forward over this rank's `micro` (one tensor per micro-batch), as
    `policy_logp` in `terms` on every rank. A collective."""
    for r, t in _by_row(rows, micro, logps, world).items():
        terms[r]["policy_logp"] = t


def old_logprobs(terms: Terms, policy: Optional[dict[int, torch.Tensor]], alg: Any) -> Terms:
    """`terms` (whose `old_logp` are the engine's) with the engine's log-probs as
    `rollout_logp`, the trainer's (`policy`, from the pass; None without it) as
    `policy_logp`, the ratio's `old_logp` chosen by `algorithm.old_logprobs`, and the
    `algorithm.rollout_is` weights (`is_weight`)."""
    if policy is None:
        return {i: t | {"rollout_logp": t["old_logp"]} for i, t in terms.items()}
    correction = ROLLOUT_IS.get(alg.rollout_is)
    out: Terms = {}
    for i, t in terms.items():
        engine, trainer = t["old_logp"], policy[i]
        out[i] = t | {"rollout_logp": engine, "policy_logp": trainer,
                      "old_logp": trainer if alg.old_logprobs == "recompute" else engine}
        weight = correction(trainer, engine, alg.rollout_is_cap)
        if weight is not None:
            out[i]["is_weight"] = weight
    return out


def gap(terms: Terms, alg: Any) -> dict[str, float]:
    """Engine against trainer over the assistant tokens whose trainer log-probs the update
    has (all, or the first step's without the pass; their count `logp_gap_tokens`): the
    mean and max |delta log-prob|, the k3 estimate of KL(engine || trainer)
    (`rollout_kl`), and with a correction the mean weight and the share of tokens at the
    cap."""
    measured = [t for t in terms.values() if "policy_logp" in t]
    if not measured:
        return {}
    # float64: gaps of 1e-6 (fp32 engines) give k3 terms of 1e-12, under float32's rounding
    engine = torch.cat([t["rollout_logp"] for t in measured]).double()
    trainer = torch.cat([t["policy_logp"] for t in measured]).double()
    delta = (trainer - engine).abs()
    if not delta.numel():
        return {}
    out = {"logp_gap_mean": delta.mean().item(), "logp_gap_max": delta.max().item(),
           "rollout_kl": A.approx_kl_terms(trainer, engine).mean().item(),
           "logp_gap_tokens": delta.numel()}
    if all("is_weight" in t for t in terms.values()):
        weight = torch.cat([t["is_weight"] for t in terms.values()])
        out["rollout_is_weight_mean"] = weight.mean().item()
        out["rollout_is_capped_share"] = (weight >= alg.rollout_is_cap).float().mean().item()
    return out
