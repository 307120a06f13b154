"""Incremental chat contexts in token ids.

The context of a dialogue grows by appending: the sampled assistant ids exactly as
generated, then the tokens of the template text that follows them (the end of the
assistant turn, the next user turn, the next generation prompt). Assistant text is never
re-tokenised, so the trainer sees exactly the ids the policy sampled. The appended text
is the difference between two renderings of the chat template, which works for any
template where adding a message only appends text (ChatML, Llama, Qwen ...).

Think-then-say (`split_think`, `ChatTokens.after_reply`): the thinking is cut from the
reply, and the next context carries only the visible reply, as template text.
"""

from __future__ import annotations

import re
from typing import Any

_SENTINEL = "\u2063RLVER\u2063"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_WELL_FORMED = re.compile(r"\s*<think>(.+?)</think>(.*)", re.DOTALL)
_THINKING = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL)


def split_think(text: str) -> tuple[str, bool]:
    """(the visible reply, well formed?) of a think-then-say completion.

    Well formed: the text opens with `<think>`, has one non-empty thinking block closed
    by `</think>`, and a non-empty reply after it. Otherwise everything that looks like
    thinking (an unclosed block runs to the end) is still hidden from the simulator.
    """
    found = _WELL_FORMED.fullmatch(text)
    if found:
        thought, reply = found.group(1), found.group(2)
        tags = THINK_OPEN in thought + reply or THINK_CLOSE in reply
        if thought.strip() and reply.strip() and not tags:
            return reply.strip(), True
    visible = _THINKING.sub("", text).replace(THINK_CLOSE, "").replace(THINK_OPEN, "")
    return visible.strip(), False


class ChatTokens:
    """Renders and tokenises the pieces of a chat context for one tokenizer."""

    def __init__(self, tokenizer: Any, system_prompt: str) -> None:
        self.tokenizer = tokenizer
        self.system = [{"role": "system", "content": system_prompt}] if system_prompt else []
        probe = self._render([{"role": "user", "content": "u"},
                              {"role": "assistant", "content": _SENTINEL}], gen=False)
        #: Template text that closes an assistant turn, e.g. "<|im_end|>\n".
        self.assistant_close = probe[probe.rindex(_SENTINEL) + len(_SENTINEL) :]

    def _render(self, messages: list[dict[str, str]], gen: bool) -> str:
        return self.tokenizer.apply_chat_template(
            self.system + messages, tokenize=False, add_generation_prompt=gen
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def start(self, first_user: str) -> list[int]:
        """Ids of system prompt + the persona's opening message + generation prompt."""
        return self.encode(self._render([{"role": "user", "content": first_user}], gen=True))

    def continuation(
        self, history: list[dict[str, str]], user: str, sampled_tail: str
    ) -> list[int]:
        """Ids to append after an assistant turn: the rest of its closing text, the new
        user message and the next generation prompt.

        `history` ends with that assistant turn; `sampled_tail` is the text of the stop
        token the policy sampled (empty if the reply was cut at the token budget).
        """
        before = self._render(history, gen=False)
        after = self._render([*history, {"role": "user", "content": user}], gen=True)
        if not after.startswith(before):
            raise ValueError("chat template does not render by appending; cannot extend ids")
        close = self.assistant_close
        if sampled_tail and close.startswith(sampled_tail):
            close = close[len(sampled_tail) :]
        return self.encode(close + after[len(before) :])

    def after_reply(self, history: list[dict[str, str]], user: str) -> list[int]:
        """Ids to append to the context that produced the last reply of `history` (which
        ended with the generation prompt) when that reply is kept as visible text only:
        the reply, its closing text, the new user message and the next generation prompt.
        The sampled ids are not reused: they held the thinking (think-then-say)."""
        before = self._render(history[:-1], gen=True)
        after = self._render([*history, {"role": "user", "content": user}], gen=True)
        if not after.startswith(before):
            raise ValueError("chat template does not render by appending; cannot extend ids")
        return self.encode(after[len(before) :])
