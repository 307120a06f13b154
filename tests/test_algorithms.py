"""The RL math against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from rlver import algorithms
from rlver.errors import RlverInputError


def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.2])
    adv = algorithms.group_advantages(rewards, ["a", "a", "b", "b", "c"], eps=0.0)
    # group a: mean 0.5, population std 0.5 -> +1, -1; b: all equal -> 0; c: alone -> 0
    assert adv[:2].tolist() == pytest.approx([1.0, -1.0])
    assert adv[2:].tolist() == pytest.approx([0.0, 0.0, 0.0])


def test_group_advantages_four_samples():
    rewards = torch.tensor([0.3, 0.5, 0.7, 0.9])
    adv = algorithms.group_advantages(rewards, ["g"] * 4, eps=0.0)
    std = math.sqrt(((0.3) ** 2 + 0.1**2 + 0.1**2 + 0.3**2) / 4)
    assert adv.tolist() == pytest.approx([-0.3 / std, -0.1 / std, 0.1 / std, 0.3 / std], rel=1e-5)


def test_group_advantages_batch_and_none_weight_groups_by_their_spread():
    rewards = torch.tensor([0.6, 0.2, 0.41, 0.39])  # a: spread 0.4, b: a near-tie
    groups = ["a", "a", "b", "b"]
    # group std: both groups +-1, the near-tie pulls as hard as the real difference
    assert algorithms.group_advantages(rewards, groups, 0.0).tolist() == pytest.approx(
        [1.0, -1.0, 1.0, -1.0], rel=1e-4)
    # none: centred only
    assert algorithms.group_advantages(rewards, groups, 0.0, "none").tolist() == pytest.approx(
        [0.2, -0.2, 0.01, -0.01], rel=1e-4)
    # batch: centred, over the std of all centred values, sqrt((0.04 + 0.0001) / 2)
    s = math.sqrt((0.04 + 0.0001) / 2)
    assert algorithms.group_advantages(rewards, groups, 0.0, "batch").tolist() == pytest.approx(
        [0.2 / s, -0.2 / s, 0.01 / s, -0.01 / s], rel=1e-5)
    with pytest.raises(RlverInputError, match="algorithm.adv_std='rank'.*batch, group, none"):
        algorithms.group_advantages(rewards, groups, 0.0, "rank")


@pytest.mark.parametrize("std", ["group", "batch", "none"])
@pytest.mark.parametrize("size", [2, 3, 4, 8, 16, 32, 100])
def test_equal_rewards_give_exactly_zero_advantages_and_count_as_zero_spread(std, size):
    """Rounding makes the float32 std of equal values non-zero (eight rewards of 0.97:
    std 6e-8, advantages -0.1065 each): equality is compared exactly."""
    for k in range(101):
        rewards = torch.full((size,), k / 100, dtype=torch.float32)
        groups = ["g"] * size
        adv = algorithms.group_advantages(rewards, groups, 1e-6, std)
        assert adv.tolist() == [0.0] * size, (k, size, adv[:3].tolist())
        assert algorithms.zero_spread(rewards, groups) == {"g": True}, (k, size)
    # beside a group with spread, an equal group stays at exactly 0
    rewards = torch.tensor([0.97] * size + [0.2, 0.8])
    adv = algorithms.group_advantages(rewards, ["g"] * size + ["h", "h"], 1e-6, std)
    assert adv[:size].tolist() == [0.0] * size
    assert adv[size] < 0 < adv[size + 1]
    assert algorithms.zero_spread(rewards, ["g"] * size + ["h", "h"]) == {"g": True, "h": False}


def test_clipped_surrogate_by_hand():
    old = torch.zeros(4)
    logp = torch.log(torch.tensor([1.5, 0.5, 1.1, 0.7]))
    adv = torch.tensor([1.0, 1.0, -1.0, -1.0])
    loss, clipped = algorithms.clipped_surrogate(logp, old, adv, clip=0.2)
    # r=1.5,A=+1: min(1.5, 1.2) = 1.2 (clipped); r=0.5,A=+1: min(0.5, 0.8) = 0.5
    # r=1.1,A=-1: min(-1.1, -1.1) = -1.1; r=0.7,A=-1: min(-0.7, -0.8) = -0.8 (clipped)
    assert loss.tolist() == pytest.approx([-1.2, -0.5, 1.1, 0.8], rel=1e-6)
    assert clipped.tolist() == [1.0, 0.0, 0.0, 1.0]


def test_token_mean_counts_only_masked_tokens():
    values = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert algorithms.token_mean(values, mask).item() == pytest.approx(2.0)


def test_token_logprobs_aligned_with_ids():
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = math.log(3.0)  # position 0 predicts token at position 1
    ids = torch.tensor([[0, 2, 1]])
    lp = algorithms.token_logprobs(logits, ids)
    assert lp[0, 0].item() == 0.0
    assert lp[0, 1].item() == pytest.approx(math.log(3 / 6))
    assert lp[0, 2].item() == pytest.approx(math.log(1 / 4))


def test_selected_terms_match_full_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    select = torch.tensor([[0, 1, 1, 0, 1], [1, 0, 0, 1, 1]])
    logp, ent = algorithms.selected_token_terms(logits, ids, select, temperature=0.7)
    full = algorithms.token_logprobs(logits, ids, temperature=0.7)
    sel = select.bool().clone()
    sel[:, 0] = False
    assert logp.tolist() == pytest.approx(full[sel].tolist(), abs=1e-6)
    uniform, ent_u = algorithms.selected_token_terms(torch.zeros(1, 2, 8), torch.zeros(1, 2,
                                                     dtype=torch.long), torch.ones(1, 2))
    assert ent_u.item() == pytest.approx(math.log(8)) and uniform.item() == pytest.approx(
        -math.log(8))
    assert ent.shape == logp.shape


def test_approx_kl_zero_when_equal_and_positive_otherwise():
    mask = torch.ones(3)
    same = torch.tensor([-1.0, -2.0, -0.5])
    assert algorithms.approx_kl(same, same, mask).item() == pytest.approx(0.0)
    assert algorithms.approx_kl(same + 0.1, same, mask).item() > 0


def test_turn_end_rewards_by_hand():
    # one span per dialogue (final credit), two replies (turn credit), no reply at all
    out = algorithms.turn_end_rewards([[1.0], [0.2, 0.3], []], [[[1, 2, 4]], [[0], [1]], []], 5)
    want = torch.tensor([[0, 0, 0, 0, 1.0], [0.2, 0.3, 0, 0, 0], [0, 0, 0, 0, 0]])
    assert torch.equal(out, want)


def test_turn_spans_returns_and_rewards_by_hand():
    assert algorithms.turn_spans([1, 2, 3, 7, 8, 12]) == [[1, 2, 3], [7, 8], [12]]
    assert algorithms.turn_spans([]) == []
    # start 50, after each reply 40, 55, 45: final 45
    assert algorithms.turn_returns(50, [40, 55, 45], 3) == pytest.approx([-0.05, 0.05, -0.10])
    # a fourth reply without a reaction (an error cut the dialogue) gets 0
    assert algorithms.turn_returns(50, [40, 55, 45], 4)[3] == 0.0
    assert algorithms.turn_returns(50, [], 2) == [0.0, 0.0]
    assert algorithms.turn_rewards(50, [40, 55, 45], 3) == pytest.approx([-0.10, 0.15, -0.10])


def test_turn_group_advantages_compare_the_same_turn_within_a_group():
    # group g: two dialogues of two replies; group h: one dialogue (no comparison: 0)
    adv = algorithms.turn_group_advantages([[0.1, 0.2], [0.3, 0.0], [0.5]], ["g", "g", "h"],
                                           eps=0.0)
    assert adv == [pytest.approx([-1.0, 1.0]), pytest.approx([1.0, -1.0]), [0.0]]
    # a turn only one dialogue of its group reached carries no comparison either
    adv = algorithms.turn_group_advantages([[0.1, 0.2], [0.3]], ["g", "g"], eps=0.0)
    assert adv == [pytest.approx([-1.0, 0.0]), pytest.approx([1.0])]


def test_turn_end_rewards_give_gae_the_reward_to_go():
    spans = [[[1], [3, 4], [6]]]
    rewards = algorithms.turn_end_rewards([algorithms.turn_rewards(50, [40, 55, 45], 3)],
                                          spans, 7)
    assert rewards[0].tolist() == pytest.approx([0, -0.10, 0, 0, 0.15, 0, -0.10])
    mask = torch.tensor([[0, 1, 0, 1, 1, 0, 1]])
    _, ret = algorithms.gae(rewards, torch.zeros(1, 7), mask, gamma=1.0, lam=1.0)
    # with gamma = lambda = 1 each reply's return is its turn_returns value
    assert ret[0, [1, 3, 6]].tolist() == pytest.approx([-0.05, 0.05, -0.10])


def test_gae_by_hand_skips_simulator_tokens():
    # tokens: prompt, reply 1 (2 tokens), a simulator token, reply 2 (1 token)
    mask = torch.tensor([[0, 1, 1, 0, 1]])
    values = torch.tensor([[9.0, 0.5, 0.6, 9.0, 0.8]])  # 9.0: never read (off the mask)
    rewards = algorithms.turn_end_rewards([[1.0]], [[[1, 2, 4]]], 5)
    adv, ret = algorithms.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # t=4: delta = 1 - 0.8 = 0.2                          A = 0.2
    # t=2: delta = 0.9*0.8 - 0.6 = 0.12                   A = 0.12 + 0.72*0.2 = 0.264
    # t=1: delta = 0.9*0.6 - 0.5 = 0.04                   A = 0.04 + 0.72*0.264 = 0.23008
    assert adv[0].tolist() == pytest.approx([0, 0.23008, 0.264, 0, 0.2], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0, 0.73008, 0.864, 0, 1.0], abs=1e-6)
    # the paper's gamma = lambda = 1: A_t = R - V_t, return = R on every assistant token
    adv, ret = algorithms.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert adv[0].tolist() == pytest.approx([0, 0.5, 0.4, 0, 0.2], abs=1e-6)
    assert ret[0].tolist() == pytest.approx([0, 1, 1, 0, 1], abs=1e-6)


def test_whiten_over_masked_entries():
    out = algorithms.whiten(torch.tensor([1.0, 2.0, 3.0, 100.0]), torch.tensor([1, 1, 1, 0]))
    s = math.sqrt(2 / 3)
    assert out.tolist() == pytest.approx([-1 / s, 0, 1 / s, 0], rel=1e-5)


def test_clipped_value_loss_by_hand():
    old, ret = torch.full((3,), 0.5), torch.tensor([1.0, 1.0, 1.0])
    loss, clipped = algorithms.clipped_value_loss(torch.tensor([0.9, 0.6, 0.2]), old, ret, 0.2)
    # V=0.9: Vc=0.7, max(0.01, 0.09)/2; V=0.6: Vc=0.6, 0.16/2; V=0.2: Vc=0.3, max(.64, .49)/2
    assert loss.tolist() == pytest.approx([0.045, 0.08, 0.32], rel=1e-5)
    assert clipped.tolist() == [1.0, 0.0, 0.0]


def test_kl_estimators_by_hand():
    logp, ref = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    assert algorithms.kl_penalty(logp, ref, "k1").item() == pytest.approx(math.log(2))
    assert algorithms.kl_penalty(logp, ref, "k3").item() == pytest.approx(0.5 - 1 + math.log(2))
    assert algorithms.kl_penalty(ref, logp, "k1").item() < 0 < algorithms.kl_penalty(
        ref, logp, "k3").item()
    with pytest.raises(RlverInputError, match="algorithm.kl_estimator='k2'.*k1, k3"):
        algorithms.kl_penalty(logp, ref, "k2")


def test_health_metrics_by_hand():
    ret, val = torch.tensor([1.0, 0.0, 1.0, 0.0, 5.0]), torch.tensor([0.9, 0.1, 0.8, 0.2, 0.0])
    mask = torch.tensor([1, 1, 1, 1, 0])
    # R - V = (0.1, -0.1, 0.2, -0.2): var 0.025; var R = 0.25
    assert algorithms.explained_variance(val, ret, mask) == pytest.approx(0.9, rel=1e-5)
    assert math.isnan(algorithms.explained_variance(val, torch.ones(5), mask))
    assert algorithms.grad_norm([torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]) == 5.0
    # 100 steps, 5% warm-up = 5 steps: lr/5, 2lr/5, ... lr, then constant
    lrs = [algorithms.warmup_lr(s, 100, 1.0, 0.05) for s in (0, 1, 4, 50)]
    assert lrs == pytest.approx([0.2, 0.4, 1.0, 1.0])
    assert algorithms.warmup_lr(0, 100, 1e-6, 0.0) == 1e-6
