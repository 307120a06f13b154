"""Personas: the simulated users, their stories and their hidden needs.

`schema` is the persona record and its Parquet files; `generator` makes English personas
from the tables in `rlver/data/personas/`; `rlver_profiles` imports the original work's
Chinese profiles; `llm` has a model write them (English or Chinese); `stage` writes the
train and test sets a config describes.
"""

from rlver.personas.generator import (
    OCCUPATIONS,
    SITUATIONS,
    TRAITS,
    generate,
    persona_key,
)
from rlver.personas.rlver_profiles import (
    RLVER_CHARACTER_TYPES,
    RLVER_REQUIRED_FIELDS,
    RLVER_TASKS,
    import_rlver_jsonl,
    persona_from_profile,
)
from rlver.personas.schema import (
    CHARACTER_TYPES,
    NEEDS,
    PERSONA_FIELDS,
    PERSONA_SCHEMA_VERSION,
    Persona,
    read_persona_meta,
    read_personas,
    write_personas,
)
from rlver.personas.stage import build_persona_sets, check_persona_set

__all__ = [
    "CHARACTER_TYPES",
    "NEEDS",
    "OCCUPATIONS",
    "PERSONA_FIELDS",
    "PERSONA_SCHEMA_VERSION",
    "RLVER_CHARACTER_TYPES",
    "RLVER_REQUIRED_FIELDS",
    "RLVER_TASKS",
    "SITUATIONS",
    "TRAITS",
    "Persona",
    "build_persona_sets",
    "check_persona_set",
    "generate",
    "import_rlver_jsonl",
    "persona_from_profile",
    "persona_key",
    "read_persona_meta",
    "read_personas",
    "write_personas",
]
