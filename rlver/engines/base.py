"""The engine interface: token-id prompts in, sampled ids with their log-probs out."""

from __future__ import annotations

import asyncio
import threading
from abc import ABC, abstractmethod
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Optional


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
