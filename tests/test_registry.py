"""The registries of the trainer's choices, and the health numbers of an update, by hand."""

from __future__ import annotations

import pytest
import torch

from rlver import config
from rlver.errors import RlverInputError
from rlver.registry import (
    ADV_ESTIMATORS,
    CREDITS,
    GROUP_NORMS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    Registry,
    adv_estimator,
)
from rlver.train.metrics import health, replies, zero_spread_groups


def test_every_registered_name_resolves_to_a_function():
    for registry in (ADV_ESTIMATORS, CREDITS, GROUP_NORMS, KL_ESTIMATORS, POLICY_LOSSES):
        assert registry.names()
        for name in registry.names():
            assert callable(registry.get(name)), (registry.key, name)


def test_unknown_names_are_refused_with_the_known_ones():
    reg = Registry("algorithm.thing", {"a": "math:sqrt"})
    with pytest.raises(RlverInputError, match=r"algorithm.thing='b'.*one of a\."):
        reg.get("b")
    reg.register("b", abs)
    assert reg.get("b") is abs and reg.names() == ["a", "b"]
    with pytest.raises(ValueError, match="registered already"):
        reg.register("a", abs)
    with pytest.raises(RlverInputError, match="algorithm.policy_loss must be one of: ppo_clip"):
        config.compose("smoke", ["algorithm.policy_loss=dual_clip"])


def test_the_estimator_defaults_to_the_algorithms_own():
    assert adv_estimator(config.compose("smoke").algorithm) == "grpo"
    assert adv_estimator(config.compose("smoke", ["algorithm=ppo"]).algorithm) == "gae"
    with pytest.raises(RlverInputError, match="algorithm.adv_estimator must be gae with"):
        config.compose("smoke", ["algorithm.adv_estimator=gae"])  # GRPO has no critic


def row(mask: list[int], truncated: list[bool], reward: float, group: str = "g",
        sample: int = 0, outcome: str = "goodbye") -> dict:
    return {"loss_mask": mask, "truncated": truncated, "reward": reward, "group_id": group,
            "sample": sample, "outcome": outcome}


def test_replies_of_a_dialogue_and_of_a_think_turn():
    # nothink: replies at tokens 2-4 (cut) and 7-8 (ended)
    assert replies(row([0, 0, 1, 1, 1, 0, 0, 1, 1], [True, False], 0.5)) == [(3, True),
                                                                             (2, False)]
    # think: the row of turn 1 holds its one reply; the flags are the dialogue's
    assert replies(row([0, 0, 0, 1, 1], [False, True, False], 0.5, sample=1)) == [(2, True)]


def test_health_numbers_by_hand():
    rows = [row([0, 1, 1, 0, 1], [False, True], 0.2, "a", outcome="success"),
            row([0, 1, 0, 0, 0], [False], 0.8, "a", outcome="failure"),
            row([0, 1, 1, 1, 0], [True], 0.5, "b", outcome="failure"),
            row([0, 1, 1, 1, 0], [False], 0.5, "b", outcome="failure")]
    terms = {0: {"adv": torch.tensor([1.0, 1.0, 1.0])}, 1: {"adv": torch.tensor([-1.0])},
             2: {"adv": torch.zeros(3)}, 3: {"adv": torch.zeros(3)}}
    zero = zero_spread_groups(rows)
    assert zero == {"a": False, "b": True}
    h = health(rows, terms, [0, 1, 2, 3], zero)
    # replies: 2, 1 | 1 | 3 | 3 tokens; cut: the second of row 0 and row 2's
    assert h["reply_length_mean"] == pytest.approx(10 / 5) and h["reply_length_max"] == 3
    assert h["truncated_share"] == pytest.approx(2 / 5)
    assert h["zero_spread_groups"] == 0.5
    assert h["adv_mean"] == pytest.approx(2 / 10) and (h["adv_min"], h["adv_max"]) == (-1, 1)
    assert h["reward_success"] == pytest.approx(0.2) and h["reward_failure"] == pytest.approx(0.6)
    assert "reward_goodbye" not in h
    assert health(rows, terms, [2, 3], zero)["zero_spread_groups"] == 1.0
