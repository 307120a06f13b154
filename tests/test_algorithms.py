"""The RL math against hand-computed numbers."""

from __future__ import annotations

import math

import pytest
import torch

from rlver import algorithms


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
