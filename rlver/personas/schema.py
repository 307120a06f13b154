"""The persona record and its Parquet files.

A persona is what the simulator role-plays: a sheet (who they are), a backstory, a
character type, traits, a hidden need (one of eight, as in the original work) and an
opening line. Persona sets are Parquet files under `resources/personas/<name>/`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from rlver.data import load
from rlver.errors import RlverInputError
from rlver.io import atomic_path

#: The eight hidden needs of the original work (its `task` field), in our words, in the
#: order the generator cycles through them (rlver/data/personas/needs.yaml).
NEEDS: dict[str, str] = {
    key: need["description"] for key, need in load("personas/needs.yaml").items()
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
    #: `generated`, `rlver` or `llm`.
    source: str = field(default="generated")


PERSONA_FIELDS = tuple(f.name for f in fields(Persona))
_LIST_FIELDS = ("traits", "details", "keywords")


def persona_problems(p: Persona) -> list[str]:
    """What makes a record unusable whatever its source (each problem names the field):
    a known language, character type and need, an id, strings and tuples of strings."""
    from rlver.config_checks import PERSONA_LANGUAGES

    out = []
    for f in fields(Persona):
        value = getattr(p, f.name)
        if f.name in _LIST_FIELDS:
            if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                out.append(f"field '{f.name}' must be a tuple of strings")
        elif f.name == "age":
            if not isinstance(value, int) or not (value == -1 or 0 <= value <= 130):
                out.append(f"field 'age' must be -1 (unknown) or 0-130, got {value!r}")
        elif not isinstance(value, str):
            out.append(f"field '{f.name}' must be a string, got {type(value).__name__}")
    if out:
        return out
    if not p.persona_id.strip():
        out.append("field 'persona_id' is empty")
    if p.language not in PERSONA_LANGUAGES:
        out.append(f"field 'language' is {p.language!r}, not one of {PERSONA_LANGUAGES}")
    if p.character_type not in CHARACTER_TYPES:
        out.append(f"field 'character_type' is {p.character_type!r}, not one of "
                   f"{CHARACTER_TYPES}")
    if p.need not in NEEDS:
        out.append(f"field 'need' is {p.need!r}, not one of {tuple(NEEDS)}")
    return out

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
        for k in _LIST_FIELDS:
            row[k] = tuple(row[k] or ())
        out.append(Persona(**row))
    if not out:
        raise RlverInputError(f"{path}: no personas. Fix: rerun rule personas.")
    return out
