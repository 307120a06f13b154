"""Prompts of the LLM simulated user: English and Chinese, vanilla and challenging.

The texts are data (`rlver/data/simulator/prompts.yaml`); this module fills them in.
Step one (`feel_messages`) asks how the persona feels about the policy's latest reply:
free text ending in one machine-readable JSON line `{"reason": ..., "delta": ...}`, or,
`structured`, only that object (the backend constrains decoding to its JSON schema).
Step two (`speak_messages`) asks for the persona's next message in character for its
emotion.

The dialogue goes to the simulator as a transcript inside one user message, not as
alternating chat roles: the simulator model is itself an assistant model, and with the
roles swapped it drifts into answering as the assistant.

Hidden need, by difficulty: the feel step always knows it (it must judge the reply
against it); vanilla may hint at it in speech once the persona trusts the listener; the
challenging persona is told never to reveal it, and its speak prompt does not even
contain it, so a small simulator model cannot leak it by accident.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Optional

from rlver.config_checks import DIFFICULTIES
from rlver.data import load
from rlver.personas.schema import NEEDS, Persona
from rlver.simulator.base import Message, SimRequest
from rlver.simulator.protocol import state

#: The persona ends its message with this to leave the conversation (stripped from the text).
FAREWELL_MARKER = "[END]"
#: Transcript budget in characters: the opening line plus the most recent messages that fit
#: (simulator.transcript_chars's default).
MAX_TRANSCRIPT_CHARS = 6000
#: One message longer than this is cut (a wall-of-text reply still shows as long;
#: simulator.message_chars's default).
MAX_MESSAGE_CHARS = 2000


_PROMPTS: dict[str, Any] = load("simulator/prompts.yaml")
_TEXT: dict[str, dict[str, str]] = _PROMPTS["text"]
_CHARACTER_TYPES: dict[str, dict[str, str]] = _PROMPTS["character_types"]
_STATES: dict[str, dict[str, str]] = _PROMPTS["states"]
_OUTCOMES: dict[str, dict[str, str]] = _PROMPTS["outcomes"]


def prompt_language(persona: Persona, setting: str = "auto") -> str:
    """`en` or `zh`: the configured language, or the persona's own for `auto`."""
    if setting in ("en", "zh"):
        return setting
    return "zh" if persona.language == "zh" else "en"


def feel_messages(
    request: SimRequest, difficulty: str, language: str, structured: bool = False,
    view: tuple[int, int] = (MAX_TRANSCRIPT_CHARS, MAX_MESSAGE_CHARS),
) -> list[dict[str, str]]:
    """Step one: how the persona feels about the last reply. Free text ending in a JSON
    line, or (`structured`) only the JSON object, for a backend that constrains decoding.
    `view`: the transcript's and a message's budget in characters (`transcript`)."""
    text, persona = _TEXT[language], request.persona
    system = "\n\n".join([
        _persona_block(persona, language),
        _need_block(persona, language),
        text[f"feel_{_difficulty(difficulty)}"].format(name=persona.name),
    ])
    context = text["feel_context"].format(
        transcript=transcript(request.history, persona.name, language, *view),
        emotion=request.emotion,
        state_text=_STATES[language][state(request.emotion)],
    )
    ask = text["feel_ask_structured" if structured else "feel_ask"].format(name=persona.name)
    user = context + "\n\n" + ask
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def speak_messages(
    request: SimRequest,
    emotion: int,
    outcome: Optional[str],
    difficulty: str,
    language: str,
    reaction: str = "",
    view: tuple[int, int] = (MAX_TRANSCRIPT_CHARS, MAX_MESSAGE_CHARS),
) -> list[dict[str, str]]:
    """Step two: the persona's next message (a closing line when `outcome` is set).

    `reaction` is step one's reason, so what the persona says follows from what it felt.
    `view`: as for `feel_messages`.
    """
    text, persona = _TEXT[language], request.persona
    blocks = [_persona_block(persona, language)]
    if _difficulty(difficulty) == "vanilla":
        blocks += [_need_block(persona, language) + "\n" + text["speak_vanilla"]]
    else:
        blocks += [text["speak_challenging"]]
    blocks.append(text["speak_style"])
    fields = {
        "transcript": transcript(request.history, persona.name, language, *view),
        "emotion": emotion,
        "state_text": _STATES[language][state(emotion)],
        "name": persona.name,
        "reaction": text["reaction"].format(reaction=reaction) if reaction else "",
        "marker": FAREWELL_MARKER,
    }
    if outcome is None:
        user = text["speak_task"].format(**fields)
    else:
        outcome_text = _OUTCOMES[language].get(outcome, _OUTCOMES[language]["max_turns"])
        user = text["closing_task"].format(outcome_text=outcome_text, **fields)
    return [{"role": "system", "content": "\n\n".join(blocks)}, {"role": "user", "content": user}]


def fallback_utterance(language: str, closing: bool) -> str:
    """A short neutral line for when no usable message came back: it moves the dialogue on
    without pretending to a feeling."""
    return _TEXT[language]["fallback_closing" if closing else "fallback"]


def transcript(
    history: Sequence[Message], name: str, language: str, max_chars: int = MAX_TRANSCRIPT_CHARS,
    message_chars: int = MAX_MESSAGE_CHARS,
) -> str:
    """The dialogue as labelled lines: the opening message plus the latest ones that fit
    `max_chars`, each cut at `message_chars` (long dialogues must still fit the
    simulator's context)."""
    text = _TEXT[language]
    labels = {"user": text["you"].format(name=name), "assistant": text["them"]}
    lines = [f"{labels.get(m.role, m.role)}: {_cut(m.content, text['cut'], message_chars)}"
             for m in history]
    if not lines:
        return ""
    kept: list[str] = []
    used = len(lines[0])
    for line in reversed(lines[1:]):
        if used + len(line) > max_chars and kept:
            kept.append(text["omitted"])
            break
        kept.append(line)
        used += len(line)
    return "\n".join([lines[0], *reversed(kept)])


def _persona_block(persona: Persona, language: str) -> str:
    ctype_text = _CHARACTER_TYPES[language].get(persona.character_type, "")
    separator = "、" if language == "zh" else ", "
    return _TEXT[language]["persona"].format(
        name=persona.name,
        sheet=persona.sheet.strip(),
        ctype=persona.character_type,
        ctype_text=ctype_text,
        traits=separator.join(persona.traits),
        story=_story(persona, language),
    )


def _story(persona: Persona, language: str) -> str:
    topic = persona.topic.strip().rstrip(".。")
    if not topic:
        return persona.backstory.strip()
    return topic + ("。" if language == "zh" else ". ") + persona.backstory.strip()


def _need_block(persona: Persona, language: str) -> str:
    need_short = NEEDS.get(persona.need, "")
    return _TEXT[language]["need"].format(
        need_text=persona.need_text.strip(), name=persona.name, need_short=need_short
    )


def _difficulty(difficulty: str) -> str:
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
    return difficulty


def _cut(content: str, marker: str, limit: int = MAX_MESSAGE_CHARS) -> str:
    content = content.strip()
    return content if len(content) <= limit else content[:limit] + marker
