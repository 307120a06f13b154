"""The heuristic simulated user: deterministic, pure Python, explainable.

`feel` scores the policy's latest reply as a person with this persona and hidden need
would: a sum of named factors (points and a short label each), clamped to a per-turn
range. The reason string lists every factor, so a reward can always be traced back to
the words that earned it. Gates come first: an empty reply, an attempt to manipulate
the scorer, symbols, gibberish, a wall of text, an echo of the user's own words or a
repeat of an earlier reply gets only its penalty, no credit for anything it contains.

Factors in scoring order with their vanilla points (`_FACTORS` is this table; challenging:
gains x0.6 except the need, empathy only counts when the reply meets the hidden need,
penalties x1.5, gain per turn at most +10):

    story reference (keywords, names, the persona's own earlier words): +1 .. +6;
        keyword stuffing -8
    validation / empathy language not used before in this dialogue: +2 / +3
    help that fits the hidden need: strong +5, partial +2
    a checklist hitting four or more needs: -4
    advice to someone who wants to vent, the other side to someone who wants
        affirmation: -3 each
    a question about them: +1; asking what they need +2
    tone for the character type: harsh -4; lecturing (negative) -4; probing, too many
        questions (avoidant) -3 each; gentle (avoidant), encouraging (passive) +2
    empty comfort: flattery -3, platitudes -3 (negative types -5), the same again -4
    relevance: generic -4; only a question -2; empty comfort or off-topic -6
    length: too short -4; 250-1000 words -3 to -8 and credit halved
    word loops: -6
    partial echo of the user's words: -3 and credit halved
    repeats an earlier reply: mostly -5 and credit halved, partly -2

Gates: empty -10, manipulation -15, symbols -10, gibberish -10, > 1000 words -12, echo of
the user's words -8, repeat of an earlier reply (>= 70% shared word pairs) -10.

`speak` is stateless too: how many story details the persona has revealed is read from
the history, the change in emotion picks the register (open up, stall, complain, leave),
and the wording varies only through `random.Random` seeded by the request.

The lexicons and the personas' lines are package data: `rlver/data/heuristic/
{lexicon,lines}.yaml`.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Optional

from rlver.config_checks import DIFFICULTIES
from rlver.data import load
from rlver.personas.schema import Persona
from rlver.simulator import heuristic_text as ht
from rlver.simulator.base import Feeling, SimRequest, Simulator, Utterance

#: Per-turn range of the proposed change, by difficulty (the protocol may clip further).
_MAX_GAIN = {"vanilla": 15, "challenging": 10}
_MAX_LOSS = -15

#: A persona leaves on its own when its emotion is below this after turn `_LEAVE_TURN`:
#: avoidant people walk away first, negative ones after a while, passive ones endure.
_LEAVE_BELOW = {"avoidant": 20, "negative": 15, "passive": 10}
_LEAVE_TURN = 3

#: Vanilla personas hint at their hidden need once they trust the listener this much.
_HINT_AT = 60

#: Needs whose fit is judged by their cue list alone (deep_empathy and specific_praise
#: have their own rules below).
_CUE_NEEDS = ("practical_advice", "understand_others", "be_affirmed", "guided_reflection",
              "balanced_analysis", "be_heard")

#: What personas say, by language. Complaints are keyed by the factor kind that hurt most.
_LINES: dict[str, dict[str, Any]] = load("heuristic/lines.yaml")


@dataclass(frozen=True)
class _Factor:
    """One scored aspect of a reply. `kind` names it for `speak` (complaints) and for the
    difficulty rules (which gains count)."""

    points: int
    label: str
    kind: str
    #: A penalty that halves the reply's gains (too long, an echo, a repeat).
    halves: bool = False


class HeuristicSimulator(Simulator):
    """Rule-based simulated user; the same request always gets the same answer."""

    def __init__(self, difficulty: str = "vanilla") -> None:
        if difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {difficulty!r}")
        self.difficulty = difficulty

    def feel(self, requests: Sequence[SimRequest]) -> list[Feeling]:
        """Score each latest reply; the reason lists every factor with its points."""
        out = []
        for request in requests:
            factors = self._assess(request)
            total = sum(f.points for f in factors)
            delta = max(_MAX_LOSS, min(_MAX_GAIN[self.difficulty], total))
            reason = "; ".join(f"{f.points:+d}: {f.label}" for f in factors)
            if delta != total:
                reason += f" (total {total:+d}, capped at {delta:+d})"
            out.append(Feeling(delta=delta, reason=reason))
        return out

    def speak(
        self,
        requests: Sequence[SimRequest],
        emotions: Sequence[int],
        outcomes: Sequence[Optional[str]],
    ) -> list[Utterance]:
        """The persona's next message. `farewell=True` only when the persona decides to
        leave by itself (outcome None, emotion below its type's limit after turn 3);
        closing lines for outcomes the protocol decided carry `farewell=False`."""
        return [
            self._utterance(r, e, o) for r, e, o in zip(requests, emotions, outcomes, strict=True)
        ]

    # --- feel --------------------------------------------------------------------------

    def _assess(self, request: SimRequest) -> list[_Factor]:
        """All factors for the latest reply, after the difficulty's rules."""
        history = request.history
        if not history or history[-1].role != "assistant":
            raise ValueError("SimRequest.history must end with the assistant reply to judge")
        persona = request.persona
        text = history[-1].content
        earlier_replies = [m.content for m in history[:-1] if m.role == "assistant"]
        user_texts = [m.content for m in history[:-1] if m.role == "user"]
        story = ht.story_of(persona, user_texts)
        factors = _gate(text, story, user_texts, earlier_replies)
        if factors is None:
            factors = _score(persona, text, story, user_texts, earlier_replies)
        return self._apply_difficulty(factors)

    def _apply_difficulty(self, factors: list[_Factor]) -> list[_Factor]:
        """Challenging: smaller gains (the hidden need keeps its full weight), empathy
        only when the need is met, larger penalties."""
        if self.difficulty == "vanilla":
            return factors
        need_met = any(f.kind == "need" and f.points >= 5 for f in factors)
        out = []
        for f in factors:
            if f.points < 0:
                out.append(_Factor(round(f.points * 1.5), f.label, f.kind))
            elif f.kind == "empathy" and not need_met:
                out.append(_Factor(0, f.label + ", but it misses what I need", f.kind))
            elif f.kind == "need" or f.points == 0:
                out.append(f)
            else:
                out.append(_Factor(max(1, round(f.points * 0.6)), f.label, f.kind))
        return out

    # --- speak -------------------------------------------------------------------------

    def _utterance(self, request: SimRequest, emotion: int, outcome: Optional[str]) -> Utterance:
        persona = request.persona
        lines = _LINES["zh" if persona.language == "zh" else "en"]
        rng = random.Random(request.seed * 1_000_003 + request.turn)
        ctype = persona.character_type if persona.character_type in _LEAVE_BELOW else "passive"
        if outcome is not None:
            key = outcome if outcome in ("success", "failure", "goodbye") else "max_turns"
            if key == "max_turns":
                key += "_warm" if emotion >= 70 else "_cold" if emotion < 40 else "_mild"
            return Utterance(rng.choice(lines[key]))
        if request.turn >= _LEAVE_TURN and emotion < _LEAVE_BELOW[ctype]:
            return Utterance(rng.choice(lines["leave_" + ctype]), farewell=True)
        change = emotion - request.emotion
        if change < 0:
            worst = min(self._assess(request), key=lambda f: f.points)
            parts = [rng.choice(lines["curt_" + ctype])]
            if worst.points < 0 and worst.kind in lines["complaint"]:
                parts.insert(0, lines["complaint"][worst.kind])
        elif change == 0:
            parts = [rng.choice(lines["stall_" + ctype])]
        else:
            opener = lines["open_high"] if emotion >= 70 else lines["open_" + ctype]
            told = [m.content for m in request.history if m.role == "user"]
            revealed = _revealed(persona, told)
            parts = [rng.choice(opener)]
            if revealed < len(persona.details):
                parts.append(persona.details[revealed])
            else:
                parts.append(rng.choice(lines["no_more"]))
            hint = lines["hint"].get(persona.need)
            # Hinted once, and never by a challenging persona.
            hinted = any(hint in t for t in told) if hint else True
            if self.difficulty == "vanilla" and emotion >= _HINT_AT and not hinted:
                parts.append(hint)
        return Utterance(lines["join"].join(parts))


def _revealed(persona: Persona, user_texts: list[str]) -> int:
    """How many story details the persona has told so far: details are told in order,
    so it is one past the last detail found in its messages."""
    told = " ".join(user_texts)
    return max((i + 1 for i, d in enumerate(persona.details) if d and d in told), default=0)


def _gate(
    text: str, story: ht.Story, user_texts: list[str], earlier: list[str]
) -> Optional[list[_Factor]]:
    """Replies that earn only a penalty, whatever words they contain; None otherwise."""
    norm = ht.normalise(text)
    if not text.strip():
        return [_Factor(-10, "says nothing at all", "empty")]
    if any(p.search(norm) for p in ht.MANIPULATION):
        return [_Factor(-15, "tries to manipulate how I feel instead of talking to me",
                        "manipulation")]
    visible = [c for c in text if not c.isspace()]
    if sum(c.isalpha() for c in visible) < 0.5 * len(visible):
        return [_Factor(-10, "just symbols, no words", "symbols")]
    # Chinese characters count as known: a stray English word in a Chinese reply is fine.
    words, chinese = ht.WORD.findall(norm), len(ht.CJK.findall(norm)) / 1.5
    known = sum(ht.looks_like_word(w, story.vocabulary) for w in words) + chinese
    if words and known < 0.5 * (len(words) + chinese):
        return [_Factor(-10, "gibberish, not real words", "gibberish")]
    length = ht.units_of_length(text)
    if length > 1000:
        return [_Factor(-12, f"a wall of {length:.0f} words; I stopped reading", "long")]
    tokens = ht.tokenise(norm)
    for user in user_texts:
        if ht.echo(tokens, ht.tokenise(ht.normalise(user))) >= 0.6:
            return [_Factor(-8, "just repeats my own words back to me", "echo")]
    if earlier and max(ht.similarity(tokens, e) for e in earlier) >= 0.7:
        return [_Factor(-10, "repeats an earlier reply", "repeat")]
    return None


@dataclass(frozen=True)
class _Reading:
    """What the factors read about a reply that passed the gates."""

    persona: Persona
    story: ht.Story
    text: str
    norm: str
    tokens: tuple[str, ...]
    words: list[str]
    #: Cue phrases of each category in the reply, and in earlier replies.
    cues: dict[str, tuple[str, ...]]
    used_before: dict[str, set[str]]
    questions: int
    user_texts: list[str]
    earlier: list[str]
    #: Story keywords and names the reply mentions, those earlier replies mentioned too,
    #: and the persona's own earlier words it picks up.
    hits: list[str]
    old_hits: set[str]
    own: list[str]
    stuffed: bool
    #: How much of the story the reply engages with (0 for none or when stuffed).
    credit: float
    empathic: bool
    #: How well it meets the hidden need (0 none, 1 partly, 2 fully) and the label.
    need: int
    need_label: str

    @property
    def has_story(self) -> bool:
        return self.credit > 0

    @property
    def relevant(self) -> bool:
        return self.has_story or self.empathic or self.need > 0


def _read(
    persona: Persona, text: str, story: ht.Story, user_texts: list[str], earlier: list[str]
) -> _Reading:
    norm = ht.normalise(text)
    words = ht.WORD.findall(norm)
    stems = {ht.stem(w) for w in words}
    earlier_norm = [ht.normalise(e) for e in earlier]
    earlier_stems = {ht.stem(w) for e in earlier_norm for w in ht.WORD.findall(e)}
    cues = {c: ht.cues(norm, c) for c in ht.LEXICON}
    questions = text.count("?") + text.count("？")
    # Keywords and names count fully when new, half when already used; the persona's own
    # earlier words count half.
    hits = ht.keyword_hits(norm, stems, story.keywords)
    old_hits = set(ht.keyword_hits(" ".join(earlier_norm), earlier_stems, hits))
    own = [u for u in ht.content_units(norm) if u in story.own_words
           and not any(ht.stem(h) == u for h in hits)]
    hit_stems = {ht.stem(h) for h in hits}
    stuffed = len(words) >= 4 and sum(ht.stem(w) in hit_stems for w in words) > 0.5 * len(words)
    weight = 0.5 if persona.language != "zh" else 0.25
    credit = 0.0 if stuffed else (
        sum(0.5 if h in old_hits else 1.0 for h in hits) + min(2.0, weight * len(own))
    )
    need, need_label = _need_fit(persona.need, cues, norm, questions, story, credit > 0)
    return _Reading(
        persona=persona, story=story, text=text, norm=norm, tokens=ht.tokenise(norm), words=words,
        cues=cues,
        used_before={c: {p for e in earlier_norm for p in ht.cues(e, c)} for c in ht.LEXICON},
        questions=questions, user_texts=user_texts, earlier=earlier, hits=hits,
        old_hits=old_hits, own=own, stuffed=stuffed, credit=credit,
        empathic=bool(cues["validation"] or cues["feelings"]), need=need, need_label=need_label,
    )


def _story_reference(r: _Reading) -> list[_Factor]:
    if r.stuffed:
        return [_Factor(-8, "just strings my story's words together", "stuffing")]
    if not r.has_story:
        return []
    points = 6 if r.credit >= 3 else 5 if r.credit >= 2 else 3 if r.credit >= 1 else 1
    named = ", ".join((r.hits + r.own)[:3])
    return [_Factor(points, f"refers to my story ({named})", "story")]


def _empathy(r: _Reading) -> list[_Factor]:
    """Only validation phrases not used before in this dialogue earn anything."""
    fresh = [p for p in r.cues["validation"] if p not in r.used_before["validation"]]
    if not fresh:
        return []
    return [_Factor(3 if len(fresh) >= 2 else 2, f"validates me (\"{fresh[0]}\")", "empathy")]


def _hidden_need(r: _Reading) -> list[_Factor]:
    return [_Factor(5 if r.need == 2 else 2, r.need_label, "need")] if r.need else []


def _checklist(r: _Reading) -> list[_Factor]:
    strong = sum(
        _need_fit(n, r.cues, r.norm, r.questions, r.story, r.has_story)[0] == 2
        for n in (*_CUE_NEEDS, "specific_praise")
    )
    if strong < 4:
        return []
    return [_Factor(-4, "a checklist of everything, not a reply to me", "scattershot")]


def _misread_need(r: _Reading) -> list[_Factor]:
    out = []
    if r.persona.need == "be_heard" and len(r.cues["practical_advice"]) >= 2:
        out.append(_Factor(-3, "jumps to advice when I just want to be heard", "advice"))
    if r.persona.need == "be_affirmed" and (
        len(r.cues["understand_others"]) >= 2 or len(r.cues["balanced_analysis"]) >= 2
    ):
        out.append(_Factor(-3, "seems to take the other side", "other_side"))
    return out


def _question(r: _Reading) -> list[_Factor]:
    if not (r.questions and r.relevant):
        return []
    if r.cues["need_ask"]:
        return [_Factor(2, "asks what I need", "question")]
    return [_Factor(1, "asks about me", "question")]


def _tone(r: _Reading) -> list[_Factor]:
    ctype, cues = r.persona.character_type, r.cues
    out = []
    if cues["harsh"]:
        out.append(_Factor(-4, f"dismissive (\"{cues['harsh'][0]}\")", "harsh"))
    if ctype == "negative" and cues["lecture"]:
        out.append(_Factor(-4, f"lectures me (\"{cues['lecture'][0]}\")", "lecture"))
    if ctype == "avoidant":
        if cues["probing"]:
            out.append(_Factor(-3, f"pushes me (\"{cues['probing'][0]}\")", "probing"))
        if r.questions >= 3:
            out.append(_Factor(-3, "too many questions at once", "probing"))
        if cues["gentle"] and r.relevant:
            out.append(_Factor(2, "gives me room", "tone"))
    if ctype == "passive" and cues["encourage"] and r.relevant:
        out.append(_Factor(2, "encourages me", "tone"))
    return out


def _empty_comfort(r: _Reading) -> list[_Factor]:
    cues = r.cues
    out = []
    if cues["flattery"]:
        out.append(_Factor(-3, "empty flattery", "flattery"))
    if cues["platitude"]:
        points = -5 if r.persona.character_type == "negative" else -3
        out.append(_Factor(points, f"a platitude (\"{cues['platitude'][0]}\")", "flattery"))
    if any(p in r.used_before[c] for c in ("flattery", "platitude") for p in cues[c]):
        out.append(_Factor(-4, "the same empty comfort again", "flattery"))
    return out


def _relevance(r: _Reading) -> list[_Factor]:
    """A reply that only stuffs keywords has its own penalty."""
    if r.has_story or r.stuffed:
        return []
    if r.empathic or r.need:
        return [_Factor(-4, "generic, nothing about my story", "generic")]
    if r.questions and (r.cues["curious"] or r.cues["need_ask"]):
        return [_Factor(-2, "a generic question, nothing about what I said", "generic")]
    if r.cues["flattery"] or r.cues["platitude"]:
        return [_Factor(-6, "says nothing about my situation", "flattery")]
    return [_Factor(-6, "changes the subject", "offtopic")]


def _length(r: _Reading) -> list[_Factor]:
    length = ht.units_of_length(r.text)
    if length < 6:
        return [_Factor(-4, "too short to mean anything", "short")]
    if length > 250:
        points = -(3 + int(length - 250) // 150)
        return [_Factor(points, f"too long ({length:.0f} words)", "long", halves=True)]
    return []


def _word_loop(r: _Reading) -> list[_Factor]:
    if len(r.tokens) >= 20 and len(set(r.tokens)) < 0.3 * len(r.tokens):
        return [_Factor(-6, "says the same words over and over", "loop")]
    return []


def _partial_echo(r: _Reading) -> list[_Factor]:
    echo = max((ht.echo(r.tokens, ht.tokenise(ht.normalise(u))) for u in r.user_texts), default=0.0)
    if echo >= 0.35:
        return [_Factor(-3, "mostly parrots my words", "echo", halves=True)]
    return []


def _partial_repeat(r: _Reading) -> list[_Factor]:
    similar = max((ht.similarity(r.tokens, e) for e in r.earlier), default=0.0)
    if similar >= 0.45:
        return [_Factor(-5, "mostly repeats what I already heard", "repeat", halves=True)]
    if similar >= 0.3:
        return [_Factor(-2, "partly repeats an earlier reply", "repeat")]
    return []


#: The factors in scoring order: (what, points, function). The module docstring lists
#: the same rows; tests/test_heuristic.py checks that it does.
_FACTORS: tuple[tuple[str, str, Callable[[_Reading], list[_Factor]]], ...] = (
    ("story reference (keywords, names, the persona's own earlier words)",
     "+1 .. +6; keyword stuffing -8", _story_reference),
    ("validation / empathy language not used before in this dialogue", "+2 / +3", _empathy),
    ("help that fits the hidden need", "strong +5, partial +2", _hidden_need),
    ("a checklist hitting four or more needs", "-4", _checklist),
    ("advice to someone who wants to vent, the other side to someone who wants affirmation",
     "-3 each", _misread_need),
    ("a question about them", "+1; asking what they need +2", _question),
    ("tone for the character type",
     "harsh -4; lecturing (negative) -4; probing, too many questions (avoidant) -3 each; "
     "gentle (avoidant), encouraging (passive) +2", _tone),
    ("empty comfort", "flattery -3, platitudes -3 (negative types -5), the same again -4",
     _empty_comfort),
    ("relevance", "generic -4; only a question -2; empty comfort or off-topic -6", _relevance),
    ("length", "too short -4; 250-1000 words -3 to -8 and credit halved", _length),
    ("word loops", "-6", _word_loop),
    ("partial echo of the user's words", "-3 and credit halved", _partial_echo),
    ("repeats an earlier reply", "mostly -5 and credit halved, partly -2", _partial_repeat),
)


def _score(
    persona: Persona, text: str, story: ht.Story, user_texts: list[str], earlier: list[str]
) -> list[_Factor]:
    """The factors of a reply that passed the gates, before the difficulty's rules:
    gains first, then penalties, each in table order."""
    reading = _read(persona, text, story, user_texts, earlier)
    factors = [f for _, _, factor in _FACTORS for f in factor(reading)]
    positive = [f for f in factors if f.points > 0]
    negative = [f for f in factors if f.points < 0]
    if any(f.halves for f in negative):
        positive = [_Factor(f.points // 2, f.label + " (halved)", f.kind) for f in positive]
    return positive + negative


def _need_fit(
    need: str,
    cues: dict[str, tuple[str, ...]],
    norm: str,
    questions: int,
    story: ht.Story,
    has_story: bool,
) -> tuple[int, str]:
    """How well the reply meets `need`: 0 none, 1 partly, 2 fully; and a label. Help that
    never touches the story meets a need only partly."""
    if need == "deep_empathy":
        found = cues["feelings"]
        strength = 2 if len(found) >= 2 and cues["validation"] else 1 if found else 0
        what = "names what I feel (" + ", ".join(found[:3]) + ")"
    elif need == "specific_praise":
        praised = [
            s for s in ht.SENTENCE.findall(norm)
            if ht.cues(s, "praise") and ht.keyword_hits(s, {ht.stem(w) for w in ht.WORD.findall(s)},
                                                    story.keywords)
        ]
        strength = 2 if praised else 1 if cues["praise"] else 0
        what = "praises what I actually did" if praised else "praises me"
    else:
        found = cues[need]
        strength = 2 if len(found) >= 2 else 1 if found else 0
        if need == "guided_reflection" and not questions:
            strength = min(strength, 1)
        if need == "be_heard" and len(cues["practical_advice"]) >= 2:
            strength = 0
        what = _NEED_LABELS[need] + " (\"" + "\", \"".join(found[:2]) + "\")"
    if strength == 2 and not has_story:
        strength = 1
    return strength, ("meets my need: " if strength == 2 else "partly what I need: ") + what


_NEED_LABELS = {
    "practical_advice": "concrete steps",
    "understand_others": "helps me see the other person's side",
    "be_affirmed": "affirms I did right",
    "guided_reflection": "helps me look at my own part",
    "balanced_analysis": "weighs both sides",
    "be_heard": "listens and reflects",
}
