"""The modules DeepSpeed trains: the policy, returning logits where the loss needs them,
and the PPO critic's value model. Below the engines, the critic and the LoRA adapters,
which all build on them."""

from __future__ import annotations

from typing import Any

import torch


class PolicyLM(torch.nn.Module):
    """The causal LM, returning logits only at the positions asked for.

    The full (B, T, vocab) logits of a multi-turn dialogue dominate the memory of a
    step; the loss needs them only before assistant tokens.
    """

    def __init__(self, lm: Any) -> None:
        super().__init__()
        self.lm = lm

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                    use_cache=False).last_hidden_state
        return self.lm.get_output_embeddings()(hidden[rows, cols])


class ValueModel(torch.nn.Module):
    """Transformer backbone + Linear(hidden, 1)."""

    def __init__(self, backbone: Any) -> None:
        super().__init__()
        self.backbone = backbone
        self.value_head = torch.nn.Linear(backbone.config.hidden_size, 1)
        # A zero head starts from V = 0 everywhere: the first advantages are the returns,
        # and no random values are injected into the first policy update.
        torch.nn.init.zeros_(self.value_head.weight)
        torch.nn.init.zeros_(self.value_head.bias)

    @property
    def config(self) -> Any:
        return self.backbone.config

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) values; position t holds V of the context before token t (0 at t=0)."""
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               use_cache=False).last_hidden_state
        values = self.value_head(hidden).squeeze(-1).float()
        return torch.nn.functional.pad(values[:, :-1], (1, 0))
