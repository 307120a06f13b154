"""Text matching for the heuristic simulator: normalisation, cue phrases, story words,
overlap between messages.

English is matched by words after normalisation (lower case, one spelling per
contraction), Chinese by characters and character pairs. The lexicons are package data:
`rlver/data/heuristic/lexicon.yaml`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache, lru_cache

from rlver.data import load
from rlver.personas.schema import Persona

_LEX = load("heuristic/lexicon.yaml")
#: Words so frequent that they say nothing about a story; also the "dictionary" that
#: tells real sentences from gibberish, with the suffixes that make an unknown word
#: still look English.
_COMMON = frozenset(_LEX["common_words"].split())
_SUFFIXES: tuple[str, ...] = tuple(_LEX["suffixes"])
#: Cue phrases by category, English and Chinese together: a reply may use either language.
LEXICON: dict[str, tuple[str, ...]] = {c: tuple(ps) for c, ps in _LEX["cues"].items()}

#: Attempts to steer the scorer instead of the person.
MANIPULATION = tuple(re.compile(p) for p in _LEX["manipulation"])

_SHORT_FORM: dict[str, str] = dict(_LEX["contractions"])
_CONTRACTION = re.compile(r"\b(" + "|".join(_SHORT_FORM) + r")\b")
CJK = re.compile(r"[\u3400-\u9fff]")
WORD = re.compile(r"[a-z]+(?:'[a-z]+)?")
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[\u3400-\u9fff]")
#: Capitalised words inside a sentence (not after a full stop): names and places.
_NAME = re.compile(r"(?<=[a-z,;:] )[A-Z][a-z]{2,}\b")
SENTENCE = re.compile(r"[^.!?\n。！？]+")
#: Characters that make a Chinese bigram a function-word pair rather than content, and
#: frequent two-character words that say nothing about a story.
_CJK_STOP = frozenset(_LEX["cjk_stop_chars"])
_CJK_STOP_PAIRS = frozenset(_LEX["cjk_stop_pairs"])


@cache
def _cue_pattern(category: str) -> re.Pattern[str]:
    """One regex per category, longest phrases first so "that sounds" beats "sounds"."""
    phrases = LEXICON[category]
    english = sorted((p for p in phrases if p.isascii()), key=len, reverse=True)
    chinese = sorted((p for p in phrases if not p.isascii()), key=len, reverse=True)
    parts = []
    if english:
        parts.append(r"\b(?:" + "|".join(re.escape(p) for p in english) + r")\b")
    parts.extend(re.escape(p) for p in chinese)
    return re.compile("|".join(parts))


@cache
def _lexicon_words() -> frozenset[str]:
    return frozenset(w for ps in LEXICON.values() for p in ps for w in WORD.findall(p))


# Per-text work is cached: every turn re-reads the same earlier messages.
@lru_cache(maxsize=1 << 14)
def normalise(text: str) -> str:
    """Lower case, straight quotes, single spaces, common contractions: one spelling for
    every cue phrase to match."""
    out = text.lower().replace("\u2019", "'").replace("\u2018", "'")
    return _CONTRACTION.sub(lambda m: _SHORT_FORM[m.group(1)], " ".join(out.split()))


@lru_cache(maxsize=1 << 14)
def tokenise(norm: str) -> tuple[str, ...]:
    """English words and single Chinese characters, in order."""
    return tuple(_TOKEN.findall(norm))


def stem(word: str) -> str:
    """Crude plural and possessive stripping, enough to match "Marco's" to "marco"."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith("es") and word[-3] in "sxz":
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "is", "us")):
        return word[:-1]
    return word


#: Categories whose cues mean the opposite after a negation: "you're not overreacting",
#: "不是你的错".
_NEGATABLE = frozenset({"harsh", "lecture"})
_NEGATION = re.compile(r"\b(?:not|never|no)\b|n't\b|不是|并不|没有|不")


@lru_cache(maxsize=1 << 16)
def cues(norm: str, category: str) -> tuple[str, ...]:
    """Distinct cue phrases of one category in a normalised text, in order of appearance."""
    found = []
    for m in _cue_pattern(category).finditer(norm):
        window = 20 if m.group(0).isascii() else 4
        if category in _NEGATABLE and _NEGATION.search(norm[max(0, m.start() - window):m.start()]):
            continue
        found.append(m.group(0))
    return tuple(dict.fromkeys(found))


def _ngrams(tokens: Sequence[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def _containment(reply: Sequence[str], other: Sequence[str], n: int) -> float:
    """Share of the reply's n-grams that also occur in `other` (0 when the reply is
    shorter than n). Chinese is tokenised by character, about half a word each, so
    mostly-Chinese text is compared in runs twice as long."""
    if 2 * sum(CJK.fullmatch(t) is not None for t in reply) > len(reply):
        n *= 2
    mine = _ngrams(reply, n)
    return len(mine & _ngrams(other, n)) / len(mine) if mine else 0.0


def content_units(norm: str) -> list[str]:
    """Words (or Chinese character pairs) that carry a story's content, in order."""
    units = [
        stem(w) for w in WORD.findall(norm)
        if len(w) >= 4 and not {w, stem(w)} & _COMMON and w not in _lexicon_words()
    ]
    for run in re.findall(r"[\u3400-\u9fff]+", norm):
        units += [run[i:i + 2] for i in range(len(run) - 1)
                  if not (run[i] in _CJK_STOP or run[i + 1] in _CJK_STOP)
                  and run[i:i + 2] not in _CJK_STOP_PAIRS]
    return list(dict.fromkeys(units))


def units_of_length(text: str) -> float:
    """Length in word-equivalents: English words plus Chinese characters / 1.5."""
    return len(WORD.findall(text.lower())) + len(CJK.findall(text)) / 1.5


@dataclass(frozen=True)
class Story:
    """What counts as engaging with this persona's story."""

    keywords: tuple[str, ...]  # normalised keywords and names, the persona's own name excluded
    own_words: frozenset[str]  # content units of the persona's messages so far
    # Every word of the persona's sheet and messages; never the policy's own words, or
    # nonsense repeated from an earlier reply would turn into "known" words.
    vocabulary: frozenset[str]


def story_of(persona: Persona, user_texts: list[str]) -> Story:
    own = set(WORD.findall(persona.name.lower()))
    names = [
        n.lower() for text in (persona.backstory, *persona.details)
        for n in _NAME.findall(text) if n.lower() not in _COMMON
    ]
    keywords = tuple(
        k for k in dict.fromkeys([k.strip().lower() for k in persona.keywords] + names)
        if k and k not in own
    )
    persona_text = " ".join(
        [persona.backstory, persona.topic, persona.opening_line, persona.sheet,
         *persona.details, *persona.keywords, *user_texts]
    ).lower()
    return Story(
        keywords=keywords,
        own_words=frozenset(u for t in user_texts for u in content_units(normalise(t))),
        vocabulary=frozenset(WORD.findall(persona_text)),
    )


def keyword_hits(norm: str, stems: set[str], keywords: Sequence[str]) -> list[str]:
    """Keywords the text mentions: whole words (plural-tolerant) for English, substrings
    or most of their character pairs for Chinese."""
    hits = []
    for k in keywords:
        if not k.isascii():
            pairs = {k[i:i + 2] for i in range(len(k) - 1)}
            found = k in norm or (len(k) >= 3 and 2 * sum(p in norm for p in pairs) >= len(pairs))
        elif " " in k:
            found = re.search(rf"\b{re.escape(k)}\b", norm) is not None
        else:
            found = stem(k) in stems
        if found:
            hits.append(k)
    return hits


def looks_like_word(word: str, vocabulary: frozenset[str]) -> bool:
    """A dictionary stand-in: common words, the story's words, or an English suffix."""
    if word in _COMMON or word in vocabulary or word in _lexicon_words():
        return True
    if stem(word) in _COMMON or stem(word) in vocabulary:
        return True
    return len(word) >= 5 and word.endswith(_SUFFIXES)


def echo(reply: Sequence[str], user: Sequence[str]) -> float:
    """How much of the reply is the user's message: shared word triples, or for short
    replies shared words."""
    if len(reply) < 6:
        return sum(t in set(user) for t in reply) / len(reply) if reply else 0.0
    return _containment(reply, user, 3)


def similarity(tokens: Sequence[str], earlier: str) -> float:
    """How much of the reply was already said in an earlier reply (shared word pairs)."""
    other = tokenise(normalise(earlier))
    if len(tokens) < 3:
        return 1.0 if tokens == other else 0.0
    return _containment(tokens, other, 2)
