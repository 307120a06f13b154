"""Simulated users: one protocol (`protocol.py`), several backends behind one interface.

A backend answers in the paper's two steps, batched over all live dialogues:
`feel` says how the persona feels about the latest assistant reply (a proposed integer
change and its reason); the protocol applies it; `speak` writes the persona's next
message in character for the new emotion (or its farewell when the dialogue ends).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

from rlver.personas import Persona


@dataclass(frozen=True)
class Message:
    role: str  # "user" (the simulated persona) or "assistant" (the policy)
    content: str


@dataclass(frozen=True)
class SimRequest:
    """One live dialogue at the moment the policy has replied."""

    persona: Persona
    #: The dialogue so far as the simulator sees it; the last message is the policy's reply.
    history: tuple[Message, ...]
    #: Emotion before this reply.
    emotion: int
    #: 1-based number of the assistant reply being judged.
    turn: int
    #: Seed for any sampling the backend does (derived from run, iteration, dialogue).
    seed: int


@dataclass(frozen=True)
class Feeling:
    """Step one: the proposed change and why.

    `parse_error`: the backend could not get a usable answer (after its retries) and fell
    back; `delta` is then 0 and `reason` says what failed. `fatal`: the dialogue must end
    with outcome `error` (simulator.on_parse_error=error).
    """

    delta: int
    reason: str
    parse_error: bool = False
    fatal: bool = False


@dataclass(frozen=True)
class Utterance:
    """Step two: what the persona says next."""

    text: str
    farewell: bool = False


class Simulator(ABC):
    """A simulated-user backend. Both calls take all live dialogues at once."""

    @abstractmethod
    def feel(self, requests: Sequence[SimRequest]) -> list[Feeling]:
        """Proposed emotion change and reason for each request's latest reply."""

    @abstractmethod
    def speak(
        self,
        requests: Sequence[SimRequest],
        emotions: Sequence[int],
        outcomes: Sequence[Optional[str]],
    ) -> list[Utterance]:
        """The persona's next message given its new emotion; a closing line if the
        protocol ended the dialogue (outcome not None)."""


def make_simulator(cfg: Any, run: Any = None) -> Simulator:
    """The backend named by `simulator.backend`, built from the `simulator` config group;
    `run` (a rlver.layout.Run): the run whose served simulator `served` talks to."""
    if cfg.backend == "heuristic":
        from rlver.simulator.heuristic import HeuristicSimulator

        return HeuristicSimulator(difficulty=cfg.difficulty)
    # LLM backends import lazily: vllm is optional and slow to import.
    if cfg.backend == "llm_http":
        from rlver.completions import OpenAIHTTPBackend
        from rlver.simulator.llm import LLMSimulator

        return LLMSimulator(cfg, OpenAIHTTPBackend.from_config(cfg))
    if cfg.backend == "llm_vllm":
        from rlver.completions import VLLMEngineBackend
        from rlver.simulator.llm import LLMSimulator

        return LLMSimulator(cfg, VLLMEngineBackend.from_config(cfg))
    if cfg.backend == "served":
        from rlver.served.client import ServedBackend
        from rlver.simulator.llm import LLMSimulator

        if run is None:
            raise ValueError("the served simulator needs the run it belongs to")
        return LLMSimulator(cfg, ServedBackend(cfg, run))
    raise ValueError(f"unknown simulator backend {cfg.backend!r}")
