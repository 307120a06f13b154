"""What a training step keeps in memory: gradient checkpointing (algorithm.gradient_checkpointing)
recomputes each layer's activations instead of keeping them, with the same gradients."""

from __future__ import annotations

import torch

from bench.models import kept_activation_bytes
from rlver.train.engines import PolicyLM, recompute_activations


def _policy() -> PolicyLM:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=256, hidden_size=64, intermediate_size=224, num_hidden_layers=4,
                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    return PolicyLM(Qwen2ForCausalLM(cfg))


def _step(policy: PolicyLM) -> tuple[dict[str, torch.Tensor], int]:
    """The gradients of a token-mean loss over a 96-token row, and the bytes of the
    activations autograd kept for the backward pass."""
    policy.train()
    ids = torch.randint(0, 256, (1, 96), generator=torch.Generator().manual_seed(1))
    rows, cols = torch.zeros(95, dtype=torch.long), torch.arange(95)
    loss: list[torch.Tensor] = []

    def forward() -> None:
        logits = policy(ids, torch.ones_like(ids), rows, cols)
        loss.append(torch.nn.functional.cross_entropy(logits, ids[0, 1:]))

    kept = kept_activation_bytes(policy, forward)
    loss[0].backward()
    return {n: p.grad.clone() for n, p in policy.named_parameters()}, kept


def test_recomputed_activations_give_the_same_gradients_from_a_fraction_of_the_memory():
    plain, plain_bytes = _step(_policy())
    policy = _policy()
    recompute_activations(policy)
    assert policy.lm.model.gradient_checkpointing
    recomputed, recomputed_bytes = _step(policy)
    assert recomputed.keys() == plain.keys()
    assert all(torch.equal(recomputed[n], plain[n]) for n in plain)
    # 4 layers: each keeps its input only (the logits' share is the same in both)
    assert recomputed_bytes < plain_bytes / 3, (recomputed_bytes, plain_bytes)
