"""The RL math as small pure functions over tensors, in the papers' names.

Kept apart from DeepSpeed and distributed plumbing so each function can be checked
against hand-computed numbers. Shapes: B sequences x T tokens; `mask` is 1 on the
assistant tokens the policy sampled (the only tokens any loss touches).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def group_advantages(rewards: torch.Tensor, groups: Sequence[str], eps: float) -> torch.Tensor:
    """GRPO: each reward minus its group's mean, divided by the group's std (+eps).

    The population std (divide by n) is used; a group whose rewards are all equal
    (including a group of one) gets advantage 0: it carries no preference signal.
    """
    adv = torch.zeros_like(rewards)
    index: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    for members in index.values():
        r = rewards[members]
        std = r.std(unbiased=False)
        if std > 0:
            adv[members] = (r - r.mean()) / (std + eps)
    return adv


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """log p(input_ids[t] | input_ids[<t]) at every position t (position 0 gets 0).

    Logits at position t-1 predict token t; the result is aligned with `input_ids`, like
    the log-probs stored in rollout rows.
    """
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    picked = logp.gather(-1, input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    return torch.nn.functional.pad(picked, (1, 0))


def selected_token_terms(logits: torch.Tensor, input_ids: torch.Tensor, select: torch.Tensor,
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob, entropy) of the tokens where `select` is true, as flat tensors.

    The same numbers as `token_logprobs`/`token_entropy` at those positions, but the
    vocabulary-sized softmax is formed only for the selected (assistant) tokens, which
    saves most of its memory and time in a multi-turn dialogue.
    """
    select = select.bool().clone()
    select[:, 0] = False  # position 0 has no prediction
    rows, cols = select.nonzero(as_tuple=True)
    logp = torch.log_softmax(logits[rows, cols - 1].float() / temperature, dim=-1)
    picked = logp.gather(-1, input_ids[rows, cols].unsqueeze(-1)).squeeze(-1)
    return picked, -(logp.exp() * logp).sum(-1)


def clipped_surrogate(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                      clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate per token: (loss, clipped) with loss = -min(r A, clip(r) A).

    `clipped` is 1 where the clipped term was the one taken (for the clip fraction).
    """
    ratio = torch.exp(logp - old_logp)
    unclipped = ratio * advantages
    clipped_term = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * advantages
    loss = -torch.minimum(unclipped, clipped_term)
    return loss, (clipped_term < unclipped).float()


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over assistant tokens only (every token weighs the same, whatever its
    sequence's length)."""
    return masked_sum(values, mask) / mask.sum().clamp(min=1)


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(old || new), token mean: E[(r - 1) - log r]."""
    log_ratio = logp - old_logp
    return token_mean(torch.exp(log_ratio) - 1 - log_ratio, mask)
