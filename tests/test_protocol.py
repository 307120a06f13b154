"""The emotion protocol: every backend relies on these rules, so they are pinned here."""

from __future__ import annotations

import pytest

from rlver.simulator import protocol
from rlver.simulator.protocol import ProtocolSettings, reward, state, step

TRAINING = ProtocolSettings(initial_emotion=30, max_delta=None, max_turns=8, failure_below=1)
BENCHMARK = ProtocolSettings(initial_emotion=40, max_delta=10, max_turns=10, failure_below=10)


def test_benchmark_clips_the_change_training_does_not() -> None:
    assert step(BENCHMARK, 40, 25, 1, False) == protocol.Step(50, 10, None)
    assert step(BENCHMARK, 40, -25, 1, False) == protocol.Step(30, -10, None)
    assert step(BENCHMARK, 40, 7, 1, False) == protocol.Step(47, 7, None)
    assert step(TRAINING, 30, 25, 1, False) == protocol.Step(55, 25, None)
    assert step(TRAINING, 30, -25, 1, False) == protocol.Step(5, -25, None)


@pytest.mark.parametrize("settings", [TRAINING, BENCHMARK], ids=["training", "benchmark"])
def test_emotion_stays_in_bounds_and_delta_is_what_was_applied(
    settings: ProtocolSettings,
) -> None:
    up = step(settings, 95, 40, 1, False)
    assert (up.emotion, up.delta) == (100, 5)
    down = step(settings, 5, -40, 1, False)
    assert (down.emotion, down.delta) == (0, -5)
    for emotion in range(0, 101, 7):
        for proposed in range(-60, 61, 9):
            s = step(settings, emotion, proposed, 1, False)
            assert 0 <= s.emotion <= 100
            assert s.emotion - emotion == s.delta


@pytest.mark.parametrize(
    "emotion, letter",
    [(100, "S"), (99, "A"), (70, "A"), (69, "B"), (40, "B"), (39, "C"), (10, "C"), (9, "F"),
     (0, "F"), (-5, "F")],
)
def test_states_by_threshold(emotion: int, letter: str) -> None:
    assert state(emotion) == letter


def test_success_and_failure_thresholds() -> None:
    assert step(TRAINING, 90, 10, 1, False).outcome == "success"
    assert step(TRAINING, 90, 9, 1, False).outcome is None
    # Training ends only at emotion 0; the benchmark already below 10.
    assert step(TRAINING, 5, -4, 1, False).outcome is None
    assert step(TRAINING, 5, -5, 1, False).outcome == "failure"
    assert step(BENCHMARK, 15, -5, 1, False).outcome is None
    assert step(BENCHMARK, 15, -6, 1, False).outcome == "failure"


def test_termination_order_success_failure_farewell_turn_limit() -> None:
    last = BENCHMARK.max_turns
    assert step(BENCHMARK, 95, 10, last, True).outcome == "success"
    assert step(BENCHMARK, 12, -5, last, True).outcome == "failure"
    assert step(BENCHMARK, 50, 0, last, True).outcome == "goodbye"
    assert step(BENCHMARK, 50, 0, last, False).outcome == "max_turns"
    assert step(BENCHMARK, 50, 0, last - 1, False).outcome is None
    assert step(BENCHMARK, 50, 0, 1, True).outcome == "goodbye"


@pytest.mark.parametrize("max_turns", [1, 3, 8, 10])
@pytest.mark.parametrize("settings", [TRAINING, BENCHMARK], ids=["training", "benchmark"])
def test_exactly_max_turns_replies(settings: ProtocolSettings, max_turns: int) -> None:
    settings = ProtocolSettings(settings.initial_emotion, settings.max_delta, max_turns,
                                settings.failure_below)
    emotion, replies, outcome = settings.initial_emotion, 0, None
    while outcome is None:
        replies += 1
        s = step(settings, emotion, 0, replies, False)
        emotion, outcome = s.emotion, s.outcome
    assert (replies, outcome) == (max_turns, "max_turns")


def test_reward_is_final_emotion_over_100_floored_at_zero() -> None:
    assert reward(100) == 1.0
    assert reward(55) == pytest.approx(0.55)
    assert reward(0) == 0.0
    assert reward(-20) == 0.0
