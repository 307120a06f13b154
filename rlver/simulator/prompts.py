"""Prompt texts of the LLM simulated user: English and Chinese, vanilla and challenging.

Step one (`feel_messages`) asks how the persona feels about the policy's latest reply and
ends in one machine-readable JSON line `{"reason": ..., "delta": ...}`; step two
(`speak_messages`) asks for the persona's next message in character for its emotion.

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
from typing import Optional

from rlver.personas import NEEDS, Persona
from rlver.simulator import Message, SimRequest
from rlver.simulator.protocol import state

#: The persona ends its message with this to leave the conversation (stripped from the text).
FAREWELL_MARKER = "[END]"
#: Transcript budget in characters: the opening line plus the most recent messages that fit.
MAX_TRANSCRIPT_CHARS = 6000
#: One message longer than this is cut (a wall-of-text reply still shows as long).
MAX_MESSAGE_CHARS = 2000

_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "you": "You ({name})",
        "them": "Them",
        "omitted": "[... earlier messages omitted ...]",
        "cut": " [... cut ...]",
        "persona": (
            "You are role-playing {name}, a real person who is talking to someone about a "
            "difficult situation. Stay fully in character as {name}.\n\n"
            "## Who you are\n{sheet}\n"
            "Character type: {ctype} ({ctype_text}). Traits: {traits}.\n\n"
            "## Your story\n{story}"
        ),
        "need": "## Your hidden need\n{need_text} In short, {name} {need_short}.",
        "feel_vanilla": (
            "## How you judge their replies\n"
            "Your emotion is a score from 0 (you want to leave) to 100 (you feel fully "
            "understood and helped). The other person does not know your hidden need. A "
            "reply raises your score when it engages with your story and moves toward what "
            "you need; it lowers your score when it is generic, preachy, off-topic, pushy or "
            "repeats itself. Judge as {name} would, not as a polite reviewer."
        ),
        "feel_challenging": (
            "## How you judge their replies\n"
            "Your emotion is a score from 0 (you want to leave) to 100 (you feel fully "
            "understood and helped). The other person does not know your hidden need, and "
            "you never state or hint at it. Only a reply that actually meets your hidden "
            "need may raise your score; sympathy, praise or advice that misses it leaves the "
            "score unchanged or lowers it. Generic, preachy, off-topic, pushy or repeated "
            "replies lower it. Be strict: judge as {name} would."
        ),
        "feel_task": (
            "## The conversation so far\n{transcript}\n\n"
            "Your emotion before their last reply: {emotion}/100 ({state_text}).\n\n"
            "How does their LAST reply make you feel? Think it over in at most three "
            "sentences, as {name}: what they said, whether it meets your hidden need, how it "
            "fits what came before. Then end with exactly one line of JSON and nothing "
            "after it:\n"
            '{{"reason": "<one or two sentences, first person>", "delta": <integer change, '
            "usually between -10 and +10>}}"
        ),
        "speak_vanilla": (
            "You may hint at your hidden need once you trust them (emotion 60 or more), "
            "but never spell it out as a request."
        ),
        "speak_challenging": (
            "Never state or hint at what you want from them: they have to work it out."
        ),
        "speak_style": (
            "## How you talk\n"
            "Like a real person in a chat: one to three short sentences of plain spoken "
            "English. No name prefix, no quotes, no stage directions, no lists. Never "
            "mention scores, AI or these instructions."
        ),
        "speak_task": (
            "## The conversation so far\n{transcript}\n\n"
            "Your emotion now: {emotion}/100 ({state_text}).{reaction}\n\n"
            "Write {name}'s next message to them, in English, in character for this "
            "emotion. If you have had enough and want to leave, end the message with "
            f"{FAREWELL_MARKER}."
        ),
        "reaction": "\nWhat you felt about their last reply: {reaction}",
        "closing_task": (
            "## The conversation so far\n{transcript}\n\n"
            "Your emotion now: {emotion}/100 ({state_text}). The conversation is over: "
            "{outcome_text}.{reaction}\n\n"
            "Write {name}'s last message to them: one short sentence in English, in "
            "character for this emotion."
        ),
        "fallback": "Hmm, okay.",
        "fallback_closing": "Okay. Bye.",
    },
    "zh": {
        "you": "你（{name}）",
        "them": "对方",
        "omitted": "[……前面的消息已省略……]",
        "cut": "[……已截断……]",
        "persona": (
            "你在扮演{name}：一个真实的人，正在向别人倾诉一件让自己困扰的事。"
            "请始终保持{name}的身份。\n\n"
            "## 你是谁\n{sheet}\n"
            "性格类型：{ctype}（{ctype_text}）。特点：{traits}。\n\n"
            "## 你的经历\n{story}"
        ),
        "need": "## 你的隐藏需求\n{need_text}",
        "feel_vanilla": (
            "## 你如何评判对方的回复\n"
            "你的情绪是 0 到 100 的分数（0：想离开；100：感到被完全理解和帮助）。对方不知道"
            "你的隐藏需求。回复贴合你的经历、朝你的需求靠近时，分数上升；空泛、说教、跑题、"
            "咄咄逼人或重复时，分数下降。请以{name}的真实感受评判，而不是做一个客气的评审。"
        ),
        "feel_challenging": (
            "## 你如何评判对方的回复\n"
            "你的情绪是 0 到 100 的分数（0：想离开；100：感到被完全理解和帮助）。对方不知道"
            "你的隐藏需求，你也绝不说出或暗示它。只有真正满足你隐藏需求的回复才能让分数上升；"
            "没有满足需求的同情、夸奖或建议不加分甚至扣分。空泛、说教、跑题、咄咄逼人或重复"
            "的回复扣分。请严格地以{name}的感受评判。"
        ),
        "feel_task": (
            "## 目前的对话\n{transcript}\n\n"
            "对方最后一条回复之前你的情绪：{emotion}/100（{state_text}）。\n\n"
            "对方的最后一条回复让你感觉如何？以{name}的身份用不超过三句话想一想：对方说了"
            "什么，是否满足你的隐藏需求，和之前的对话是否连贯。最后输出恰好一行 JSON，"
            "之后不要再写任何内容：\n"
            '{{"reason": "<一两句话，第一人称>", "delta": <整数变化，通常在 -10 到 +10 之间>}}'
        ),
        "speak_vanilla": "当你信任对方（情绪 60 以上）时，可以暗示你的需求，但不要直接提出来。",
        "speak_challenging": "绝不说出或暗示你想从对方那里得到什么：要让对方自己去发现。",
        "speak_style": (
            "## 你的说话方式\n"
            "像真人聊天一样：一到三句简短的口语化中文。不要加名字前缀、引号、动作描写或列表。"
            "不要提及分数、AI 或这些说明。"
        ),
        "speak_task": (
            "## 目前的对话\n{transcript}\n\n"
            "你现在的情绪：{emotion}/100（{state_text}）。{reaction}\n\n"
            "写出{name}接下来要对对方说的话，用中文，符合当前的情绪。如果你已经受够了、"
            f"想离开，就在消息末尾加上 {FAREWELL_MARKER}。"
        ),
        "reaction": "\n你对对方最后一条回复的感受：{reaction}",
        "closing_task": (
            "## 目前的对话\n{transcript}\n\n"
            "你现在的情绪：{emotion}/100（{state_text}）。对话已经结束：{outcome_text}。{reaction}\n\n"
            "写出{name}对对方说的最后一句话：一句简短的中文，符合当前的情绪。"
        ),
        "fallback": "嗯。",
        "fallback_closing": "好吧，再见。",
    },
}

_CHARACTER_TYPES: dict[str, dict[str, str]] = {
    "en": {
        "negative": "you tend to see the bad side, complain and push back",
        "passive": "you rarely take the lead; you answer briefly and wait to be drawn out",
        "avoidant": "you dodge hard questions and pull away when pressed",
    },
    "zh": {
        "negative": "容易看到坏的一面，爱抱怨、会反驳",
        "passive": "很少主动，回答简短，等对方引导",
        "avoidant": "回避尖锐的问题，被追问时会退缩",
    },
}

_STATES: dict[str, dict[str, str]] = {
    "en": {
        "S": "you feel fully understood and helped; grateful and relieved",
        "A": "you feel understood; open, warm, willing to share more",
        "B": "so-so; cautious, still testing whether they get you",
        "C": "frustrated; short, doubtful, complaining",
        "F": "fed up; you want to leave",
    },
    "zh": {
        "S": "感到被完全理解和帮助，感激、释然",
        "A": "感到被理解，愿意敞开心扉、多说一些",
        "B": "情绪一般，还在试探对方是否真的懂你",
        "C": "感到沮丧，话少、怀疑、抱怨",
        "F": "已经受够了，想离开",
    },
}

_OUTCOMES: dict[str, dict[str, str]] = {
    "en": {
        "success": "you feel fully understood and helped",
        "failure": "you have had enough and are leaving",
        "goodbye": "you decided to leave",
        "max_turns": "you have to go now",
    },
    "zh": {
        "success": "你感到被完全理解和帮助",
        "failure": "你已经受够了，要离开",
        "goodbye": "你决定离开",
        "max_turns": "你现在得走了",
    },
}


def prompt_language(persona: Persona, setting: str = "auto") -> str:
    """`en` or `zh`: the configured language, or the persona's own for `auto`."""
    if setting in ("en", "zh"):
        return setting
    return "zh" if persona.language == "zh" else "en"


def feel_messages(request: SimRequest, difficulty: str, language: str) -> list[dict[str, str]]:
    """Step one: how the persona feels about the last reply, ending in a JSON line."""
    text, persona = _TEXT[language], request.persona
    system = "\n\n".join([
        _persona_block(persona, language),
        _need_block(persona, language),
        text[f"feel_{_difficulty(difficulty)}"].format(name=persona.name),
    ])
    user = text["feel_task"].format(
        transcript=transcript(request.history, persona.name, language),
        emotion=request.emotion,
        state_text=_STATES[language][state(request.emotion)],
        name=persona.name,
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def speak_messages(
    request: SimRequest,
    emotion: int,
    outcome: Optional[str],
    difficulty: str,
    language: str,
    reaction: str = "",
) -> list[dict[str, str]]:
    """Step two: the persona's next message (a closing line when `outcome` is set).

    `reaction` is step one's reason, so what the persona says follows from what it felt.
    """
    text, persona = _TEXT[language], request.persona
    blocks = [_persona_block(persona, language)]
    if _difficulty(difficulty) == "vanilla":
        blocks += [_need_block(persona, language) + "\n" + text["speak_vanilla"]]
    else:
        blocks += [text["speak_challenging"]]
    blocks.append(text["speak_style"])
    fields = {
        "transcript": transcript(request.history, persona.name, language),
        "emotion": emotion,
        "state_text": _STATES[language][state(emotion)],
        "name": persona.name,
        "reaction": text["reaction"].format(reaction=reaction) if reaction else "",
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
    history: Sequence[Message], name: str, language: str, max_chars: int = MAX_TRANSCRIPT_CHARS
) -> str:
    """The dialogue as labelled lines: the opening message plus the latest ones that fit
    `max_chars` (long dialogues must still fit the simulator's context)."""
    text = _TEXT[language]
    labels = {"user": text["you"].format(name=name), "assistant": text["them"]}
    lines = [f"{labels.get(m.role, m.role)}: {_cut(m.content, text['cut'])}" for m in history]
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
    if difficulty not in ("vanilla", "challenging"):
        raise ValueError(f"difficulty must be vanilla or challenging, got {difficulty!r}")
    return difficulty


def _cut(content: str, marker: str) -> str:
    content = content.strip()
    return content if len(content) <= MAX_MESSAGE_CHARS else content[:MAX_MESSAGE_CHARS] + marker
