"""The training-inference mismatch by hand (rlver/train/mismatch.py, the TIS weights of
rlver/algorithms.py), and the rows an update leaves out. The trainer's pass itself runs
in test_train.py (the first step's ratio exactly 1) and bench/mismatch.py."""

from __future__ import annotations

import math

import pytest
import torch

from rlver import algorithms, config
from rlver.errors import RlverInputError
from rlver.train import mismatch
from rlver.train.losses import actor_loss

from .helpers import update_spec

LOG = math.log


def test_truncated_importance_weights_by_hand():
    trainer = torch.tensor([LOG(0.5), LOG(0.2), LOG(0.9)])
    engine = torch.tensor([LOG(0.25), LOG(0.4), LOG(0.1)])
    # p_trainer / p_engine: 2, 0.5, 9 -> capped at 2: 2, 0.5, 2
    weights = algorithms.truncated_rollout_is(trainer, engine, cap=2.0)
    assert weights.tolist() == pytest.approx([2.0, 0.5, 2.0], rel=1e-6)
    assert algorithms.no_rollout_is(trainer, engine, cap=2.0) is None


def _alg(*overrides: str):
    return config.compose("smoke", list(overrides)).algorithm


def test_the_old_logprobs_and_weights_follow_the_config():
    engine, trainer = torch.tensor([LOG(0.25), LOG(0.4)]), torch.tensor([LOG(0.5), LOG(0.2)])
    terms = {0: {"old_logp": engine, "adv": torch.ones(2)}}
    rollout = mismatch.old_logprobs(terms, {0: trainer}, _alg())[0]
    assert rollout["old_logp"] is engine and "is_weight" not in rollout
    assert rollout["rollout_logp"] is engine and rollout["policy_logp"] is trainer
    tis = mismatch.old_logprobs(terms, {0: trainer}, _alg(
        "algorithm.old_logprobs=recompute", "algorithm.rollout_is=tis",
        "algorithm.rollout_is_cap=1.5"))[0]
    assert tis["old_logp"] is trainer and tis["adv"] is terms[0]["adv"]
    assert tis["is_weight"].tolist() == pytest.approx([1.5, 0.5])


def test_the_gap_by_hand():
    engine = [torch.tensor([LOG(0.25), LOG(0.4)]), torch.tensor([LOG(0.5)])]
    trainer = [torch.tensor([LOG(0.5), LOG(0.2)]), torch.tensor([LOG(0.5)])]
    terms = {i: {"rollout_logp": e, "policy_logp": t, "is_weight": torch.clamp(t.exp() / e.exp(),
                                                                                max=1.5)}
             for i, (e, t) in enumerate(zip(engine, trainer, strict=True))}
    gap = mismatch.gap(terms, _alg("algorithm.rollout_is_cap=1.5"))
    # |delta|: ln 2, ln 2, 0; k3 with r = 2, 0.5, 1: (1 - ln 2), (-0.5 + ln 2), 0
    assert gap["logp_gap_mean"] == pytest.approx(2 * LOG(2) / 3, rel=1e-6)
    assert gap["logp_gap_max"] == pytest.approx(LOG(2), rel=1e-6)
    assert gap["rollout_kl"] == pytest.approx(0.5 / 3, rel=1e-5)
    assert gap["rollout_is_weight_mean"] == pytest.approx(3.0 / 3, rel=1e-6)
    assert gap["rollout_is_capped_share"] == pytest.approx(1 / 3)
    assert gap["logp_gap_tokens"] == 3


def test_without_the_pass_the_gap_is_over_the_rows_the_first_step_measured():
    """`rollout` with no correction runs no pass (`needs_pass`): the terms keep the
    engine's log-probs, and the gap counts only the rows that got the trainer's side
    (the first step's, `first_step_logprobs`)."""
    assert not mismatch.needs_pass(_alg())
    assert mismatch.needs_pass(_alg("algorithm.old_logprobs=recompute"))
    engine = [torch.tensor([LOG(0.25), LOG(0.4)]), torch.tensor([LOG(0.5)])]
    terms = mismatch.old_logprobs({i: {"old_logp": e} for i, e in enumerate(engine)}, None,
                                  _alg())
    assert all(t["old_logp"] is t["rollout_logp"] and "policy_logp" not in t
               for t in terms.values())
    assert mismatch.gap(terms, _alg()) == {}
    terms[1]["policy_logp"] = torch.tensor([LOG(0.25)])
    gap = mismatch.gap(terms, _alg())
    assert gap["logp_gap_tokens"] == 1 and "rollout_is_weight_mean" not in gap
    assert gap["logp_gap_mean"] == pytest.approx(LOG(2), rel=1e-6)


def test_the_weights_scale_each_tokens_policy_loss():
    """actor_loss with `is_weight`: each token's clipped-surrogate term times its weight."""
    logits = torch.log(torch.tensor([[0.5, 0.5], [0.2, 0.8]]))
    b = {"input_ids": torch.zeros(1, 3, dtype=torch.long), "attention_mask": torch.ones(1, 3),
         "rows": torch.tensor([0, 0]), "cols": torch.tensor([1, 2]),
         "targets": torch.tensor([0, 1]), "old_logp": torch.log(torch.tensor([0.5, 0.8])),
         "adv": torch.tensor([1.0, -2.0]), "weight": torch.ones(2)}
    alg = _alg()

    def actor(*_args):
        return logits

    plain, stats = actor_loss(actor, b, alg, 1.0)
    weighted, _ = actor_loss(actor, b | {"is_weight": torch.tensor([2.0, 0.5])}, alg, 1.0)
    # ratio 1 on both tokens: -A per token, so 1 * -1 + 1 * 2 and 2 * -1 + 0.5 * 2
    assert plain.item() == pytest.approx(1.0) and weighted.item() == pytest.approx(-1.0)
    assert stats["clip_frac"].tolist() == [0.0, 0.0]


def test_rows_of_dialogues_ended_by_an_error_are_left_out_of_the_update(tmp_path, base_model,
                                                                       rows):
    """A dialogue ended by a full context or a failed simulator (outcome error) is not
    trained on: its rows leave the batch and its groups, and are counted."""
    from rlver.train.trainer import read_batch

    failed = [r | {"outcome": "error"} if i == 0 else r for i, r in enumerate(rows)]
    spec = update_spec(tmp_path, base_model, failed, "errors", "iterations=1")
    cfg = config.load(spec.config_path)
    batch = read_batch(spec, cfg, 0, 1)
    assert [r["outcome"] for r in batch.rows] == [r["outcome"] for r in rows[1:]]
    assert batch.excluded == 1
    spec = update_spec(tmp_path, base_model, [r | {"outcome": "error"} for r in rows],
                       "all_errors", "iterations=1")
    with pytest.raises(RlverInputError, match=r"all 4 rollout rows .* ended with outcome "
                                              r"error \(field outcome\): nothing to train on"):
        read_batch(spec, cfg, 0, 1)
