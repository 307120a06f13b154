"""The benchmark's metrics, one definition for our evaluations and for published logs."""

from __future__ import annotations

from collections import Counter
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
