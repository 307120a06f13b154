"""Generation engines: turn token-id prompts into sampled token ids with log-probs.

The rollout stage only needs `generate(prompts) -> [Sampled]`; the engine is chosen by
`rollout.engine`. The `hf` engine is transformers `generate`, batched with left padding.
Log-probs are computed from the raw logits divided by the temperature (the distribution
the trainer recomputes), so the stored values match a later forward pass of the same
policy; with top_p < 1 they are the log-probs before nucleus truncation.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Sampled:
    """One completion: exactly the ids the policy sampled, with their log-probs."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    #: True when the completion ended with the end-of-turn token (included in token_ids).
    finished: bool


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False


class Engine(ABC):
    """A policy that continues token-id prompts."""

    tokenizer: Any

    @abstractmethod
    def generate(
        self, prompts: list[list[int]], settings: SamplingSettings, seed: int
    ) -> list[Sampled]:
        """Continue every prompt; the same prompts, settings and seed give the same ids."""


class HFEngine(Engine):
    """transformers `generate` on one device, batched with left padding."""

    def __init__(self, model: Any, tokenizer: Any, stop_token_ids: list[int]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.stop_token_ids = set(stop_token_ids)
        self.pad_id = tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = stop_token_ids[0]

    def generate(
        self, prompts: list[list[int]], settings: SamplingSettings, seed: int
    ) -> list[Sampled]:
        import torch

        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):
            input_ids[i, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention[i, width - len(p) :] = 1
        torch.manual_seed(seed)
        sampling: dict[str, Any] = (
            {"do_sample": False}
            if settings.greedy
            else {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p,
                  "top_k": 0}
        )
        with torch.no_grad():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=settings.max_new_tokens,
                eos_token_id=sorted(self.stop_token_ids),
                pad_token_id=self.pad_id,
                output_logits=True,
                return_dict_in_generate=True,
                **sampling,
            )
        new = out.sequences[:, width:]
        temperature = 1.0 if settings.greedy else settings.temperature
        logits = torch.stack(out.logits, dim=1).float() / temperature
        logp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
        results = []
        for row_ids, row_logp in zip(new.tolist(), logp.tolist(), strict=True):
            end = next((k for k, t in enumerate(row_ids) if t in self.stop_token_ids), None)
            n = len(row_ids) if end is None else end + 1
            results.append(
                Sampled(tuple(row_ids[:n]), tuple(row_logp[:n]), finished=end is not None)
            )
        return results


def make_engine(name: str, policy_dir: str, dtype: str) -> Engine:
    """The engine named by `rollout.engine`, loaded with the policy at `policy_dir`."""
    from rlver.models import load_policy

    if name != "hf":
        raise ValueError(f"unknown engine {name!r}")
    model, tokenizer = load_policy(policy_dir, dtype)
    return HFEngine(model, tokenizer, stop_token_ids=stop_tokens(tokenizer, model))


def stop_tokens(tokenizer: Any, model: Any) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)
