"""The plan of an update: which rows each optimizer step takes (epochs x mini-batches,
seeded shuffles), packed into micro-batches and spread over the ranks so that the
gradient does not depend on the world size."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

from rlver.errors import RlverInputError


@dataclass
class MicroBatch:
    rows: list[int]
    #: 0 for a filler that only keeps a rank in step with the others' collectives.
    weight: float = 1.0


@dataclass
class Step:
    """One optimizer step on this rank: its micro-batches, and the whole mini-batch's
    rows (on every rank) and assistant tokens."""

    micro: list[MicroBatch]
    rows: list[int]
    tokens: int


def pack(rows: list[int], lengths: list[int], max_rows: int, max_tokens: int) -> list[list[int]]:
    """Micro-batches of at most `max_rows` sequences and `max_tokens` padded tokens, longest
    first (little padding); a sequence over the budget gets a micro-batch of its own."""
    out: list[list[int]] = []
    for r in sorted(rows, key=lambda r: (-lengths[r], r)):
        mb = out[-1] if out else None
        fits = mb is not None and len(mb) < max_rows and (
            max_tokens == 0 or (len(mb) + 1) * lengths[mb[0]] <= max_tokens)
        if fits:
            mb.append(r)  # type: ignore[union-attr]
        else:
            out.append([r])
    return out


def spread(micro: list[list[int]], rank: int, world: int) -> list[MicroBatch]:
    """This rank's share of `micro` (round robin), padded with zero-weight fillers so that
    every rank runs the same number: 2 ranks x N == 1 rank x 2N of the same micro-batches."""
    mine = [MicroBatch(m) for m in micro[rank::world]]
    while len(mine) < math.ceil(len(micro) / world):
        mine.append(MicroBatch(micro[0][:1], weight=0.0))
    return mine


def make_plan(lengths: list[int], actions: list[int], alg: Any, seed: int, iteration: int,
              rank: int, world: int) -> list[Step]:
    """Every optimizer step of the update: epochs x mini-batches, each a seeded shuffle of
    the rows split evenly, packed into micro-batches (the same on every world size)."""
    from rlver.config import derive_seed

    n = len(lengths)
    if n < alg.mini_batches:
        raise RlverInputError(f"update: {n} rollout rows cannot fill algorithm.mini_batches="
                              f"{alg.mini_batches} mini-batches. Fix: lower it.")
    steps = []
    for epoch in range(alg.ppo_epochs):
        order = list(range(n))
        random.Random(derive_seed(seed, "update", iteration, epoch)).shuffle(order)
        for m in range(alg.mini_batches):
            chunk = order[m * n // alg.mini_batches : (m + 1) * n // alg.mini_batches]
            micro = pack(chunk, lengths, alg.micro_batch_size, alg.micro_batch_tokens)
            steps.append(Step(spread(micro, rank, world), sorted(chunk),
                              sum(actions[r] for r in chunk)))
    return steps
