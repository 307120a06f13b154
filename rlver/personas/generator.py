"""The seeded English persona generator.

A persona is a situation template (the story) filled with a sampled cast (names, city,
occupation), a need and a character type cycled by index (so any 24 consecutive
personas cover all 8 x 3 combinations), and type-specific traits, voice and opening.
Each persona draws from its own RNG seeded by (seed, index), so generate(n) is a prefix
of generate(n + k) and a redraw (to avoid a duplicate) never shifts later personas.
The tables are package data: `rlver/data/personas/{cast,character_types,needs,
situations}.yaml`.
"""

from __future__ import annotations

import random
from typing import Any, NamedTuple

from rlver.data import load
from rlver.personas.schema import CHARACTER_TYPES, NEEDS, Persona

_CAST = load("personas/cast.yaml")
_TYPES = load("personas/character_types.yaml")

FEMALE_NAMES: tuple[str, ...] = tuple(_CAST["female_names"])
MALE_NAMES: tuple[str, ...] = tuple(_CAST["male_names"])
NEUTRAL_NAMES: tuple[str, ...] = tuple(_CAST["neutral_names"])
LAST_NAMES: tuple[str, ...] = tuple(_CAST["last_names"])
CITIES: tuple[str, ...] = tuple(_CAST["cities"])
WHENS: tuple[str, ...] = tuple(_CAST["whens"])
YEARS: tuple[str, ...] = tuple(_CAST["years"])
#: (gender, weight).
GENDERS: tuple[tuple[str, int], ...] = tuple(_CAST["genders"].items())
#: gender -> (possessive, object).
_PRONOUNS: dict[str, tuple[str, str]] = {g: tuple(p) for g, p in _CAST["pronouns"].items()}
#: (title, workplace, min age, max age, kind); kind is work, student or retired.
OCCUPATIONS: tuple[tuple[str, str, int, int, str], ...] = tuple(
    tuple(o) for o in _CAST["occupations"]
)
#: The exam a student of each kind fails in the study story.
_EXAMS: dict[str, str] = dict(_CAST["exams"])

TRAITS: dict[str, tuple[str, ...]] = {c: tuple(_TYPES[c]["traits"]) for c in CHARACTER_TYPES}
SPEAKING_STYLES: dict[str, tuple[str, ...]] = {
    c: tuple(_TYPES[c]["speaking_styles"]) for c in CHARACTER_TYPES
}
OPENING_FRAMES: dict[str, tuple[str, ...]] = {
    c: tuple(_TYPES[c]["opening_frames"]) for c in CHARACTER_TYPES
}
#: The hidden need in the persona's words; {topic}, {other} and {deed} come from the story.
NEED_TEXTS: dict[str, tuple[str, ...]] = {
    key: tuple(need["texts"]) for key, need in load("personas/needs.yaml").items()
}


class _Situation(NamedTuple):
    """One story template (rlver/data/personas/situations.yaml says what each field is)."""

    domain: str
    topic: str
    backstory: str
    details: tuple[str, ...]
    keywords: tuple[str, ...]
    hints: tuple[str, ...]
    deed: str
    ages: tuple[int, int] = (18, 75)
    kinds: tuple[str, ...] = ("work", "student", "retired")
    fill: tuple[tuple[str, tuple[str, ...]], ...] = ()


def _situation(item: dict[str, Any]) -> _Situation:
    """A situations.yaml item; absent ages, kinds and fill take the defaults."""
    default = _Situation._field_defaults
    return _Situation(
        domain=item["domain"],
        topic=item["topic"],
        backstory=item["backstory"],
        details=tuple(item["details"]),
        keywords=tuple(item["keywords"]),
        hints=tuple(item["hints"]),
        deed=item["deed"],
        ages=tuple(item["ages"]) if "ages" in item else default["ages"],
        kinds=tuple(item["kinds"]) if "kinds" in item else default["kinds"],
        fill=tuple((k, tuple(v)) for k, v in item.get("fill", {}).items()),
    )


SITUATIONS: tuple[_Situation, ...] = tuple(
    _situation(item) for item in load("personas/situations.yaml")
)

_STOPWORDS = frozenset(
    "the a an and or of to in on at for my our their his her its is was be i me we us you "
    "it as by with from that this".split()
)
#: Keyword placeholders with the last word of a multi-word fill: {pkey} for {project}...
_KEY_OF = {"pkey": "project", "hkey": "hobby", "ekey": "exam", "fkey": "feud"}


def _a(noun: str) -> str:
    return f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _pick_name(rng: random.Random, gender: str) -> str:
    pool = {"woman": FEMALE_NAMES, "man": MALE_NAMES}.get(gender, NEUTRAL_NAMES)
    return rng.choice(pool)


def _slots(rng: random.Random, sit: _Situation, gender: str) -> dict[str, str]:
    """Sample the cast and setting of one story (everything but need and type)."""
    lo, hi = sit.ages
    jobs = [o for o in OCCUPATIONS if o[4] in sit.kinds and o[2] <= hi and o[3] >= lo]
    title, workplace, jlo, jhi, _ = rng.choice(jobs)
    age = rng.randint(max(lo, jlo), min(hi, jhi))
    first = _pick_name(rng, gender)
    everyone = FEMALE_NAMES + MALE_NAMES + NEUTRAL_NAMES
    others = rng.sample([n for n in everyone if n != first], 2)
    pos, obj = _PRONOUNS[gender]
    when = rng.choice(WHENS)
    s = {
        "first": first,
        "name": f"{first} {rng.choice(LAST_NAMES)}",
        "age": str(age),
        "gender": gender,
        "pos": pos,
        "Pos": _cap(pos),
        "obj": obj,
        "other": others[0],
        "other2": others[1],
        "fname": rng.choice([n for n in FEMALE_NAMES if n not in (first, *others)]),
        "mname": rng.choice([n for n in MALE_NAMES if n not in (first, *others)]),
        "last2": rng.choice(LAST_NAMES),
        "city": rng.choice(CITIES),
        "job": title,
        "workplace": workplace,
        "when": when,
        "when_cap": _cap(when),
        "years": rng.choice(YEARS),
    }
    for key, options in sit.fill:
        s[key] = rng.choice(options)
    s["a_job"], s["a_workplace"] = _a(title), _a(workplace)
    s["a_trade"] = _a(title.removeprefix("retired "))
    s["exam"] = _EXAMS.get(title, "final exams")
    for key, src in _KEY_OF.items():
        if src in s:
            s[key] = s[src].split()[-1]
    return s


def _keywords(templates: tuple[str, ...], s: dict[str, str]) -> tuple[str, ...]:
    out: list[str] = []
    for t in templates:
        for word in t.format_map(s).lower().replace("'s", "").split():
            word = word.strip(".,'\"")
            if len(word) >= 3 and word not in _STOPWORDS and word not in out:
                out.append(word)
    return tuple(out[:12])


def _make_persona(
    rng: random.Random, index: int, id_prefix: str, need: str, ctype: str
) -> Persona:
    sit = rng.choice(SITUATIONS)
    gender = rng.choices([g for g, _ in GENDERS], weights=[w for _, w in GENDERS])[0]
    s = _slots(rng, sit, gender)
    topic = sit.topic.format_map(s)
    s["topic"] = topic
    s["deed"] = sit.deed.format_map(s)
    # The first detail is the surface of the story and always told; 2-4 deeper ones follow.
    keep = [0, *sorted(rng.sample(range(1, len(sit.details)), rng.randint(2, 4)))]
    details = tuple(_cap(sit.details[i].format_map(s)) for i in keep)
    traits = tuple(rng.sample(TRAITS[ctype], rng.randint(2, 3)))
    style = rng.choice(SPEAKING_STYLES[ctype])
    hint = rng.choice(sit.hints).format_map(s)
    opening = rng.choice(OPENING_FRAMES[ctype]).format(hint=hint, Hint=_cap(hint))
    sheet = "\n".join(
        [
            f"Name: {s['name']}",
            f"Age: {s['age']}",
            f"Gender: {gender}",
            f"Occupation: {s['job']}",
            f"Lives in: {s['city']}",
            f"Traits: {', '.join(traits)}",
            f"Character type: {ctype}",
            f"Speaking style: {style}",
        ]
    )
    return Persona(
        persona_id=f"{id_prefix}-{index:04d}",
        language="en",
        name=s["name"],
        age=int(s["age"]),
        gender=gender,
        occupation=s["job"],
        character_type=ctype,
        traits=traits,
        need=need,
        need_text=rng.choice(NEED_TEXTS[need]).format_map(s),
        topic=topic,
        backstory=sit.backstory.format_map(s),
        sheet=sheet,
        details=details,
        keywords=_keywords(sit.keywords, s),
        opening_line=opening,
        source="generated",
    )


def persona_key(p: Persona) -> tuple[str, str]:
    """Identity of a story for overlap checks: same name and backstory = same persona."""
    return (p.name, p.backstory)


def generate(
    n: int, seed: int, id_prefix: str, exclude: frozenset[tuple[str, str]] = frozenset()
) -> list[Persona]:
    """`n` diverse English personas, identical for identical arguments.

    Need and character type cycle with the index, so every need x type pair is equally
    represented; everything else is drawn from an RNG seeded by (seed, index), so the
    list for n is a prefix of the list for n + k. A persona whose `persona_key` repeats
    an earlier one (or one in `exclude`, e.g. the train set when making the test set)
    is redrawn.
    """
    if n < 0:
        raise ValueError(f"generate: n must be >= 0, got {n}")
    needs = tuple(NEEDS)
    seen = set(exclude)
    out: list[Persona] = []
    for index in range(n):
        need = needs[index % len(needs)]
        ctype = CHARACTER_TYPES[index % len(CHARACTER_TYPES)]
        for attempt in range(100):
            rng = random.Random(f"rlver-personas/{seed}/{index}/{attempt}")
            p = _make_persona(rng, index, id_prefix, need, ctype)
            if persona_key(p) not in seen:
                break
        else:  # pragma: no cover - 100 collisions in a row cannot happen with these banks
            raise RuntimeError(f"generate: could not draw a new persona for index {index}")
        seen.add(persona_key(p))
        out.append(p)
    return out
