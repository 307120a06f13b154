"""The benchmark's metrics, one definition for our evaluations and for published logs,
and the half-up rounding of published tables."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from decimal import ROUND_HALF_UP, Decimal
from typing import Any


def benchmark_metrics(final_emotions: list[int], outcomes: list[str], num_turns: list[int],
                      failure_below: int = 10, success_at: int = 100) -> dict[str, Any]:
    """Score, success and failure as the benchmark defines them."""
    n = len(final_emotions)
    success = sum(e >= success_at for e in final_emotions)
    failure = sum(e < failure_below for e in final_emotions)
    return {
        "n": n,
        "score": sum(final_emotions) / n,
        "success": success,
        "failure": failure,
        "success_rate": success / n,
        "failure_rate": failure / n,
        "mean_turns": sum(num_turns) / n,
        "outcomes": {k: v for k, v in sorted(Counter(outcomes).items())},
    }


def round_half_up(value: Decimal, places: int = 1) -> Decimal:
    """Round as published tables do: 68.15 -> 68.2 (float rounding may give 68.1)."""
    return value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)


def exact_mean(values: Sequence[int | Decimal]) -> Decimal:
    """The mean without float error, so the half-up rounding sees the true value."""
    return sum((Decimal(v) for v in values), Decimal(0)) / Decimal(len(values))


def paired_gain(before: dict[str, int], after: dict[str, int]) -> tuple[float, float, int]:
    """Mean change of the final emotion from `before` to `after` over the personas both
    scored (persona -> final emotion), its paired standard error, and their number.

    Paired because a benchmark scores the same personas at every evaluation: the spread of
    the per-persona changes, not of the scores, is what a gain is measured against."""
    common = sorted(before.keys() & after.keys())
    if len(common) < 2:
        raise ValueError(f"a paired gain needs >= 2 personas scored twice, got {len(common)}")
    diffs = [after[k] - before[k] for k in common]
    mean = sum(diffs) / len(diffs)
    var = sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1)
    return mean, (var / len(diffs)) ** 0.5, len(diffs)
