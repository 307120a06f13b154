"""The share of simulator turns that fell back, counted over trajectory rows.

The share comes from the rows (`parse_error` per turn, the error in `reason`), so it is
the same number for a stage that just ran and for a file read later: the rollout and
evaluate stages check it (rlver.simulator.health), the update and the report show it.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

#: Metric keys, in the stage's metrics (eval metrics.json, update metrics.json) and in a
#: rollout shard's Parquet metadata.
RATE_KEY = "simulator_fallback_rate"
#: The start of a fallback's reason (rlver.simulator.llm); the error follows "attempts: ".
_AFTER = "attempts: "
#: A message example is cut here: an error body can be long.
_MAX_ERROR_CHARS = 160


def error_kind(message: str) -> str:
    """The kind of a fallback's error, its first field: `connection error`, `timeout
    after 60 s`, `http 503`, `AnswerFormatError`, `bad response (not a chat completion)`."""
    return message.split(": ", 1)[0]


def fallback_stats(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Turns, fallbacks, their share and the most common error (an example message of
    the most common kind; "" without fallbacks) over trajectory rows. Rows with sample > 0
    repeat their dialogue's turns (think: one row per turn) and are skipped."""
    turns = fallbacks = 0
    errors: Counter[str] = Counter()
    examples: dict[str, str] = {}
    for row in rows:
        if row["sample"] != 0:
            continue
        turns += len(row["parse_error"])
        for failed, reason in zip(row["parse_error"], row["reason"], strict=True):
            if failed:
                fallbacks += 1
                message = reason.split(_AFTER, 1)[-1]
                kind = error_kind(message)
                errors[kind] += 1
                examples.setdefault(kind, message[:_MAX_ERROR_CHARS])
    top = errors.most_common(1)
    return {
        "simulator_turns": turns,
        "simulator_fallbacks": fallbacks,
        RATE_KEY: fallbacks / turns if turns else 0.0,
        "simulator_top_error": examples[top[0][0]] if top else "",
        "simulator_top_error_count": top[0][1] if top else 0,
    }
