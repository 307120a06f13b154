"""The engine interface: token-id prompts in, sampled ids with their log-probs out."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

#: The engines' context when none is given (rollout.max_model_len's default).
DEFAULT_MAX_MODEL_LEN = 4096


@dataclass(frozen=True)
class Sampled:
    """One completion: exactly the ids the policy sampled, with their log-probs."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]
    #: True when the completion ended with the end-of-turn token (included in token_ids).
    finished: bool
    #: True when it ended at the end of its `max_sentences`-th sentence (no end-of-turn
    #: token): neither finished nor cut at max_new_tokens.
    stopped: bool = False

    @property
    def cut(self) -> bool:
        """Cut at max_new_tokens: it neither finished nor stopped at a sentence end."""
        return not (self.finished or self.stopped)


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    greedy: bool = False
    #: End a reply at the end of this many sentences (rlver.engines.sentences); None: at
    #: the end-of-turn token or max_new_tokens only.
    max_sentences: Optional[int] = None


class ContextFull(ValueError):
    """The prompt plus the reply budget does not fit the engine's context."""


class Engine(ABC):
    """A policy that continues token-id prompts."""

    tokenizer: Any
    #: Longest prompt + reply the engine accepts, in tokens.
    max_context: int
    #: True when `agenerate` serves overlapping requests (continuous batching).
    concurrent: bool = False
    #: Prompt tokens sent so far, and how many of them the engine reused from its prefix
    #: cache instead of computing (a multi-turn context resends its whole history).
    prompt_tokens: int = 0
    cached_prompt_tokens: int = 0

    @abstractmethod
    def generate(
        self, prompts: list[list[int]], settings: SamplingSettings, seeds: Sequence[int]
    ) -> list[Sampled]:
        """Continue every prompt together, one seed per prompt; the same prompts, settings
        and seeds give the same ids and log-probs."""

    async def agenerate(self, prompt: list[int], settings: SamplingSettings, seed: int, *,
                        session: Optional[Hashable] = None) -> Sampled:
        """Continue one prompt while other requests may be in flight. This default runs
        `generate` on the one prompt in a worker thread, one request at a time (correct,
        but serial: engines that batch overlapping requests override it and set
        `concurrent`).

        `session`: a key shared by the turns of one dialogue; an engine that can keep a
        dialogue's context between its turns (vLLM) does, the others ignore it. The
        caller ends it with `end_session` when the dialogue is over."""
        if not hasattr(self, "_serial"):
            self._serial = threading.Lock()

        def one() -> Sampled:
            with self._serial:
                return self.generate([prompt], settings, [seed])[0]

        return await asyncio.to_thread(one)

    def end_session(self, session: Hashable) -> None:  # noqa: B027 - optional
        """The dialogue of `session` is over: release what the engine kept for it."""

    def load_weights(self, weights: Iterable[tuple[str, Any]]) -> None:
        """Make the engine's policy the one given by `weights`, (name, tensor) pairs in the
        HF model's naming (`named_parameters()` or a state dict; a tied alias such as
        SmolLM2's `lm_head.weight`, which shares its tensor with `embed_tokens`, may be
        among them), without an export to disk: the resident blocks hand each new policy
        to their running engine this way. Every parameter of the model must be given."""
        raise NotImplementedError(f"{type(self).__name__} cannot load weights in memory")

    def load_adapter(self, adapter_dir: str) -> None:
        """Make the engine's policy the LoRA adapter at `adapter_dir` (a policy folder of
        rlver.lora) on the engine's base model, in place of the adapter it ran before (or
        of none, the base itself): the resident blocks of a LoRA run hand each new policy
        to their running engine this way."""
        raise NotImplementedError(f"{type(self).__name__} cannot load LoRA adapters")

    def reset_prefix_cache(self) -> None:  # noqa: B027 - optional: only vLLM caches prefixes
        """Forget cached prompt prefixes, as a freshly started engine has none."""

    def close(self) -> None:  # noqa: B027 - optional: only some engines hold workers
        """Release workers and memory; the engine is unusable afterwards."""

    def check_fits(self, prompt: list[int], settings: SamplingSettings) -> None:
        if len(prompt) + settings.max_new_tokens > self.max_context:
            raise ContextFull(
                f"prompt of {len(prompt)} tokens + {settings.max_new_tokens} new tokens "
                f"exceeds the engine's context of {self.max_context}"
            )

def stop_tokens(tokenizer: Any, generation_config: Any) -> list[int]:
    """End-of-turn ids: the tokenizer's eos plus the generation config's."""
    ids = {tokenizer.eos_token_id}
    gen_eos = getattr(generation_config, "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(gen_eos)
    return sorted(i for i in ids if i is not None)


def checked_weights(weights: Iterable[tuple[str, Any]], expected: Iterable[str],
                    aliases: Iterable[str], engine: str) -> dict[str, Any]:
    """`weights` as {name: tensor} without tied duplicates, refused (ValueError) if they
    leave a parameter of the engine's model out or name one it does not have.

    `expected`: the model's parameter names; `aliases`: tied names it accepts besides
    (a state dict lists `lm_head.weight` beside the `embed_tokens.weight` it shares)."""
    seen: set[tuple[int, tuple[int, ...]]] = set()
    out: dict[str, Any] = {}
    for name, tensor in weights:
        # The view's own address, not its storage's: the parameters of a flat buffer
        # (DeepSpeed) share one storage and are still distinct.
        key = (tensor.data_ptr(), tuple(tensor.shape))
        if key not in seen:
            seen.add(key)
            out[name] = tensor
    expected = set(expected)
    missing = sorted(expected - set(out))
    unknown = sorted(set(out) - expected - set(aliases))
    if missing or unknown:
        raise ValueError(
            f"{engine}.load_weights: the weights must name exactly the policy's parameters "
            f"(HF names, as named_parameters() gives them); missing {missing[:5]} "
            f"({len(missing)} in all), unknown {unknown[:5]} ({len(unknown)} in all)")
    return out
