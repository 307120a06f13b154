"""The emotion protocol, pure: start value, per-turn change, states, termination, reward.

Every simulator backend only proposes a change and a reason; this module decides what
happens to the score and when the dialogue ends, so all backends follow the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

#: Emotion states by threshold (the original work's S/A/B/C/F).
STATES: tuple[tuple[str, int], ...] = (("S", 100), ("A", 70), ("B", 40), ("C", 10), ("F", 0))


@dataclass(frozen=True)
class ProtocolSettings:
    """Training: start 30, unclipped, ends at emotion <= 0 (failure_below=1), 8 turns.
    Benchmark: start 40, change clipped to +-10, failure below 10, 10 turns."""

    initial_emotion: int
    max_delta: Optional[int]
    max_turns: int
    failure_below: int
    success_at: int = 100


@dataclass(frozen=True)
class Step:
    """The protocol's verdict on one assistant reply."""

    emotion: int
    delta: int  # the change actually applied (after clipping and the [0, 100] bounds)
    outcome: Optional[str]  # None while the dialogue goes on


def state(emotion: int) -> str:
    """The emotion state letter for a score."""
    for name, threshold in STATES:
        if emotion >= threshold:
            return name
    return "F"


def step(
    settings: ProtocolSettings, emotion: int, proposed_delta: int, turn: int, farewell: bool
) -> Step:
    """Apply one proposed change after assistant reply number `turn` (1-based).

    Order of verdicts: success, failure, farewell, turn limit. The turn limit ends the
    dialogue after exactly `max_turns` replies, never one more.
    """
    delta = int(proposed_delta)
    if settings.max_delta is not None:
        delta = max(-settings.max_delta, min(settings.max_delta, delta))
    new = max(0, min(100, emotion + delta))
    outcome: Optional[str] = None
    if new >= settings.success_at:
        outcome = "success"
    elif new < settings.failure_below:
        outcome = "failure"
    elif farewell:
        outcome = "goodbye"
    elif turn >= settings.max_turns:
        outcome = "max_turns"
    return Step(emotion=new, delta=new - emotion, outcome=outcome)


def reward(final_emotion: int) -> float:
    """Final emotion / 100, floored at 0."""
    return max(0.0, final_emotion / 100.0)
