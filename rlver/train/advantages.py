"""From rewards to per-token advantages: the credit (what each part of a dialogue is
scored with) and the estimator (how scores become advantages), both chosen by name
(`algorithm.credit`, `algorithm.adv_estimator`; `rlver.registry`).

A credit turns a row into scored *units*: token spans with the reward placed on the
span's last token and the return from the span on. `final` (the paper) makes the whole
dialogue one unit scored with its final-emotion reward; `turn` (reward-to-go) makes each
reply a unit scored with the emotion change from it to the end.

An estimator turns the units of all rows into each row's token advantages (and, with a
critic, returns): `grpo` compares unit t of a dialogue with unit t of the other
dialogues of its group (whole dialogues under `final`), scaled by `algorithm.adv_std`;
`gae` runs GAE over the assistant tokens with the units' rewards on their last tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from rlver import algorithms as A
from rlver.registry import ADV_ESTIMATORS, CREDITS, adv_estimator
from rlver.train.batch import Terms, action_positions


@dataclass(frozen=True)
class Unit:
    """A scored span of assistant tokens."""

    positions: list[int]
    #: Placed on the span's last token (GAE's token reward).
    reward: float
    #: The return from this span on (what GRPO compares within a group).
    to_go: float


@dataclass
class Credited:
    """What an estimator sees: each row's group, assistant positions, units and, with a
    critic, its rollout-time values (over the positions)."""

    groups: list[str]
    positions: list[list[int]]
    units: list[list[Unit]]
    width: int
    values: Optional[list[torch.Tensor]] = None


def credit_final(row: dict[str, Any], positions: list[int]) -> list[Unit]:
    """The paper: every reply of a dialogue carries its final-emotion reward."""
    return [Unit(positions, row["reward"], row["reward"])]


def credit_turn(row: dict[str, Any], positions: list[int]) -> list[Unit]:
    """Reward-to-go: each reply is scored with its own emotion change and the change from
    it to the end (nothink rows only, checked by the config)."""
    spans = A.turn_spans(positions)
    own = A.turn_rewards(row["emotion_start"], row["emotion"], len(spans))
    to_go = A.turn_returns(row["emotion_start"], row["emotion"], len(spans))
    return [Unit(s, r, g) for s, r, g in zip(spans, own, to_go, strict=True)]


def grpo(batch: Credited, alg: Any) -> list[dict[str, torch.Tensor]]:
    """Group-relative advantages: each unit's return against the same unit of its group."""
    adv = A.turn_group_advantages([[u.to_go for u in units] for units in batch.units],
                                  batch.groups, alg.adv_eps, alg.adv_std)
    return [{"adv": torch.tensor([a for a, u in zip(row_adv, units, strict=True)
                                  for _ in u.positions], dtype=torch.float32)}
            for row_adv, units in zip(adv, batch.units, strict=True)]


def gae(batch: Credited, alg: Any) -> list[dict[str, torch.Tensor]]:
    """GAE over the assistant tokens (`algorithm.gamma`, `gae_lambda`), whitened over the
    update if `algorithm.norm_adv`; needs the critic's values."""
    if batch.values is None:
        raise ValueError("the gae estimator needs a critic's values (algorithm.name=ppo)")
    n = len(batch.positions)
    mask = torch.zeros((n, batch.width), dtype=torch.bool)
    values = torch.zeros((n, batch.width))
    for i, pos in enumerate(batch.positions):
        mask[i, pos] = True
        values[i, pos] = batch.values[i]
    scored = [[u for u in units if u.positions] for units in batch.units]
    token_rewards = A.turn_end_rewards([[u.reward for u in units] for units in scored],
                                       [[u.positions for u in units] for units in scored],
                                       batch.width)
    adv, returns = A.gae(token_rewards, values, mask, alg.gamma, alg.gae_lambda)
    if alg.norm_adv:
        adv = A.whiten(adv, mask)
    return [{"adv": adv[i, pos], "returns": returns[i, pos]}
            for i, pos in enumerate(batch.positions)]


def advantages(rows: list[dict[str, Any]], terms: Terms, alg: Any) -> Terms:
    """Per-row token tensors for the losses: the rollout log-probs, the advantages (and
    returns) of the configured credit and estimator, and the precomputed terms."""
    positions = [action_positions(r) for r in rows]
    credit = CREDITS.get(alg.credit)
    has_values = bool(terms) and all("old_values" in terms.get(i, {}) for i in range(len(rows)))
    batch = Credited(
        groups=[r["group_id"] for r in rows],
        positions=positions,
        units=[credit(r, pos) for r, pos in zip(rows, positions, strict=True)],
        width=max(len(r["input_ids"]) for r in rows),
        values=[terms[i]["old_values"] for i in range(len(rows))] if has_values else None,
    )
    estimated = ADV_ESTIMATORS.get(adv_estimator(alg))(batch, alg)
    out: Terms = {}
    for i, (r, pos) in enumerate(zip(rows, positions, strict=True)):
        out[i] = {"old_logp": torch.tensor(r["logprobs"], dtype=torch.float32)[pos]}
        out[i] |= {k: terms[i][k] for k in ("ref_logp", "old_values") if k in terms.get(i, {})}
        out[i] |= estimated[i]
    return out
