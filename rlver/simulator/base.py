"""The simulated user's interface: what a backend is asked (`SimRequest`) and answers in
the paper's two steps (`Feeling`, `Utterance`), and the `Simulator` every backend is."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

from rlver.personas.schema import Persona


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
