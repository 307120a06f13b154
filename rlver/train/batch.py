"""Rows as tensors: the assistant positions of a rollout row, collation of micro-batches,
and the rollout-time terms every rank needs (reference log-probs, critic values)."""

from __future__ import annotations

from typing import Any

import torch

from rlver import algorithms as A
from rlver.train.plan import pack, spread

#: Per-row tensors over the row's assistant tokens, computed once before the first step.
Terms = dict[int, dict[str, torch.Tensor]]


def action_positions(row: dict[str, Any]) -> list[int]:
    """Assistant tokens that have a prediction (position 0 has none)."""
    return [t for t, m in enumerate(row["loss_mask"]) if m and t > 0]


def collate(rows: list[dict[str, Any]], terms: list[dict[str, torch.Tensor]], weight: float,
            pad_id: int, device: Any) -> dict[str, torch.Tensor]:
    """Padded ids and mask, the (row, position) of every assistant token with its id
    (`targets`), and the per-token terms flattened in the same order."""
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    rows_idx, cols = [], []
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        attention[i, : len(r["input_ids"])] = 1
        pos = action_positions(r)
        rows_idx += [i] * len(pos)
        cols += pos
    out = {"input_ids": ids, "attention_mask": attention, "rows": torch.tensor(rows_idx),
           "cols": torch.tensor(cols, dtype=torch.long)}
    for key in terms[0]:
        out[key] = torch.cat([t[key] for t in terms])
    out["targets"] = ids[out["rows"], out["cols"]]
    out["weight"] = torch.full((len(cols),), weight)
    return {k: v.to(device) for k, v in out.items()}


def rollout_terms(rows: list[dict[str, Any]], alg: Any, critic: Any, reference: Any,
                  temperature: float, rank: int, world: int, pad_id: int,
                  device: Any) -> Terms:
    """Per-row terms computed once, before the first step, by models that do not train
    in this update: the critic's values (PPO) and the reference policy's log-probs at the
    sampling temperature (KL; the same distribution the policy's log-probs are taken
    from). Each rank computes its share; all ranks get all rows."""
    lengths = [len(r["input_ids"]) for r in rows]
    micro = spread(pack(list(range(len(rows))), lengths, alg.micro_batch_size,
                        alg.micro_batch_tokens), rank, world)
    mine: Terms = {}
    with torch.no_grad():
        for mb in micro:
            empty: list[dict[str, torch.Tensor]] = [{} for _ in mb.rows]
            b = collate([rows[r] for r in mb.rows], empty, 0.0, pad_id, device)
            sizes = [len(action_positions(rows[r])) for r in mb.rows]
            out: dict[str, list[torch.Tensor]] = {}
            if critic is not None:
                values = critic(b["input_ids"], b["attention_mask"])[b["rows"], b["cols"]]
                out["old_values"] = list(values.float().cpu().split(sizes))
            if reference is not None:
                logits = reference(b["input_ids"], b["attention_mask"], b["rows"], b["cols"] - 1)
                logp = A.target_logprobs(logits, b["targets"], temperature)
                out["ref_logp"] = list(logp.cpu().split(sizes))
            if mb.weight:
                for k, r in enumerate(mb.rows):
                    mine[r] = {key: v[k] for key, v in out.items()}
    gathered: list[Any] = [None] * world
    torch.distributed.all_gather_object(gathered, mine)
    return {r: t for part in gathered for r, t in part.items()}
