"""The losses of one micro-batch, per assistant token, from the formulas in
`rlver.algorithms`: the policy loss the config names (`algorithm.policy_loss`), the
entropy bonus, the KL to the reference, and PPO's clipped value loss.

Each returns the micro-batch's weighted token sum (what the engine back-propagates) and
per-token statistics (summed over a step by the trainer, as `STAT_KEYS`).
"""

from __future__ import annotations

from typing import Any

import torch

from rlver import algorithms as A
from rlver.registry import POLICY_LOSSES

#: Per-token statistics summed over a step (then divided by its token count).
STAT_KEYS = ("pg_loss", "clip_frac", "entropy", "approx_kl", "kl_ref", "value_loss",
             "value_clip_frac")


def ppo_clip(logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor,
             alg: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate (`algorithm.clip_ratio`): (loss, clipped) per token."""
    return A.clipped_surrogate(logp, old_logp, adv, alg.clip_ratio)


def actor_loss(actor: Any, b: dict[str, torch.Tensor], alg: Any,
               temperature: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(weighted sum of per-token losses, per-token stats) of one micro-batch."""
    logits = actor(b["input_ids"], b["attention_mask"], b["rows"], b["cols"] - 1)
    logp, entropy = A.target_terms(logits, b["targets"], temperature)
    pg_loss, clipped = POLICY_LOSSES.get(alg.policy_loss)(logp, b["old_logp"], b["adv"], alg)
    if "is_weight" in b:  # algorithm.rollout_is: the engine sampled, not these weights
        pg_loss = pg_loss * b["is_weight"]
    loss = pg_loss - alg.entropy_coef * entropy
    stats = {"pg_loss": pg_loss, "clip_frac": clipped, "entropy": entropy}
    if alg.kl_coef > 0:
        kl = A.kl_penalty(logp, b["ref_logp"], alg.kl_estimator)
        loss = loss + alg.kl_coef * kl
        stats["kl_ref"] = kl
    stats["approx_kl"] = A.approx_kl_terms(logp, b["old_logp"])
    stats["logp"] = logp.detach()  # not summed: the trainer's side of the gap (mismatch)
    return A.masked_sum(loss, b["weight"]), stats


def critic_loss(critic: Any, b: dict[str, torch.Tensor],
                alg: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO's clipped value loss of one micro-batch (`algorithm.value_clip`)."""
    values = critic(b["input_ids"], b["attention_mask"])[b["rows"], b["cols"]]
    loss, clipped = A.clipped_value_loss(values, b["old_values"], b["returns"], alg.value_clip)
    return A.masked_sum(loss, b["weight"]), {"value_loss": loss, "value_clip_frac": clipped}
