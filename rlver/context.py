"""The context budget: the longest dialogue a config allows, in the policy's tokens,
against the policy engine's context (`rollout.max_model_len`), checked when the config
is composed, so that no dialogue of the run ends by a full context.

Before its last reply, a dialogue's context holds the system prompt, the opening line
and, per earlier turn, a reply and the user's answer, each in the chat template's text;
the last reply is generated into the rest. Each part is bounded:

- a reply: `max_new_tokens` (think mode: the current turn's thinking and reply; earlier
  turns keep only their visible reply, which is shorter);
- a user message, the opening line included: `simulator.max_user_tokens`, which the
  dialogue loop enforces (`rlver.dialogue`: a longer one is cut);
- the system prompt: measured with the policy's tokenizer when its `tokenizer.json` is on
  this machine (`model.source`, or the prepared `resources/models/<name>/`), else its
  UTF-8 bytes (a byte-level tokenizer never needs more tokens than bytes);
- the template: `TEMPLATE_START` tokens before the first message and `TEMPLATE_TURN` per
  turn (a message's wrappers and the generation prompt: ChatML, Qwen's and Llama 3's
  templates use 5 per message and 3 for the prompt, so 13 a turn).

So the worst case of T turns is system + TEMPLATE_START + T x (reply + user +
TEMPLATE_TURN), for training (`simulator.max_turns`, `rollout.max_new_tokens`) and the
benchmark (`evaluation.max_turns`, `evaluation.max_new_tokens`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from rlver import layout
from rlver.errors import RlverInputError

#: Template tokens before the first message (a BOS token, a date header).
TEMPLATE_START = 32
#: Template tokens per turn: the reply's end, the user message's wrappers and the next
#: generation prompt.
TEMPLATE_TURN = 24


@dataclass(frozen=True)
class Dialogue:
    """The caps of one kind of dialogue (training or evaluation)."""

    name: str
    turns: int
    turns_key: str
    reply: int
    reply_key: str


def worst_case(system: int, turns: int, reply: int, user: int) -> int:
    """Tokens of the longest dialogue: the system prompt (`system` tokens), the template,
    and `turns` turns of a reply and a user message (the opening line the first)."""
    return system + TEMPLATE_START + turns * (reply + user + TEMPLATE_TURN)


def model_dir(cfg: Any) -> Optional[Path]:
    """The policy's model directory on this machine, if there is one."""
    from rlver.models import PACKAGE_PREFIX

    source = str(cfg.model.source)
    candidates = [layout.model_dir(str(cfg.model.name))]
    if not source.startswith(PACKAGE_PREFIX):
        candidates.insert(0, Path(source))
    return next((p for p in candidates if (p / "config.json").is_file()), None)


@lru_cache(maxsize=8)
def _count_tokens(tokenizer_json: str, text: str) -> int:
    from tokenizers import Tokenizer

    return len(Tokenizer.from_file(tokenizer_json).encode(text, add_special_tokens=False).ids)


def system_tokens(cfg: Any) -> tuple[int, str]:
    """(tokens of the system prompt, how they were counted)."""
    text = str(cfg.template.system_prompt)
    model = model_dir(cfg)
    if model is not None and (model / "tokenizer.json").is_file():
        try:
            return (_count_tokens(str(model / "tokenizer.json"), text),
                    f"measured with {model}")
        except Exception:  # noqa: BLE001 - a tokenizer file tokenizers cannot read
            pass
    return len(text.encode()), "its UTF-8 bytes, no tokenizer on this machine"


def max_position_embeddings(cfg: Any) -> Optional[tuple[int, Path]]:
    """The model's own longest context and its config file, where it is on this machine."""
    model = model_dir(cfg)
    if model is None:
        return None
    value = json.loads((model / "config.json").read_text()).get("max_position_embeddings")
    return (int(value), model / "config.json") if isinstance(value, int) else None


def check(cfg: Any) -> None:
    """Refuse a config whose longest training or benchmark dialogue does not fit
    `rollout.max_model_len`, or whose context exceeds the model's own; the message has
    the numbers."""
    limit = int(cfg.rollout.max_model_len)
    user = int(cfg.simulator.max_user_tokens)
    system, how = system_tokens(cfg)
    problems: list[tuple[int, str]] = []
    for d in (Dialogue("training", cfg.simulator.max_turns, "simulator.max_turns",
                       cfg.rollout.max_new_tokens, "rollout.max_new_tokens"),
              Dialogue("the benchmark", cfg.evaluation.max_turns, "evaluation.max_turns",
                       cfg.evaluation.max_new_tokens, "evaluation.max_new_tokens")):
        need = worst_case(system, d.turns, d.reply, user)
        if need > limit:
            problems.append((need, (
                f"the longest dialogue of {d.name} needs {need} tokens: system prompt "
                f"{system} ({how}) + template {TEMPLATE_START} + {d.turns_key}={d.turns} "
                f"x ({d.reply_key}={d.reply} + simulator.max_user_tokens={user} + "
                f"template {TEMPLATE_TURN})")))
    if problems:
        raise RlverInputError(
            f"config: rollout.max_model_len={limit} is too short: "
            f"{'; '.join(text for _, text in problems)}. Fix: set rollout.max_model_len to "
            f"at least {max(need for need, _ in problems)}, or lower those turns or token "
            "caps (docs/rollout.md, \"Context length\").")
    own = max_position_embeddings(cfg)
    if own is not None and limit > own[0]:
        raise RlverInputError(
            f"config: rollout.max_model_len={limit} exceeds the model's context "
            f"(max_position_embeddings={own[0]} in {own[1]}). Fix: lower "
            "rollout.max_model_len, or the turns and token caps that need it.")
