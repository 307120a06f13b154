"""Where a reply's sentences end, token by token: the stop rule of
`rollout.max_sentences` / `evaluation.max_sentences`.

A small model writes paragraphs of 40-80 tokens and rarely ends a reply by itself within
a cap a CPU run can afford (docs/notes/2026-12-07-reply-lengths.md); ending it at the end
of a sentence keeps what the user reads whole. The rule is a stopping time: whether the
reply ends after a token depends on the tokens sampled so far only, so the recorded ids
and log-probs stay exactly those of the sampled distribution (the trainer's).

A sentence ends with a token that adds `.`, `!`, `?` or `…` (closing quotes and brackets
may follow within the token) after some letter, except a full stop right after a digit
(`1.` opening a numbered list, `3.5`). An abbreviation (`Dr.`) counts as an end: rare in
replies to someone in distress, and a stop there is still a stopping time.
"""

from __future__ import annotations

import re
from typing import Any

_END = re.compile(r"(?<![\d.!?…])[.!?…]+[\"'”’)\]]*$")
_PUNCT = frozenset(".!?…")


class SentenceEnds:
    """Counts sentence ends in token-id sequences of one tokenizer (pieces are cached)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self._pieces: dict[int, str] = {}

    def piece(self, token_id: int) -> str:
        text = self._pieces.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=True)
            self._pieces[token_id] = text
        return text

    def step(self, state: tuple[str, bool], token_id: int) -> tuple[tuple[str, bool], bool]:
        """One more token: the new state (the text's tail, whether a letter came yet)
        and whether this token ends a sentence."""
        tail, lettered = state
        piece = self.piece(token_id)
        text = (tail + piece)[-16:]
        lettered = lettered or any(ch.isalpha() for ch in piece)
        ends = (lettered and any(ch in _PUNCT for ch in piece)
                and _END.search(text.rstrip()) is not None)
        return (text, lettered), ends

    def lengths(self, ids: list[int] | tuple[int, ...]) -> list[int]:
        """The reply lengths (in tokens) at which its sentences end, in order."""
        state, out = ("", False), []
        for k, t in enumerate(ids):
            state, ends = self.step(state, t)
            if ends:
                out.append(k + 1)
        return out

    def cut(self, ids: list[int] | tuple[int, ...], max_sentences: int) -> int | None:
        """The length at which the `max_sentences`-th sentence ends; None if it does not
        end within `ids`."""
        ends = self.lengths(ids)
        return ends[max_sentences - 1] if len(ends) >= max_sentences else None
