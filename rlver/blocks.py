"""Resident blocks: which iterations one job runs (`cluster.iterations_per_job`), and
which files it writes.

A block of iterations [first, last) writes every file the per-stage rules would write
for them: the rollout shards and update metrics of each iteration, the policies that are
kept (those evaluated, all with `algorithm.keep_policies: all`, and always the block's
last, which the next block starts from), and the evaluations of its evaluated
iterations; the run's last block also evaluates the final policy. The Snakefile declares
these as the block rule's outputs; the block job skips what is already complete.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlver.config import evaluated_iterations
from rlver.layout import Run


def blocks(iterations: int, per_job: int) -> list[tuple[int, int]]:
    """The blocks of a run: (first, last) with last exclusive, `per_job` iterations each
    (the last one shorter if they do not divide)."""
    return [(b, min(b + per_job, iterations)) for b in range(0, iterations, per_job)]


def kept_policy(cfg: Any, i: int) -> bool:
    """Whether iteration i's policy stays on disk once used (keep_policies)."""
    return cfg.algorithm.keep_policies == "all" or i in evaluated_iterations(cfg)


@dataclass(frozen=True)
class BlockFiles:
    """The outputs of the block [first, last), by iteration."""

    first: int
    last: int
    #: iteration -> its rollout shards
    rollouts: dict[int, list[Path]]
    #: iteration -> its update's metrics.json
    metrics: dict[int, Path]
    #: iteration i -> iter_<i>/policy, for the policies the block writes and keeps
    policies: dict[int, Path]
    #: iteration -> (eval metrics.json, eval dialogues.parquet), for those it evaluates
    evals: dict[int, tuple[Path, Path]]

    def all(self) -> list[Path]:
        """Every output, in order."""
        out = [p for i in sorted(self.rollouts) for p in self.rollouts[i]]
        out += [self.metrics[i] for i in sorted(self.metrics)]
        out += [self.policies[i] for i in sorted(self.policies)]
        return out + [p for i in sorted(self.evals) for p in self.evals[i]]

    def complete(self, i: int) -> bool:
        """Whether iteration i's files are all there: its shards, its update's metrics
        (written after its kept policy and, at the block's end, its state), its kept
        policy i+1 and its evaluation."""
        want = [*self.rollouts[i], self.metrics[i]]
        want += [self.policies[i + 1]] if i + 1 in self.policies else []
        want += list(self.evals.get(i, ()))
        return all(p.exists() for p in want)


def block_files(cfg: Any, run: Run, first: int, last: int) -> BlockFiles:
    """The files the block [first, last) of `run` writes."""
    evaluated = set(evaluated_iterations(cfg))
    span = range(first, last)
    evals = [i for i in span if i in evaluated]
    if last == cfg.iterations and last in evaluated:
        evals.append(last)
    return BlockFiles(
        first, last,
        rollouts={i: run.shards(i, cfg.rollout.shards) for i in span},
        metrics={i: run.update_metrics(i) for i in span},
        policies={i + 1: run.policy(i + 1) for i in span
                  if kept_policy(cfg, i + 1) or i + 1 == last},
        evals={i: (run.eval_metrics(i), run.eval_dialogues(i)) for i in evals},
    )
