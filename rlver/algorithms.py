"""The RL math as small pure functions over tensors, in the papers' names.

Kept apart from DeepSpeed and distributed plumbing so each function can be checked
against hand-computed numbers. Shapes: B sequences x T tokens; `mask` is 1 on the
assistant tokens the policy sampled (the only tokens any loss touches). Losses are
returned per token; the trainer sums them and divides by the assistant-token count of
the whole mini-batch (token-mean aggregation).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

# ----------------------------------------------------------------------------- advantages


def group_advantages(rewards: torch.Tensor, groups: Sequence[str], eps: float,
                     std: str = "group") -> torch.Tensor:
    """GRPO: each reward minus its group's mean, scaled by the group normalisation `std`
    (registered in `rlver.registry.GROUP_NORMS`: `group`, `batch`, `none`).

    Population stds (divide by n); a group whose rewards are all equal (including a group
    of one) gets advantage exactly 0: it carries no preference signal. Equality is
    compared exactly, not as std > 0: the float32 std of equal values is often not 0
    (eight rewards of 0.97 would each get -0.1065).
    """
    from rlver.registry import GROUP_NORMS

    return GROUP_NORMS.get(std)(rewards, groups, eps)


def _members(groups: Sequence[str]) -> dict[str, list[int]]:
    """Each group's indices, groups in order of first appearance."""
    index: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        index.setdefault(g, []).append(i)
    return index


def _all_equal(values: torch.Tensor) -> bool:
    """Whether every element equals the first, exactly (true for one or none)."""
    return bool((values == values[:1]).all())


def _centred(rewards: torch.Tensor, groups: Sequence[str], eps: float,
             by_group_std: bool) -> torch.Tensor:
    adv = torch.zeros_like(rewards)
    for members in _members(groups).values():
        r = rewards[members]
        if not _all_equal(r):
            scale = r.std(unbiased=False) + eps if by_group_std else 1.0
            adv[members] = (r - r.mean()) / scale
    return adv


def norm_by_group_std(rewards: torch.Tensor, groups: Sequence[str], eps: float) -> torch.Tensor:
    """The paper's GRPO: centred rewards over their group's own std (+eps), so every group
    with any spread pulls equally hard."""
    return _centred(rewards, groups, eps, by_group_std=True)


def norm_by_batch_std(rewards: torch.Tensor, groups: Sequence[str], eps: float) -> torch.Tensor:
    """Centred rewards over the std of all centred rewards of the update: a group whose
    samples barely differ (near-ties at a low temperature) pulls little and one with a
    real difference pulls hard, with the overall scale unchanged."""
    adv = _centred(rewards, groups, eps, by_group_std=False)
    return adv if _all_equal(adv) else adv / (adv.std(unbiased=False) + eps)


def norm_none(rewards: torch.Tensor, groups: Sequence[str], eps: float) -> torch.Tensor:
    """Centred only (Dr. GRPO)."""
    return _centred(rewards, groups, eps, by_group_std=False)


def zero_spread(rewards: torch.Tensor, groups: Sequence[str]) -> dict[str, bool]:
    """For each group, whether all its rewards are equal, exactly (its advantages are 0)."""
    return {g: _all_equal(rewards[m]) for g, m in _members(groups).items()}


def turn_spans(positions: Sequence[int]) -> list[list[int]]:
    """Split a dialogue's sorted assistant-token positions into its replies: runs of
    consecutive positions (between two replies there is always a user message)."""
    spans: list[list[int]] = []
    for p in positions:
        if spans and p == spans[-1][-1] + 1:
            spans[-1].append(p)
        else:
            spans.append([p])
    return spans


def turn_rewards(emotion_start: int, emotion: Sequence[int], replies: int) -> list[float]:
    """Each reply's own emotion change / 100 (PPO with `credit=turn`: placed on the reply's
    last token, so that GAE's returns are turn_returns). A reply without a recorded
    reaction (a dialogue cut by an error) gets 0."""
    before = [emotion_start, *emotion]
    return [(before[t + 1] - before[t]) / 100.0 if t < len(emotion) else 0.0
            for t in range(replies)]


def turn_returns(emotion_start: int, emotion: Sequence[int], replies: int) -> list[float]:
    """Reward-to-go of each reply: the sum of its own and later turn_rewards, i.e.
    (final emotion - emotion before the reply) / 100.

    The final emotion is the paper's reward, but a reply cannot change what the user felt
    before it: crediting reply t with only the emotion change from t on keeps the earlier
    turns' noise out of its advantage (the same policy-gradient estimate, lower variance).
    For reply 0 this is the reward minus the persona's starting emotion, a constant within
    a group.
    """
    out, to_go = [], 0.0
    for r in reversed(turn_rewards(emotion_start, emotion, replies)):
        to_go += r
        out.append(to_go)
    return out[::-1]


def turn_group_advantages(returns: Sequence[Sequence[float]], groups: Sequence[str],
                          eps: float, std: str = "group") -> list[list[float]]:
    """GRPO with turn credit: reply t of each dialogue is compared with reply t of the
    other dialogues of its group (same persona, same turn), as group_advantages does for
    whole dialogues; a turn only one dialogue of the group reached gets 0."""
    flat = [r for rs in returns for r in rs]
    keys = [f"{g}\x00{t}" for g, rs in zip(groups, returns, strict=True) for t in range(len(rs))]
    adv = group_advantages(torch.tensor(flat, dtype=torch.float32), keys, eps, std).tolist()
    out, at = [], 0
    for rs in returns:
        out.append(adv[at:at + len(rs)])
        at += len(rs)
    return out


def turn_end_rewards(rewards: Sequence[Sequence[float]],
                     spans: Sequence[Sequence[Sequence[int]]], width: int) -> torch.Tensor:
    """Token-level rewards: each reply's reward on its last token, 0 elsewhere (B x width)."""
    out = torch.zeros((len(rewards), width), dtype=torch.float32)
    for i, (rs, ss) in enumerate(zip(rewards, spans, strict=True)):
        for r, span in zip(rs, ss, strict=True):
            out[i, span[-1]] += r
    return out


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the assistant tokens: (advantages, returns).

    The time steps are the assistant tokens only: the simulator's tokens in between are
    the environment's answer, not decisions, so the recursion skips them (the next value
    of a reply's last token is the value of the next reply's first token). Both outputs
    are 0 off the mask.
    """
    mask = mask.bool()
    advantages = torch.zeros_like(values)
    last_gae = torch.zeros(values.shape[0], dtype=values.dtype)
    next_value = torch.zeros(values.shape[0], dtype=values.dtype)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        step = delta + gamma * lam * last_gae
        advantages[:, t] = torch.where(mask[:, t], step, 0.0)
        last_gae = torch.where(mask[:, t], step, last_gae)
        next_value = torch.where(mask[:, t], values[:, t], next_value)
    returns = torch.where(mask, advantages + values, 0.0)
    return advantages, returns


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries (population std); 0 off the mask."""
    mask = mask.bool()
    x = values[mask]
    out = torch.zeros_like(values)
    out[mask] = (x - x.mean()) / (x.std(unbiased=False) + eps)
    return out


# ----------------------------------------------------------------------------- log-probs


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """The sampling distribution at `temperature`, in float32 (the one place it is formed:
    engines, trainer and tests all go through it, so stored and recomputed log-probs agree)."""
    return torch.log_softmax(logits.float() / temperature, dim=-1)


def target_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                    temperature: float = 1.0) -> torch.Tensor:
    """log p(target) under each logits vector (`logits[..., V]`, `targets[...]`)."""
    return _log_probs(logits, temperature).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def target_terms(logits: torch.Tensor, targets: torch.Tensor,
                 temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(target), entropy) under each logits vector, at `temperature`."""
    logp = _log_probs(logits, temperature)
    picked = logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked, -(logp.exp() * logp).sum(-1)


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """log p(input_ids[t] | input_ids[<t]) at every position t (position 0 gets 0).

    Logits at position t-1 predict token t; the result is aligned with `input_ids`, like
    the log-probs stored in rollout rows.
    """
    picked = target_logprobs(logits[:, :-1], input_ids[:, 1:], temperature)
    return torch.nn.functional.pad(picked, (1, 0))


def selected_token_terms(logits: torch.Tensor, input_ids: torch.Tensor, select: torch.Tensor,
                         temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-prob, entropy) of the tokens where `select` is true, as flat tensors.

    The same log-probs as `token_logprobs` at those positions, but the vocabulary-sized
    softmax is formed only for the selected (assistant) tokens, which saves most of its
    memory and time in a multi-turn dialogue.
    """
    select = select.bool().clone()
    select[:, 0] = False  # position 0 has no prediction
    rows, cols = select.nonzero(as_tuple=True)
    return target_terms(logits[rows, cols - 1], input_ids[rows, cols], temperature)


# ----------------------------------------------------------------------------- losses


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


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped value loss per token: (loss, clipped), loss = 0.5 max((V-R)^2, (Vc-R)^2)
    with Vc = V_old + clip(V - V_old, -clip, clip). `clipped` is 1 where Vc's term won."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    unclipped, clipped = (values - returns) ** 2, (v_clipped - returns) ** 2
    return 0.5 * torch.maximum(unclipped, clipped), (clipped > unclipped).float()


def no_rollout_is(policy_logp: torch.Tensor, rollout_logp: torch.Tensor,
                  cap: float) -> None:
    """No correction: every token's loss weighs 1."""
    return None


def truncated_rollout_is(policy_logp: torch.Tensor, rollout_logp: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """Truncated importance sampling (TIS, "Your efficient RL framework secretly brings
    you off-policy RL training"; verl's rollout_is): each token's loss weighted by
    min(p_trainer / p_engine, cap), the sampled token's probability under the trainer's
    weights over the engine's that sampled it; the cap bounds the variance."""
    return torch.clamp(torch.exp(policy_logp - rollout_logp), max=cap)


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimate of KL(policy || reference) from the sampled tokens' log-probs,
    by an estimator registered in `rlver.registry.KL_ESTIMATORS` (`k1`, `k3`)."""
    from rlver.registry import KL_ESTIMATORS

    return KL_ESTIMATORS.get(estimator)(logp, ref_logp)


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log p - log q: unbiased, can be negative (Schulman's estimators)."""
    return -(ref_logp - logp)


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = q/p - 1 - log(q/p): unbiased, never negative, lower variance."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - 1 - log_ratio


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (values * mask).sum()


def token_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over assistant tokens only (every token weighs the same, whatever its
    sequence's length)."""
    return masked_sum(values, mask) / mask.sum().clamp(min=1)


# ----------------------------------------------------------------------------- health metrics


def approx_kl_terms(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(old || new): (r - 1) - log r, r = p_new / p_old."""
    log_ratio = logp - old_logp
    return torch.exp(log_ratio) - 1 - log_ratio


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Token mean of `approx_kl_terms`."""
    return token_mean(approx_kl_terms(logp, old_logp), mask)


def explained_variance(values: torch.Tensor, returns: torch.Tensor,
                       mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens: 1 = perfect critic, 0 = no better
    than a constant, negative = worse; nan when the returns do not vary."""
    mask = mask.bool()
    var_r = returns[mask].var(unbiased=False)
    if var_r == 0:
        return math.nan
    return (1 - (returns[mask] - values[mask]).var(unbiased=False) / var_r).item()


def grad_norm(grads: Iterable[torch.Tensor]) -> float:
    """Global L2 norm of a set of gradients (what gradient clipping compares to its max)."""
    norms = [g.detach().float().norm() for g in grads]
    return torch.stack(norms).norm().item() if norms else 0.0


def warmup_lr(step: int, total_steps: int, lr: float, warmup_ratio: float) -> float:
    """Linear warm-up over the first ceil(ratio * total) optimizer steps, then constant."""
    warmup = math.ceil(warmup_ratio * total_steps)
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr
