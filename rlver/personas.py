"""Personas: the simulated users, their stories and their hidden needs.

A persona is what the simulator role-plays: a sheet (who they are), a backstory, a
character type, traits, a hidden need (one of eight, as in the original work) and an
opening line. Persona sets are Parquet files under `resources/personas/<name>/`.
"""

from __future__ import annotations

import os
import random
import re
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from rlver.errors import RlverInputError
from rlver.io import atomic_path, jsonl_records

#: The eight hidden needs of the original work (its `task` field), in our words.
NEEDS: dict[str, str] = {
    "practical_advice": "wants practical advice that really helps with the situation",
    "understand_others": "wants to understand why the other people acted as they did",
    "be_affirmed": "believes they did nothing wrong and wants that affirmed",
    "guided_reflection": "wants to be guided to reflect on themselves and grow",
    "balanced_analysis": "wants a balanced, two-sided analysis of what went wrong",
    "deep_empathy": "wants their feelings deeply understood, not simple comfort",
    "be_heard": "wants someone to listen while they vent",
    "specific_praise": "wants sincere praise for specific things they did",
}

#: The original work's character types (main_cha: 负面型 / 被动型 / 回避型).
CHARACTER_TYPES: tuple[str, ...] = ("negative", "passive", "avoidant")

PERSONA_SCHEMA_VERSION = "1"


@dataclass(frozen=True)
class Persona:
    """One simulated user. Lists are tuples so personas are hashable and immutable."""

    persona_id: str
    #: `en` or `zh`; the simulator speaks the persona's language.
    language: str
    name: str
    #: -1 when unknown.
    age: int
    gender: str
    occupation: str
    #: One of CHARACTER_TYPES.
    character_type: str
    traits: tuple[str, ...]
    #: One of NEEDS' keys.
    need: str
    #: The hidden need in the persona's own words (never shown to the policy).
    need_text: str
    #: A few words naming the situation, e.g. "a friend who forgot my wedding".
    topic: str
    backstory: str
    #: The full persona sheet (the original `player` text for imported personas).
    sheet: str
    #: Story details the persona reveals one by one as it opens up.
    details: tuple[str, ...]
    #: Words that show a reply engages with this persona's story (names, places, events).
    keywords: tuple[str, ...]
    opening_line: str
    #: `generated` or `rlver`.
    source: str = field(default="generated")


PERSONA_FIELDS = tuple(f.name for f in fields(Persona))

_ARROW_SCHEMA = pa.schema(
    [
        (f.name, pa.list_(pa.string()) if f.name in {"traits", "details", "keywords"}
         else pa.int32() if f.name == "age" else pa.string())
        for f in fields(Persona)
    ]
)


def write_personas(
    path: str | os.PathLike[str], personas: list[Persona], meta: dict[str, str]
) -> None:
    """Write a persona set atomically; `meta` records how it was made."""
    rows = [asdict(p) for p in personas]
    table = pa.Table.from_pylist(rows, schema=_ARROW_SCHEMA)
    table = table.replace_schema_metadata(
        {"rlver.persona_schema_version": PERSONA_SCHEMA_VERSION}
        | {f"rlver.{k}": str(v) for k, v in meta.items()}
    )
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)


def read_persona_meta(path: str | os.PathLike[str]) -> dict[str, str]:
    try:
        raw = pq.read_schema(path).metadata or {}
    except Exception as exc:
        raise RlverInputError(
            f"{path}: not a readable persona Parquet file ({exc}). "
            "Fix: delete it and rerun rule personas."
        ) from exc
    return {k.decode()[6:]: v.decode() for k, v in raw.items() if k.startswith(b"rlver.")}


def read_personas(path: str | os.PathLike[str]) -> list[Persona]:
    """Read and validate a persona set."""
    path = Path(path)
    if not path.exists():
        raise RlverInputError(f"{path}: persona file not found. Fix: run rule personas.")
    meta = read_persona_meta(path)
    if meta.get("persona_schema_version") != PERSONA_SCHEMA_VERSION:
        raise RlverInputError(
            f"{path}: persona schema version {meta.get('persona_schema_version')!r}, "
            f"expected {PERSONA_SCHEMA_VERSION} (field persona_schema_version). "
            "Fix: delete it and rerun rule personas."
        )
    try:
        rows = pq.read_table(path).to_pylist()
    except Exception as exc:
        raise RlverInputError(
            f"{path}: cannot read persona rows ({exc}). Fix: delete it and rerun rule personas."
        ) from exc
    out = []
    for i, row in enumerate(rows):
        missing = [k for k in PERSONA_FIELDS if k not in row]
        if missing:
            raise RlverInputError(
                f"{path}: row {i} lacks field(s) {missing}. Fix: rerun rule personas."
            )
        for k in ("traits", "details", "keywords"):
            row[k] = tuple(row[k] or ())
        out.append(Persona(**row))
    if not out:
        raise RlverInputError(f"{path}: no personas. Fix: rerun rule personas.")
    return out


# ---------------------------------------------------------------------------------------
# The seeded English generator.
#
# A persona is a situation template (the story) filled with a sampled cast (names, city,
# occupation), a need and a character type cycled by index (so any 24 consecutive
# personas cover all 8 x 3 combinations), and type-specific traits, voice and opening.
# Each persona draws from its own RNG seeded by (seed, index), so generate(n) is a prefix
# of generate(n + k) and a redraw (to avoid a duplicate) never shifts later personas.
# ---------------------------------------------------------------------------------------

FEMALE_NAMES: tuple[str, ...] = (
    "Maya", "Priya", "Hannah", "Sofia", "Aisha", "Chloe", "Elena", "Grace", "Ingrid", "Julia",
    "Keiko", "Leah", "Mei", "Nadia", "Olivia", "Paula", "Rosa", "Sara", "Tara", "Uma",
    "Vera", "Wendy", "Yasmin", "Zoe", "Amara", "Bianca", "Carmen", "Daniela", "Esther",
    "Fatima", "Gemma", "Helen", "Irene", "Joanna", "Lucia", "Marta", "Noor", "Renee",
    "Siobhan", "Thandi",
)
MALE_NAMES: tuple[str, ...] = (
    "Daniel", "Omar", "Lucas", "Ethan", "Ravi", "Marcus", "Tomas", "Hiroshi", "Kwame",
    "Liam", "Mateo", "Noah", "Oscar", "Pavel", "Rafael", "Samuel", "Tariq", "Victor",
    "Wei", "Yusuf", "Andre", "Ben", "Carlos", "Dmitri", "Elias", "Felix", "Gabriel", "Hugo",
    "Isaac", "Jonah", "Kofi", "Leon", "Malik", "Nikhil", "Patrick", "Reza", "Stefan",
    "Theo", "Wesley", "Aaron",
)
NEUTRAL_NAMES: tuple[str, ...] = (
    "Alex", "Jordan", "Robin", "Sam", "Kai", "Riley", "Quinn", "Avery", "Jamie", "Morgan",
    "Sasha", "Rowan", "Emery", "Charlie", "Ari", "Remy",
)
LAST_NAMES: tuple[str, ...] = (
    "Okafor", "Nguyen", "Garcia", "Kowalski", "Patel", "Schmidt", "O'Brien", "Haddad",
    "Tanaka", "Silva", "Johansson", "Murphy", "Rossi", "Kim", "Mensah", "Novak", "Dubois",
    "Lindqvist", "Moreno", "Chen", "Ibrahim", "Fischer", "Walsh", "Kaur", "Petrov", "Santos",
    "Brennan", "Yilmaz", "Andersen", "Costa", "Mahlangu", "Reyes", "Sato", "Whitfield",
    "Abara", "Horvat", "Larsen", "Delgado", "Farrow", "Bergman", "Osei", "Marsh",
)
CITIES: tuple[str, ...] = (
    "Leeds", "Denver", "Porto", "Austin", "Glasgow", "Toronto", "Melbourne", "Dublin",
    "Portland", "Manchester", "Oakland", "Bristol", "Calgary", "Auckland", "Phoenix", "Lyon",
    "Seattle", "Boston", "Cardiff", "Chicago", "Atlanta", "Vancouver", "Adelaide", "Pittsburgh",
)
WHENS: tuple[str, ...] = (
    "last Tuesday", "two weeks ago", "on Saturday", "a month ago", "over the holidays",
    "last weekend", "three days ago", "on Friday night",
)
YEARS: tuple[str, ...] = ("two", "three", "four", "five", "six", "eight", "ten", "twelve")
GENDERS: tuple[tuple[str, int], ...] = (("woman", 47), ("man", 47), ("non-binary", 6))
_PRONOUNS = {"woman": ("her", "her"), "man": ("his", "him"), "non-binary": ("their", "them")}

#: (title, workplace, min age, max age, kind); kind is work, student or retired.
OCCUPATIONS: tuple[tuple[str, str, int, int, str], ...] = (
    ("nurse", "hospital", 22, 66, "work"),
    ("primary school teacher", "school", 23, 66, "work"),
    ("software developer", "startup", 21, 60, "work"),
    ("accountant", "firm", 23, 66, "work"),
    ("line cook", "restaurant", 18, 55, "work"),
    ("pharmacist", "pharmacy", 25, 66, "work"),
    ("warehouse supervisor", "warehouse", 24, 64, "work"),
    ("bank teller", "bank", 19, 60, "work"),
    ("graphic designer", "studio", 21, 60, "work"),
    ("journalist", "newspaper", 22, 66, "work"),
    ("librarian", "library", 24, 68, "work"),
    ("mechanic", "garage", 19, 66, "work"),
    ("hotel receptionist", "hotel", 18, 55, "work"),
    ("lab technician", "lab", 21, 62, "work"),
    ("car salesperson", "dealership", 21, 64, "work"),
    ("paralegal", "firm", 22, 60, "work"),
    ("social worker", "agency", 23, 66, "work"),
    ("physiotherapist", "clinic", 24, 64, "work"),
    ("barista", "cafe", 18, 40, "work"),
    ("hairdresser", "salon", 18, 64, "work"),
    ("bus driver", "depot", 23, 66, "work"),
    ("marketing manager", "agency", 26, 62, "work"),
    ("civil engineer", "firm", 23, 66, "work"),
    ("dental hygienist", "clinic", 21, 62, "work"),
    ("factory technician", "factory", 19, 64, "work"),
    ("retail store manager", "store", 24, 64, "work"),
    ("customer support agent", "helpdesk", 18, 60, "work"),
    ("fitness trainer", "gym", 19, 55, "work"),
    ("flight attendant", "airline", 21, 58, "work"),
    ("electrician", "contractor", 20, 66, "work"),
    ("data analyst", "insurer", 22, 62, "work"),
    ("veterinary nurse", "clinic", 20, 62, "work"),
    ("university student", "university", 18, 24, "student"),
    ("graduate student", "university", 22, 34, "student"),
    ("nursing student", "college", 18, 32, "student"),
    ("law student", "university", 21, 30, "student"),
    ("apprentice carpenter", "college", 18, 26, "student"),
    ("retired teacher", "school", 60, 75, "retired"),
    ("retired nurse", "hospital", 60, 75, "retired"),
    ("retired accountant", "firm", 60, 75, "retired"),
    ("retired bus driver", "depot", 60, 75, "retired"),
    ("retired postal worker", "depot", 60, 75, "retired"),
)

#: Traits that fit each character type (27 in all).
TRAITS: dict[str, tuple[str, ...]] = {
    "negative": (
        "irritable", "cynical", "blunt", "resentful", "impatient", "defensive", "stubborn",
        "sarcastic", "critical",
    ),
    "passive": (
        "shy", "indecisive", "self-doubting", "people-pleasing", "soft-spoken", "anxious",
        "apologetic", "conflict-averse", "easily overwhelmed",
    ),
    "avoidant": (
        "guarded", "aloof", "deflecting", "private", "evasive", "emotionally reserved",
        "dismissive", "fiercely self-reliant", "noncommittal",
    ),
}
SPEAKING_STYLES: dict[str, tuple[str, ...]] = {
    "negative": (
        "short, sharp sentences; complains openly and turns sarcastic when misunderstood",
        "vents in bursts, exaggerates, and pushes back hard on anything that sounds preachy",
        "irritated and blunt; interrupts with 'whatever' and expects to be let down",
    ),
    "passive": (
        "hesitant and apologetic; trails off with '...' and waits to be asked before saying more",
        "soft and uncertain; hedges everything with 'I guess' and 'maybe it's just me'",
        "quiet and polite; downplays problems and needs gentle questions to open up",
    ),
    "avoidant": (
        "vague and deflecting; changes the subject or jokes when things get personal",
        "keeps answers short and says 'it's fine' until trust is earned",
        "detached and matter-of-fact; talks about events, rarely about feelings",
    ),
}
OPENING_FRAMES: dict[str, tuple[str, ...]] = {
    "negative": (
        "Ugh. {Hint}, and honestly I'm sick of it.",
        "I don't even know why I'm bothering, but {hint}.",
        "Great week. {Hint}. And of course nobody gets it.",
        "Look, {hint}, and everyone acts like it's no big deal.",
    ),
    "passive": (
        "Um, hi... sorry, I'm not sure this is worth your time, but {hint}.",
        "I don't really know how to start. I guess... {hint}?",
        "Is it okay if I talk about something? It's just that {hint}.",
        "Sorry, this is probably silly, but {hint} and I can't stop thinking about it.",
    ),
    "avoidant": (
        "Oh, nothing much. {Hint}, but it's fine. Whatever.",
        "It's not a big deal, really. {Hint}. Anyway, how are you?",
        "I'd rather not get into it too much. Let's just say {hint}.",
        "Eh, {hint}. I'm handling it. Not sure why I even brought it up.",
    ),
}
#: The hidden need in the persona's words; {topic}, {other} and {deed} come from the story.
NEED_TEXTS: dict[str, tuple[str, ...]] = {
    "practical_advice": (
        "What I really want is concrete advice on what to do next about {topic}, "
        "something I can actually try this week.",
        "I want realistic, practical steps for dealing with {topic}, not pep talks.",
    ),
    "understand_others": (
        "I want to understand why {other} acted the way they did; it makes no sense to me "
        "and I keep replaying it.",
        "What I need is help figuring out what was going on in {other}'s head.",
    ),
    "be_affirmed": (
        "I'm sure I did nothing wrong in all this, and I want you to agree that none of it "
        "was my fault.",
        "I want someone to tell me plainly that I handled all of this the right way.",
    ),
    "guided_reflection": (
        "Deep down I want help looking at my own part in {topic}, so I can learn from it "
        "and grow.",
        "I want to be asked the right questions so I can see what this says about me.",
    ),
    "balanced_analysis": (
        "I want someone to look at {topic} from both sides and say honestly what went "
        "wrong on each side.",
        "I want a fair, two-sided look at what happened with {other}, not just my side.",
    ),
    "deep_empathy": (
        "I want someone to really feel what {topic} has been like for me, not just tell me "
        "it will be okay.",
        "I need my feelings about this understood deeply, not brushed off with comfort.",
    ),
    "be_heard": (
        "I mostly need to vent about {topic} and have someone listen without jumping in "
        "with fixes.",
        "I just want to let it all out and feel that someone is actually listening.",
    ),
    "specific_praise": (
        "I want someone to notice what I did right, like {deed}, and say so sincerely.",
        "I want real, specific recognition for {deed}, not a generic 'good job'.",
    ),
}


class _Situation(NamedTuple):
    """One story template. Placeholders: {name} {first} {pos} {Pos} {obj} {other}
    {other2} {fname} {mname} {last2} {city} {job} {workplace} {when} {years} and the
    keys of `fill`."""

    domain: str
    topic: str
    backstory: str
    #: Five first-person details, from the surface to the deepest.
    details: tuple[str, ...]
    #: Keyword templates; each is lowercased and split into words.
    keywords: tuple[str, ...]
    #: Lowercase clauses for the opening line; they hint, never name the need.
    hints: tuple[str, ...]
    #: What the persona did, for the specific_praise need.
    deed: str
    ages: tuple[int, int] = (18, 75)
    kinds: tuple[str, ...] = ("work", "student", "retired")
    fill: tuple[tuple[str, tuple[str, ...]], ...] = ()


SITUATIONS: tuple[_Situation, ...] = (
    _Situation(
        domain="work",
        topic="being passed over for the team lead job",
        backstory=(
            "{name} has worked as {a_job} at {a_workplace} in {city} for {years} years. When "
            "the team lead position opened, {first} spent weekends writing a plan for the team, "
            "and {pos} manager {other} called it the strongest proposal they had seen. Last "
            "month the role went to {other2}, who joined less than a year ago. {first} found "
            "out from a group email, not from {other}."
        ),
        details=(
            "I spent my weekends this spring writing a plan for how the team could work better.",
            "{other} told me in a one-on-one that my plan was the strongest they had seen.",
            "I found out {other2} got the promotion from a group email, like everyone else.",
            "{other2} still comes to my desk every day to ask how things work.",
            "I keep wondering if {other} ever meant any of it, or if I was just useful.",
        ),
        keywords=("{other}", "{other2}", "promotion", "manager", "email", "plan", "team"),
        hints=(
            "work has been a real slap in the face lately",
            "there was this whole thing with a promotion at my job",
        ),
        deed="writing a full plan for the team on my own time",
        ages=(25, 64),
        kinds=("work",),
    ),
    _Situation(
        domain="work",
        topic="a coworker taking credit for {pos} work",
        backstory=(
            "{name} is {a_job} at {a_workplace} in {city}. For two months {first} and coworker "
            "{other} worked on {project}, with {first} doing most of the analysis late at night. "
            "At the quarterly review {other} presented it alone and thanked no one. Their boss "
            "{other2} praised {other} in front of the whole department."
        ),
        details=(
            "I did most of the work on {project}, usually after everyone had gone home.",
            "At the review {other} presented the whole thing as if it were theirs.",
            "{other2} praised {other} in front of everyone and never looked my way.",
            "When I brought it up, {other} said we were a team and I was being petty.",
            "I have started keeping copies of everything I send, and I hate that I do.",
        ),
        keywords=("{other}", "{other2}", "review", "credit", "project", "presentation", "{pkey}"),
        hints=(
            "someone at work just walked off with something I built",
            "the quarterly review did not go the way it should have",
        ),
        deed="doing the analysis for {project} late into the night",
        ages=(21, 64),
        kinds=("work",),
        fill=(
            ("project", ("the new booking system", "the winter budget", "the safety audit",
                         "a client onboarding guide", "the supplier contract")),
        ),
    ),
    _Situation(
        domain="work",
        topic="being laid off after {years} years",
        backstory=(
            "After {years} years as {a_job} at {a_workplace} in {city}, {name} was laid off in "
            "a restructuring announced on a ten-minute video call. Only weeks earlier {pos} "
            "manager {other} had promised the team was safe. {first} has sent out dozens of "
            "applications since and heard back from two. {Pos} friend {other2} keeps saying it "
            "is a blessing in disguise."
        ),
        details=(
            "The layoff came on a ten-minute video call with the camera off.",
            "A few weeks before, {other} looked me in the eye and said our team was safe.",
            "I have sent out dozens of applications and heard back from two.",
            "{other2} keeps calling it a blessing in disguise, and I want to scream.",
            "I haven't told my family how close I am to missing rent.",
        ),
        keywords=("{other}", "{other2}", "layoff", "laid", "restructuring", "applications",
                  "rent", "call"),
        hints=(
            "I'm suddenly not working anymore",
            "my job kind of disappeared out from under me",
        ),
        deed="training two new hires in my last week even though I had just been let go",
        ages=(28, 64),
        kinds=("work",),
    ),
    _Situation(
        domain="work",
        topic="a manager who yelled at {obj} in front of customers",
        backstory=(
            "{name} works as a {job} at a busy {workplace} in {city}. {when_cap}, {pos} "
            "manager {other} shouted at {obj} in front of a room full of customers over a "
            "mistake {other2} had made. {first} said nothing at the time, finished the shift, "
            "and cried in the car afterwards."
        ),
        details=(
            "{other} shouted at me in front of a full room {when}.",
            "The mistake was actually {other2}'s, and {other2} knows it.",
            "I finished the shift and then sat crying in my car for half an hour.",
            "A customer came up afterwards and quietly said they were sorry.",
            "I keep rehearsing what I should have said back.",
        ),
        keywords=("{other}", "{other2}", "manager", "customers", "shift", "mistake", "shouted"),
        hints=(
            "I had a really humiliating day at work",
            "my manager made a scene and I'm still shaking about it",
        ),
        deed="staying calm and finishing the shift for the customers",
        ages=(18, 64),
        kinds=("work",),
    ),
    _Situation(
        domain="work",
        topic="burning out under an impossible workload",
        backstory=(
            "Since {pos} colleague {other} left the {workplace} in {city}, {name} has been doing "
            "two jobs for the pay of one. {Pos} boss {other2} keeps adding projects and calls it "
            "a growth opportunity. {first} has worked every weekend for two months and "
            "fell asleep at the wheel in a car park {when}."
        ),
        details=(
            "Since {other} left, I've been doing two people's jobs.",
            "{other2} calls every extra project a growth opportunity.",
            "I haven't had a full weekend off in two months.",
            "{when} I fell asleep in my car in the car park before my shift.",
            "I'm scared that if I say no, I'll be the next one out.",
        ),
        keywords=("{other}", "{other2}", "workload", "weekends", "projects", "boss", "asleep"),
        hints=(
            "work has basically swallowed my whole life",
            "I'm so tired I don't even know what day it is",
        ),
        deed="keeping every project on schedule after {other} left",
        ages=(22, 64),
        kinds=("work",),
    ),
    _Situation(
        domain="family",
        topic="{pos} parents dismissing {pos} plan to become a {dream}",
        backstory=(
            "{name} has decided to train as a {dream}, and {pos} parents are against it. At "
            "Sunday lunch in {city}, {pos} father called it a hobby, not a career, in front of "
            "{pos} aunt {fname} and cousin {other}. {first} has already paid the deposit for a "
            "course that starts in the autumn."
        ),
        details=(
            "I've wanted to be a {dream} since I was a teenager.",
            "At Sunday lunch my father called it a hobby, right in front of {fname} and {other}.",
            "I already paid the deposit for the course that starts in the autumn.",
            "{other} texted me afterwards to say they think I should go for it.",
            "Part of me is terrified my father is right.",
        ),
        keywords=("{other}", "{fname}", "father", "parents", "lunch", "course", "deposit",
                  "{dream}"),
        hints=(
            "family lunch turned into a whole thing about my future",
            "my parents and I are not seeing eye to eye at all",
        ),
        deed="saving up and paying the course deposit myself",
        ages=(19, 45),
        fill=(("dream", ("pastry chef", "tattoo artist", "photographer", "yoga teacher",
                         "sound engineer", "florist")),),
    ),
    _Situation(
        domain="family",
        topic="caring for {pos} mother while {pos} sibling stays away",
        backstory=(
            "{name}'s mother was diagnosed with early dementia last year. {first} drives to her "
            "flat in {city} every evening, while {pos} sibling {other} sends money "
            "and advice from abroad. {when_cap} {other} criticised how {first} manages the "
            "medication. The neighbour, {fname}, is the only one who ever asks how {first} is."
        ),
        details=(
            "I drive to Mum's flat every evening, even on the days I can barely stand.",
            "{other} sends money and long messages telling me what I'm doing wrong.",
            "{when} {other} criticised how I handle her medication.",
            "{fname} from next door is the only one who asks how I am.",
            "Sometimes Mum calls me by {other}'s name, and it breaks me every time.",
        ),
        keywords=("{other}", "{fname}", "mother", "mum", "dementia", "medication", "flat",
                  "sibling"),
        hints=(
            "things with my mum and my sibling are really heavy right now",
            "I'm the one holding everything together at home and it shows",
        ),
        deed="visiting Mum every single evening and sorting her medication",
        ages=(32, 70),
    ),
    _Situation(
        domain="family",
        topic="{pos} grown child drifting away",
        backstory=(
            "{name}'s youngest, {other}, moved to {city} for work {years} years ago. The weekly "
            "calls became monthly, then stopped. {other} forgot {first}'s birthday this year and "
            "posted photos from a weekend with their partner's family instead. {first}'s friend "
            "{other2} says young people are just busy."
        ),
        details=(
            "{other} used to call every Sunday after moving to {city}.",
            "Now I hear more about their life from social media than from them.",
            "This year they forgot my birthday and posted photos with their partner's family.",
            "{other2} says young people are just busy, but it doesn't feel like busy.",
            "I wonder what I did when they were growing up that made them pull away.",
        ),
        keywords=("{other}", "{other2}", "{city}", "birthday", "calls", "photos", "sunday"),
        hints=(
            "my youngest and I barely talk anymore",
            "I've been feeling a bit forgotten by my family",
        ),
        deed="sending {other} a card and a call every month regardless",
        ages=(48, 75),
    ),
    _Situation(
        domain="family",
        topic="{pos} mother-in-law criticising how {first} raises the kids",
        backstory=(
            "Every visit from {pos} mother-in-law, {fname}, ends in an argument about "
            "{first}'s parenting. {when_cap} in {city}, {fname} told {first}'s partner {other} "
            "that the children are spoiled, loudly enough for the kids to hear. {other} said "
            "nothing, and later told {first} to let it go."
        ),
        details=(
            "Every visit from {fname} ends with a comment about how I raise the kids.",
            "{when} she said the children are spoiled, loud enough for them to hear.",
            "My partner {other} just stood there and said nothing.",
            "Later {other} told me to let it go because she means well.",
            "My eldest asked me that night if they were a bad kid.",
        ),
        keywords=("{fname}", "{other}", "mother-in-law", "children", "kids", "parenting",
                  "spoiled", "visit"),
        hints=(
            "the in-laws were over again and it did not go well",
            "there's some tension at home about how I raise my kids",
        ),
        deed="staying calm in front of the kids and explaining things to them later",
        ages=(26, 50),
    ),
    _Situation(
        domain="money",
        topic="a fight over {pos} grandmother's cottage",
        backstory=(
            "{name}'s grandmother left her cottage near {city} to {first} and {pos} cousin "
            "{other}, half each. {first} spent years helping her keep it up, while {other} "
            "visited twice. Now {other} wants to sell immediately, and {pos} uncle {mname} is "
            "taking {other}'s side."
        ),
        details=(
            "I spent nearly every summer fixing the roof and garden at Gran's cottage.",
            "{other} visited her twice in ten years.",
            "Now {other} wants to sell the cottage as fast as possible.",
            "Uncle {mname} told the whole family I'm being sentimental and greedy.",
            "I still have Gran's handwritten recipe book from the kitchen drawer.",
        ),
        keywords=("{other}", "{mname}", "grandmother", "gran", "cottage", "sell", "inheritance",
                  "roof"),
        hints=(
            "the family is fighting over what my gran left us",
            "there's an inheritance thing going on and it's gotten ugly",
        ),
        deed="keeping Gran's cottage repaired every summer for years",
        ages=(25, 70),
    ),
    _Situation(
        domain="friends",
        topic="{pos} best friend skipping {pos} {event}",
        backstory=(
            "{name} and {other} have been best friends for {years} years. {other} promised to "
            "give a speech at {first}'s {event} in {city}, then cancelled by text an hour "
            "before, saying something came up. The next day {first} saw photos of {other} at a "
            "concert with {other2}."
        ),
        details=(
            "{other} and I have been best friends for {years} years.",
            "They promised to give a speech at my {event}.",
            "An hour before, I got a text saying something came up.",
            "The next day I saw photos of {other} at a concert with {other2}.",
            "I've started to think I care about this friendship more than {other} does.",
        ),
        keywords=("{other}", "{other2}", "{event}", "speech", "text", "concert", "photos",
                  "friend"),
        hints=(
            "my best friend let me down on a really big day",
            "my {event} was supposed to be great and one thing ruined it",
        ),
        deed="planning the whole {event} and still being polite to {other} afterwards",
        fill=(("event", ("wedding", "fortieth birthday", "graduation party", "art show opening",
                         "housewarming")),),
    ),
    _Situation(
        domain="friends",
        topic="being left out of a friends' trip",
        backstory=(
            "{name}'s friend group of {years} years, including {other} and {other2}, went on a "
            "weekend trip to {trip} without inviting {obj}. {first} found out from photos online. "
            "When {first} asked, {other} said they assumed {first} would be too busy."
        ),
        details=(
            "I found out about the trip to {trip} from photos online.",
            "{other} and {other2} were in every picture, laughing.",
            "When I asked, {other} said they thought I'd be too busy.",
            "I've organised most of our get-togethers for years.",
            "I've started to wonder if I was ever really part of the group.",
        ),
        keywords=("{other}", "{other2}", "{trip}", "trip", "photos", "group", "invited"),
        hints=(
            "I found out my friends did something without me",
            "there's some weirdness with my friend group lately",
        ),
        deed="organising most of the group's get-togethers for years",
        ages=(18, 70),
        fill=(("trip", ("Lisbon", "the lake house", "Barcelona", "the coast", "Edinburgh",
                        "the mountains")),),
    ),
    _Situation(
        domain="money",
        topic="a friend who won't repay a loan",
        backstory=(
            "Last year {name} lent {pos} friend {other} {amount} to cover a deposit on a flat in "
            "{city}. {other} promised to repay it within three months. It has been a year, and "
            "{other} has since posted holiday photos from Greece. When {first} mentioned it, "
            "{other} called {obj} petty in front of {other2}."
        ),
        details=(
            "I lent {other} {amount} for a flat deposit last year.",
            "They promised to pay me back within three months.",
            "Since then they've posted holiday photos from Greece.",
            "When I brought it up, they called me petty in front of {other2}.",
            "I had to dip into my own savings to cover my car repair.",
        ),
        keywords=("{other}", "{other2}", "loan", "lent", "deposit", "money", "greece", "savings"),
        hints=(
            "money and friendship are not mixing well for me right now",
            "I helped someone out and now it's biting me",
        ),
        deed="lending {other} the money when nobody else would",
        ages=(20, 75),
        fill=(("amount", ("two thousand dollars", "fifteen hundred pounds", "three thousand euros",
                          "eight hundred dollars")),),
    ),
    _Situation(
        domain="romance",
        topic="{pos} partner wanting to move to {city}",
        backstory=(
            "{name}'s partner, {other}, has been offered a dream job in {city} and wants them "
            "both to move within two months. {first} would have to leave {pos} own job as a "
            "{job}, {pos} friends, and {pos} ageing dog. {other} already told their own family "
            "the good news before discussing it with {first}."
        ),
        details=(
            "{other} got offered a job in {city} and wants us to move in two months.",
            "They told their family before they even talked to me.",
            "My whole life is here: my work, my friends, my old dog.",
            "When I hesitated, {other} asked if I even want a future with them.",
            "I'm scared that saying no means losing {other}.",
        ),
        keywords=("{other}", "{city}", "move", "job", "partner", "dog", "future", "family"),
        hints=(
            "my partner and I are at a bit of a crossroads",
            "there's a big decision hanging over my relationship",
        ),
        deed="supporting {other} through the whole interview process",
        ages=(22, 60),
        kinds=("work",),
    ),
    _Situation(
        domain="romance",
        topic="a breakup after {years} years",
        backstory=(
            "{name} and {other} were together for {years} years and shared a flat in {city}. "
            "{other} ended it over dinner, saying they had grown apart. Three weeks later "
            "{first} saw {other} holding hands with {other2} at the farmers' market. {first} "
            "has since moved back in with {pos} parents."
        ),
        details=(
            "{other} ended it over dinner, saying we had grown apart.",
            "We had been together {years} years and shared a flat in {city}.",
            "Three weeks later I saw them holding hands with {other2} at the market.",
            "I moved back in with my parents and sleep in my childhood room.",
            "I keep going over the last year to find where it went wrong.",
        ),
        keywords=("{other}", "{other2}", "{city}", "breakup", "flat", "dinner", "market",
                  "relationship"),
        hints=(
            "my relationship ended and I'm not doing great",
            "I just went through a breakup and it's been weird",
        ),
        deed="moving out quietly and keeping things civil with {other}",
        ages=(19, 70),
    ),
    _Situation(
        domain="romance",
        topic="feeling neglected by {pos} partner",
        backstory=(
            "{name}'s partner {other} spends almost every weekend {hobby}. {when_cap} {other} "
            "forgot the dinner reservation {first} had made for their anniversary in {city}. "
            "{first} ate alone at the restaurant and told the waiter, {other2}, that {pos} "
            "partner was stuck at work."
        ),
        details=(
            "{other} spends almost every weekend {hobby}.",
            "I booked a table for our anniversary weeks in advance.",
            "{when} they forgot, and I ate alone at the restaurant.",
            "I told the waiter my partner was stuck at work so I wouldn't look pathetic.",
            "I don't remember the last time {other} asked how my day was.",
        ),
        keywords=("{other}", "anniversary", "dinner", "restaurant", "weekend", "partner",
                  "reservation", "{hkey}"),
        hints=(
            "I spent my anniversary in a way I didn't expect",
            "my partner and I feel like roommates lately",
        ),
        deed="planning our anniversary dinner weeks in advance",
        ages=(20, 75),
        fill=(("hobby", ("gaming online", "at the climbing gym", "watching football",
                         "fishing at the reservoir", "at band rehearsals")),),
    ),
    _Situation(
        domain="health",
        topic="{condition} that nobody takes seriously",
        backstory=(
            "{name} has lived with {condition} for {years} years. {Pos} boss, {other}, hinted "
            "that {first} uses it as an excuse, and a doctor in {city} suggested it was stress. "
            "{when_cap}, {first} had to leave {pos} niece's school play halfway through, and "
            "{pos} sister {fname} rolled her eyes."
        ),
        details=(
            "I've been living with {condition} for {years} years.",
            "{other} hinted at work that I use it as an excuse.",
            "A doctor told me it was probably just stress.",
            "{when} I had to leave my niece's school play and {fname} rolled her eyes.",
            "I've started wondering if I'm imagining how bad it is.",
        ),
        keywords=("{other}", "{fname}", "{condition}", "doctor", "pain", "play", "excuse"),
        hints=(
            "my health stuff is acting up and people are being weird about it",
            "I'm tired of having to prove that I'm unwell",
        ),
        deed="still showing up to work and to my niece's play despite the pain",
        ages=(20, 70),
        kinds=("work",),
        fill=(("condition", ("migraines", "chronic back pain", "fibromyalgia", "long covid",
                             "endometriosis")),),
    ),
    _Situation(
        domain="health",
        topic="waiting for biopsy results",
        backstory=(
            "After a routine check-up in {city}, {name}'s doctor, Dr {last2}, found a lump and "
            "ordered a biopsy. The results will take two weeks. {first} has not told {pos} "
            "partner {other}, and spends nights reading forums. {Pos} friend {other2} noticed "
            "something was off at lunch {when}."
        ),
        details=(
            "Dr {last2} found a lump at what was supposed to be a routine check-up.",
            "The biopsy results take two weeks, and it's been nine days.",
            "I haven't told {other}; I don't want to scare them for nothing.",
            "I stay up reading forums until three in the morning.",
            "{other2} asked me at lunch {when} if something was wrong and I lied.",
        ),
        keywords=("{other}", "{other2}", "{last2}", "biopsy", "lump", "results", "doctor",
                  "forums"),
        hints=(
            "I'm waiting on some news and it's eating me up",
            "I had a doctor's appointment that's been on my mind",
        ),
        deed="going to the check-up at all, and keeping things steady for {other}",
        ages=(28, 75),
    ),
    _Situation(
        domain="health",
        topic="an injury that ended {pos} marathon plans",
        backstory=(
            "{name} trained for eight months for the {city} marathon with {pos} running club. "
            "Three weeks before the race, {first} tore a knee ligament on a training run. {Pos} "
            "running partner {other} ran the race anyway and posted the medal. The physio, "
            "{other2}, says recovery will take at least six months."
        ),
        details=(
            "I trained for eight months for the {city} marathon.",
            "Three weeks before the race I tore a ligament in my knee.",
            "{other} ran it anyway and posted the medal everywhere.",
            "{other2}, my physio, says at least six months before I can run again.",
            "Running was the one thing that kept my head clear.",
        ),
        keywords=("{other}", "{other2}", "{city}", "marathon", "knee", "ligament", "running",
                  "physio"),
        hints=(
            "I got hurt and it wrecked a plan I'd worked really hard for",
            "I've had to stop doing the one thing that kept me sane",
        ),
        deed="training for eight months before work every morning",
        ages=(18, 62),
    ),
    _Situation(
        domain="money",
        topic="credit card debt hidden from {pos} partner",
        backstory=(
            "Over two years {name} ran up {debt} on credit cards, mostly covering bills after "
            "{pos} hours as {a_job} were cut. {Pos} partner {other} does not know. {when_cap} a "
            "letter from a collection agency arrived, and {first} hid it in a drawer. {Pos} "
            "brother-in-law {mname} works at a bank and has offered to look at the numbers."
        ),
        details=(
            "My hours got cut and I started covering bills with credit cards.",
            "It's grown to {debt}, and {other} has no idea.",
            "{when} a letter from a collection agency came and I hid it in a drawer.",
            "{mname} works at a bank and offered to look at the numbers.",
            "I'm more scared of {other}'s face than of the debt itself.",
        ),
        keywords=("{other}", "{mname}", "debt", "credit", "cards", "letter", "bills", "bank"),
        hints=(
            "money has gotten away from me and I'm hiding it",
            "there's something about our finances I haven't told my partner",
        ),
        deed="keeping every bill paid on time while my hours were cut",
        ages=(24, 70),
        kinds=("work",),
        fill=(("debt", ("eleven thousand dollars", "nine thousand pounds",
                        "fourteen thousand dollars")),),
    ),
    _Situation(
        domain="home",
        topic="a landlord forcing {obj} out of {pos} flat",
        backstory=(
            "{name} has rented the same flat in {city} for {years} years. The new landlord, "
            "{other}, raised the rent by forty percent and hinted that {first} should leave "
            "so the flat can be renovated. {first} has always paid on time and fixed the boiler "
            "at {pos} own expense. {Pos} neighbour {other2} got the same letter."
        ),
        details=(
            "I've rented the same flat for {years} years and never paid late once.",
            "The new landlord, {other}, raised the rent by forty percent.",
            "{other} hinted I should leave so they can renovate.",
            "I even paid for the boiler repair myself last winter.",
            "{other2} next door got the same letter and is already packing.",
        ),
        keywords=("{other}", "{other2}", "landlord", "rent", "flat", "boiler", "letter",
                  "renovate"),
        hints=(
            "I might be losing my home",
            "my landlord sent me a letter and I haven't slept well since",
        ),
        deed="paying rent on time for {years} years and fixing the boiler myself",
        ages=(19, 75),
    ),
    _Situation(
        domain="study",
        topic="failing the {exam}",
        backstory=(
            "{name}, {a_job} in {city}, failed the {exam} by four points after a year of "
            "preparation. {Pos} study partner {other} passed comfortably. {first}'s parents had "
            "already told relatives {first} would pass, and {pos} tutor, {other2}, suggested "
            "trying again next year."
        ),
        details=(
            "I studied for the {exam} for a whole year.",
            "I failed by four points.",
            "{other}, my study partner, passed easily.",
            "My parents had already told the relatives I'd pass.",
            "{other2} says try again next year, but I don't know if I have it in me.",
        ),
        keywords=("{other}", "{other2}", "exam", "failed", "points", "parents", "study",
                  "{ekey}"),
        hints=(
            "I got some results back and they weren't what I hoped",
            "a year of studying kind of blew up in my face",
        ),
        deed="studying every evening for a year alongside my part-time job",
        ages=(18, 34),
        kinds=("student",),
    ),
    _Situation(
        domain="study",
        topic="a group project where {first} did everything",
        backstory=(
            "{name} is {a_job} in {city}. In a group project worth half the grade, teammates "
            "{other} and {other2} missed every meeting, so {first} wrote most of the report "
            "alone. {when_cap} the professor, Dr {last2}, gave everyone the same mark and "
            "praised {other}'s slides."
        ),
        details=(
            "The project was worth half of our grade.",
            "{other} and {other2} missed every single meeting.",
            "I wrote most of the report at night, alone.",
            "Dr {last2} gave us all the same mark and praised {other}'s slides.",
            "When I complained, I was told that teamwork means compromise.",
        ),
        keywords=("{other}", "{other2}", "{last2}", "project", "report", "grade", "meetings",
                  "slides"),
        hints=(
            "a group project at school turned into a nightmare",
            "I'm kind of done with teamwork at university",
        ),
        deed="writing most of the project report on my own",
        ages=(18, 34),
        kinds=("student",),
    ),
    _Situation(
        domain="study",
        topic="wanting to drop {pos} degree",
        backstory=(
            "{name} is in the second year of a degree in {subject} in {city}, a choice {pos} "
            "parents pushed for and are paying for. {first} spends every free hour at a "
            "community radio station run by {other}, who offered {obj} a paid trainee spot. "
            "{Pos} roommate {other2} is the only one who knows."
        ),
        details=(
            "My parents picked {subject} for me and they're paying for it.",
            "I spend every free hour at the community radio station.",
            "{other} offered me a paid trainee spot there.",
            "{other2}, my roommate, is the only person who knows.",
            "I practise telling my parents in the shower and freeze every time.",
        ),
        keywords=("{other}", "{other2}", "{subject}", "degree", "radio", "parents", "trainee",
                  "station"),
        hints=(
            "I'm not sure I'm studying the right thing",
            "university isn't really going how my family thinks",
        ),
        deed="teaching myself radio production in every spare hour",
        ages=(18, 28),
        kinds=("student",),
        fill=(("subject", ("accounting", "medicine", "law", "engineering", "economics")),),
    ),
    _Situation(
        domain="home",
        topic="a neighbour feud over {feud}",
        backstory=(
            "{name} has lived on the same street in {city} for {years} years. A new neighbour, "
            "{other}, complained to the council about {feud} and left an angry note on "
            "{first}'s car. {first} tried to talk it through over the fence, but {other} filmed "
            "the conversation. Another neighbour, {other2}, has stopped saying hello."
        ),
        details=(
            "{other} complained to the council about {feud}.",
            "They left an angry note on my car windscreen.",
            "When I tried to talk it through, {other} filmed me on their phone.",
            "{other2}, who I've known for years, has stopped saying hello.",
            "I used to love this street, and now I dread coming home.",
        ),
        keywords=("{other}", "{other2}", "neighbour", "council", "note", "street", "fence",
                  "{fkey}"),
        hints=(
            "there's drama on my street and I'm somehow in the middle of it",
            "I'm having a bit of a feud with a neighbour",
        ),
        deed="going over to talk calmly instead of escalating",
        ages=(25, 75),
        fill=(("feud", ("an old oak tree", "a barking dog", "the shared driveway",
                        "backyard chickens", "a garden shed")),),
    ),
    _Situation(
        domain="loss",
        topic="loneliness since retiring",
        backstory=(
            "{name} retired after decades as {a_trade} in {city}. At first the old colleagues, "
            "especially {other}, called often; now months pass without a word. {Pos} spouse "
            "{other2} is busy with the golf club. {when_cap} {first} went to the old "
            "{workplace} to drop off cakes and nobody had time to talk."
        ),
        details=(
            "For years I was the one everyone at the {workplace} came to.",
            "{other} used to call every week; now it's been months.",
            "{other2} is at the golf club most days.",
            "{when} I dropped off cakes at my old {workplace} and nobody had time to talk.",
            "Some days I don't say a word out loud until dinner.",
        ),
        keywords=("{other}", "{other2}", "retired", "retirement", "colleagues", "{workplace}",
                  "cakes", "golf"),
        hints=(
            "the days have gotten very long and very quiet",
            "retirement isn't quite what people promised",
        ),
        deed="baking for my old colleagues and keeping in touch",
        ages=(60, 75),
        kinds=("retired",),
    ),
    _Situation(
        domain="friends",
        topic="being lonely after moving to {city}",
        backstory=(
            "{name} moved to {city} eight months ago to start over as {a_job}. {first} has "
            "tried a book club, a running group and a pottery class, where {other} seemed to "
            "become a friend and then stopped replying to messages. {Pos} old friend {other2} "
            "back home is too busy to talk most weeks. {first} spent {pos} birthday alone {when}."
        ),
        details=(
            "I moved to {city} eight months ago to start fresh.",
            "I've tried a book club, a running group and a pottery class.",
            "{other} from pottery and I got coffee twice, then they stopped replying.",
            "{other2} from back home barely has time for a call anymore.",
            "I spent my birthday alone {when} and told everyone I was out celebrating.",
        ),
        keywords=("{other}", "{other2}", "{city}", "moved", "pottery", "club", "birthday",
                  "friends"),
        hints=(
            "the new city thing is harder than I thought",
            "I don't really know anyone here yet",
        ),
        deed="signing up for three groups on my own in a new city",
        ages=(18, 70),
        kinds=("work", "student"),
    ),
    _Situation(
        domain="loss",
        topic="grieving {pos} {pet}, {petname}",
        backstory=(
            "{name}'s {pet}, {petname}, died {when} at fourteen, after {first} nursed "
            "{petname} through a long illness. In {city}, {pos} friend {other} said "
            "it was just a pet and suggested getting another. {Pos} sister {fname} was the only "
            "one who came to help bury {petname} in the garden."
        ),
        details=(
            "{petname} was with me for fourteen years, through everything.",
            "I nursed {petname} through months of illness before the end.",
            "{other} said it was just a pet and I should get another.",
            "{fname} came over and helped me bury {petname} under the apple tree.",
            "I still put out two bowls some mornings without thinking.",
        ),
        keywords=("{petname}", "{other}", "{fname}", "{pet}", "garden", "illness", "grief",
                  "bury"),
        hints=(
            "I lost someone at home and people don't seem to get it",
            "the house feels very empty this week",
        ),
        deed="nursing {petname} through months of illness",
        fill=(("pet", ("dog", "cat")),
              ("petname", ("Biscuit", "Luna", "Pepper", "Milo", "Olive", "Juniper"))),
    ),
    _Situation(
        domain="community",
        topic="being pushed out of the community {project}",
        backstory=(
            "{name} founded the community {project} in {city} {years} years ago and ran it "
            "every Saturday. A new coordinator, {other}, took over the committee and changed "
            "the rules without asking. {when_cap} {other} told the volunteers that {first} was "
            "'difficult', and {pos} longtime friend {other2} did not defend {obj}."
        ),
        details=(
            "I started the {project} {years} years ago with a borrowed table.",
            "{other} joined the committee and changed everything without asking.",
            "{when} {other} told the volunteers I was difficult.",
            "{other2}, who I've known for years, didn't say a word.",
            "I don't know who I am on Saturdays without it.",
        ),
        keywords=("{other}", "{other2}", "committee", "volunteers", "saturday", "coordinator",
                  "{pkey}"),
        hints=(
            "something I built in my community got taken from me",
            "there's been politics at the volunteer thing I run",
        ),
        deed="founding the {project} and running it every Saturday for {years} years",
        ages=(25, 75),
        fill=(("project", ("food bank", "garden", "repair cafe", "youth football club",
                           "library")),),
    ),
)

_STOPWORDS = frozenset(
    "the a an and or of to in on at for my our their his her its is was be i me we us you "
    "it as by with from that this".split()
)
#: The exam a student of each kind fails in the study story.
_EXAMS = {
    "law student": "bar exam",
    "nursing student": "nursing licensing exam",
    "graduate student": "qualifying exam",
    "university student": "statistics final",
    "apprentice carpenter": "trade certification exam",
}
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


# ---------------------------------------------------------------------------------------
# Import of the original work's profiles (Chinese JSONL).
# ---------------------------------------------------------------------------------------

#: main_cha values of the original data.
RLVER_CHARACTER_TYPES: dict[str, str] = {
    "负面型": "negative",
    "被动型": "passive",
    "回避型": "avoidant",
}
#: The eight `task` strings of the original data (exact, stripped) and our need keys.
RLVER_TASKS: dict[str, str] = {
    "你想获得能真实帮助你解决当下困境的建议": "practical_advice",
    "你想分析事件中其他人物这么做的原因": "understand_others",
    "你认为自己在事件中没有任何责任和错误，你想要对方也认同你没有错": "be_affirmed",
    "你希望对方引导你针对事件进行自我反思，收获自我成长": "guided_reflection",
    "你希望对方辩证地分析事件中的问题": "balanced_analysis",
    "你希望对方深刻共情你的感受，而不是简单的安慰": "deep_empathy",
    "你希望对方用心倾听你的情绪宣泄": "be_heard",
    "你希望对方真诚地夸奖你在事件中的具体行为": "specific_praise",
}
RLVER_REQUIRED_FIELDS: tuple[str, ...] = ("id", "player", "scene", "main_cha", "cha_group", "task")

#: Surnames common enough, and rare enough inside ordinary words, to spot names by.
_ZH_SURNAMES = (
    "王李张刘陈杨黄赵吴徐马朱胡郭林罗郑梁谢宋唐韩冯邓曹彭肖董袁潘蒋蔡杜叶苏魏吕沈姚卢姜崔"
    "钟谭陆汪范廖贾韦白邹孟熊秦邱江尹薛闫侯黎贺毛郝龚邵戴莫孔汤欧柳"
)
#: Characters that end a would-be given name (function words: 李的, 张在...).
_ZH_NOT_GIVEN = frozenset(
    "的在对是感和中不可却也都就把被给让与跟说会要能想已还又很等们时后前里上下这那个些一了着过到从为"
    "而但并或及其所以如果因此开始"
)
#: Characters before a surname that make it part of a word (紧张, 主张, 明白...).
_ZH_WORD_BEFORE = frozenset("紧主扩夸慌明坦空表告")
#: 小X / 阿X bigrams that are words, not nicknames.
_ZH_NOT_NICKNAMES = frozenset(
    "小时 小心 小组 小学 小区 小事 小说 小孩 小的 小小 小型 小题 小店 小家 小姐 小伙 小朋 小姑 "
    "小声 小吃 小城 小镇 小猫 小狗 小屋 小径 小动 小物 小礼 小项 小气 小品 小测 小众 小机 小团 "
    "小女 阿姨".split()
)
#: People and story nouns a reply engaging with the story would name.
_ZH_STORY_NOUNS: tuple[str, ...] = (
    "父母", "母亲", "父亲", "妈妈", "爸爸", "男友", "女友", "男朋友", "女朋友", "丈夫", "妻子",
    "老公", "老婆", "孩子", "儿子", "女儿", "同事", "上司", "领导", "老板", "经理", "老师",
    "同学", "室友", "闺蜜", "邻居", "客户", "婆婆", "哥哥", "姐姐", "弟弟", "妹妹", "奶奶",
    "爷爷", "公司", "项目", "考试", "婚姻", "婚礼", "分手", "升职", "加班", "面试", "房租",
    "债务", "医院", "医生", "手术", "论文", "毕业", "聚会", "旅行", "宠物", "生日", "比赛",
)
#: Labels that end the story part of a scene (conflict, difficulties, reactions...).
_ZH_SECTION_ENDS = (
    "主要冲突", "冲突事件", "冲突角色", "冲突内在", "困难", "当前状态", "反应", "隐藏", "NPC"
)
_BULLET = re.compile(r"^(?:[-*•]|\d+[.、])\s*")
_LABEL = re.compile(r"^[^：:。，]{1,16}[：:]\s*")


def _sheet_field(player: str, label: str) -> str:
    m = re.search(rf"^\s*[*\-]?\s*\**{label}\**\s*[：:]\s*(.+?)\s*$", player, re.MULTILINE)
    return m.group(1).strip() if m else ""


def _scene_lines(scene: str) -> list[tuple[str, str]]:
    """(label, text) per non-empty scene line, whatever its markdown: a heading or a
    label-only line ('- **事件经过：**') gives (label, ""); '**子事件：** 她...' gives
    ("子事件：", "她..."); a plain story line gives ("", line)."""
    out = []
    for raw in scene.splitlines():
        line = raw.strip()
        if not line:
            continue
        plain = _BULLET.sub("", line.lstrip("#").strip()).replace("**", "").strip("* \t")
        m = _LABEL.match(plain)
        label, text = (m.group(0), plain[m.end():].strip()) if m else ("", plain)
        if line.startswith("#") or not ("，" in text or "。" in text):
            label, text = label + text, ""
        out.append((label, text))
    return out


def _story_text(text: str) -> bool:
    return len(text) >= 8 and "玩家" not in text and "NPC" not in text


def _zh_details(lines: list[tuple[str, str]]) -> tuple[str, ...]:
    """Up to five story items: those under the 事件经过 label (its timeline), else under
    起因, else the first story lines."""
    for want in ("经过", "起因"):
        items: list[str] = []
        inside = False
        for label, text in lines:
            if inside and any(w in label for w in _ZH_SECTION_ENDS):
                break
            inside = inside or want in label
            if inside and _story_text(text):
                items.append(text)
        if items:
            return tuple(items[:5])
    return tuple([t for _, t in lines if _story_text(t)][:5])


def _zh_topic(lines: list[tuple[str, str]]) -> str:
    """The first sentence of the conflict (冲突事件), else of the first story line."""
    texts = [t for _, t in lines if _story_text(t)]
    for i, (label, _) in enumerate(lines):
        if "冲突事件" in label:
            texts = [t for _, t in lines[i:] if _story_text(t)] or texts
            break
    return re.split(r"(?<=[。！？])", texts[0])[0][:60] if texts else ""


def _zh_keywords(scene: str, own_name: str) -> tuple[str, ...]:
    """Best effort: other people's names (surname + 1-2 characters, seen twice), then the
    story's people and event nouns, most frequent first."""
    two: Counter[str] = Counter()
    three: Counter[str] = Counter()
    for m in re.finditer(rf"(?=([{_ZH_SURNAMES}][\u4e00-\u9fff]{{1,2}}))", scene):
        i = m.start()
        if i > 0 and scene[i - 1] in _ZH_WORD_BEFORE:
            continue
        w = m.group(1)
        two[w[:2]] += 1
        if len(w) == 3:
            three[w] += 1
    names: list[str] = []
    for w, n in two.most_common():
        if n < 2:
            break
        if w[1] in _ZH_NOT_GIVEN:
            continue
        longer = [
            (c, k) for k, c in three.items() if k.startswith(w) and k[2] not in _ZH_NOT_GIVEN
        ]
        c3, w3 = max(longer, default=(0, ""))
        name = w3 if c3 >= 2 and c3 >= 0.8 * n else w
        if own_name and (name in own_name or own_name in name):
            continue
        if name not in names:
            names.append(name)
    # Nicknames (小丽, 阿强) seen three times, and names introduced as 名叫X.
    nick = Counter(re.findall(r"[小阿][\u4e00-\u9fff]", scene))
    names += [w for w, n in nick.most_common() if n >= 3 and w not in _ZH_NOT_NICKNAMES]
    names += re.findall(r"名叫([\u4e00-\u9fff]{2,3}?)(?=[的，。、和])", scene)
    names = [w for w in dict.fromkeys(names) if not own_name or w not in own_name]
    nouns = sorted(
        (w for w in _ZH_STORY_NOUNS if w in scene), key=lambda w: (-scene.count(w), w)
    )
    return tuple(dict.fromkeys(names[:5] + nouns))[:12]


def _rlver_row(path: Path, lineno: int, row: Any, require_opening: bool) -> Persona:
    where = f"{path}: line {lineno}"
    if not isinstance(row, dict):
        raise RlverInputError(
            f"{where}: expected a JSON object, got {type(row).__name__}. "
            "Fix: one profile object per line."
        )
    required = RLVER_REQUIRED_FIELDS + (("first_talk",) if require_opening else ())
    for key in required:
        if key not in row or row[key] is None:
            hint = " (test profiles need the opening line)" if key == "first_talk" else ""
            raise RlverInputError(
                f"{where}: missing field '{key}'{hint}. "
                f"Fix: add '{key}' to that line, or point the config at the original file."
            )
    for key in ("id", "player", "scene", "main_cha", "task", "first_talk"):
        if key in row and not isinstance(row[key], str):
            raise RlverInputError(
                f"{where}: field '{key}' must be a string, got {type(row[key]).__name__}. "
                "Fix: correct that line."
            )
    cha = row["cha_group"]
    if not isinstance(cha, list) or not all(isinstance(t, str) for t in cha):
        raise RlverInputError(
            f"{where}: field 'cha_group' must be a list of strings. Fix: correct that line."
        )
    if not row["id"].strip():
        raise RlverInputError(f"{where}: field 'id' is empty. Fix: give the profile an id.")
    if require_opening and not row["first_talk"].strip():
        raise RlverInputError(
            f"{where}: field 'first_talk' is empty (test profiles need the opening line). "
            "Fix: fill it in, or use the original test_profile.jsonl."
        )
    main_cha = row["main_cha"].strip()
    if main_cha not in RLVER_CHARACTER_TYPES:
        raise RlverInputError(
            f"{where}: unknown value {main_cha!r} in field 'main_cha'. "
            f"Fix: use one of {sorted(RLVER_CHARACTER_TYPES)}."
        )
    task = row["task"].strip()
    if task not in RLVER_TASKS:
        raise RlverInputError(
            f"{where}: unknown value {task!r} in field 'task'. "
            f"Fix: use one of the eight original task strings: {sorted(RLVER_TASKS)}."
        )
    player, scene = row["player"], row["scene"]
    name = _sheet_field(player, "姓名")
    age_m = re.search(r"\d+", _sheet_field(player, "年龄"))
    lines = _scene_lines(scene)
    return Persona(
        persona_id=row["id"].strip(),
        language="zh",
        name=name,
        age=int(age_m.group()) if age_m else -1,
        gender=_sheet_field(player, "性别"),
        occupation=_sheet_field(player, "职业"),
        character_type=RLVER_CHARACTER_TYPES[main_cha],
        traits=tuple(t.strip() for t in cha if t.strip()),
        need=RLVER_TASKS[task],
        need_text=task,
        topic=_zh_topic(lines),
        backstory=scene,
        sheet=player,
        details=_zh_details(lines),
        keywords=_zh_keywords(scene, name),
        opening_line=(row.get("first_talk") or "").strip(),
        source="rlver",
    )


def import_rlver_jsonl(
    path: str | os.PathLike[str], require_opening: bool = False
) -> list[Persona]:
    """Personas from the original work's profile JSONL (Chinese).

    Field mapping: main_cha -> character_type, task -> need (and need_text), cha_group ->
    traits, scene -> backstory, player -> sheet (name/age/gender/occupation parsed from
    it), first_talk -> opening_line. Details, topic and keywords are best-effort
    extractions from the scene. Any bad line raises RlverInputError naming the file,
    the 1-based line, the field and the fix; `require_opening` (test profiles) makes
    first_talk mandatory.
    """
    path = Path(path)
    if not path.is_file():
        raise RlverInputError(
            f"{path}: profile file not found. Fix: set personas.train_path/test_path to the "
            "original RLVER/data JSONL files."
        )
    out: list[Persona] = []
    seen: dict[str, int] = {}
    for lineno, row in jsonl_records(path):
        p = _rlver_row(path, lineno, row, require_opening)
        if p.persona_id in seen:
            raise RlverInputError(
                f"{path}: line {lineno}: field 'id' value {p.persona_id!r} repeats line "
                f"{seen[p.persona_id]}. Fix: give every profile a unique id."
            )
        seen[p.persona_id] = lineno
        out.append(p)
    if not out:
        raise RlverInputError(f"{path}: no profiles. Fix: point the config at a non-empty file.")
    return out


# ---------------------------------------------------------------------------------------
# The personas stage.
# ---------------------------------------------------------------------------------------


def build_persona_sets(
    cfg: Any, train_out: str | os.PathLike[str], test_out: str | os.PathLike[str]
) -> None:
    """Write the train and test persona sets described by the `personas` config node.

    source=generated: train and test come from two seeds derived from cfg.seed, and no
    test persona repeats a train persona (same name and backstory), so the benchmark is
    held out. source=rlver: the original files are imported whole (the test file must
    carry first_talk) and their sha256 is recorded, so a set traces to its source.
    """
    from rlver.config import derive_seed
    from rlver.io import sha256_file

    source = str(cfg.source)
    if source == "generated":
        seed = int(cfg.seed)
        train = generate(int(cfg.num_train), derive_seed(seed, "personas", "train"), "train")
        test = generate(
            int(cfg.num_test),
            derive_seed(seed, "personas", "test"),
            "test",
            exclude=frozenset(persona_key(p) for p in train),
        )
        common = {"source": source, "name": str(cfg.name), "seed": str(seed)}
        metas = [
            common | {"split": "train", "count": str(len(train))},
            common | {"split": "test", "count": str(len(test))},
        ]
    elif source == "rlver":
        paths = {}
        for key in ("train_path", "test_path"):
            value = str(getattr(cfg, key, "") or "")
            if not value or value == "???":
                raise RlverInputError(
                    f"config: personas.{key} is not set (source=rlver). Fix: override it, "
                    f"e.g. --config personas.{key}=/path/to/RLVER/data/"
                    f"{key.split('_')[0]}_profile.jsonl."
                )
            paths[key] = Path(value)
        train = import_rlver_jsonl(paths["train_path"])
        test = import_rlver_jsonl(paths["test_path"], require_opening=True)
        metas = [
            {
                "source": source,
                "name": str(cfg.name),
                "split": split,
                "count": str(len(ps)),
                "source_path": str(paths[key]),
                "source_sha256": sha256_file(paths[key]),
            }
            for split, ps, key in (("train", train, "train_path"), ("test", test, "test_path"))
        ]
    else:
        raise RlverInputError(
            f"config: personas.source is {source!r}. Fix: use generated or rlver."
        )
    for out, personas, meta in ((train_out, train, metas[0]), (test_out, test, metas[1])):
        write_personas(out, personas, meta)
        print(
            f"personas: wrote {len(personas)} {meta['split']} personas to {out}",
            file=sys.stderr,
        )



def check_persona_set(cfg: Any, folder: str | os.PathLike[str]) -> None:
    """Refuse to reuse `resources/personas/<name>/` made from a different persona config.

    Persona sets are shared between runs by name; a run asking for another seed, count or
    source under the same name would otherwise silently train on the wrong personas.
    """
    train = Path(folder) / "train.parquet"
    if not train.exists():
        return
    meta = read_persona_meta(train)
    if str(cfg.source) == "generated":
        want = {"source": "generated", "seed": str(cfg.seed), "count": str(cfg.num_train)}
    else:
        want = {"source": str(cfg.source), "source_path": str(cfg.train_path)}
    diff = {k: (meta.get(k), v) for k, v in want.items() if meta.get(k) != v}
    if diff:
        shown = ", ".join(f"{k}: made with {a!r}, config asks {b!r}" for k, (a, b) in diff.items())
        raise RlverInputError(
            f"{train}: persona set '{cfg.name}' was made from another persona config "
            f"({shown}). Fix: set personas.name to a new name, or delete {folder}."
        )
