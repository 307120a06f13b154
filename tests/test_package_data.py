"""The package data: persona tables and the heuristic simulator's lexicons and lines.

Every list is non-empty, every placeholder of a story template resolves, both languages
have every line, and every YAML file is one the wheel ships.
"""

from __future__ import annotations

import random
import string
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from rlver.data import load
from rlver.personas import CHARACTER_TYPES, NEEDS, RLVER_CHARACTER_TYPES, RLVER_TASKS
from rlver.personas.generator import (
    GENDERS,
    NEED_TEXTS,
    OCCUPATIONS,
    OPENING_FRAMES,
    SITUATIONS,
    _slots,
)
from rlver.simulator.heuristic import _CUE_NEEDS, _LINES
from rlver.simulator.heuristic_text import LEXICON

DATA = Path(str(resources.files("rlver.data")))
FILES = sorted(p.relative_to(DATA).as_posix() for p in DATA.rglob("*.yaml"))


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


def _empty_parts(node: Any, where: str) -> list[str]:
    if isinstance(node, (list, dict, str)) and not node and not where.endswith(".join"):
        return [where]
    if isinstance(node, dict):
        return [e for k, v in node.items() for e in _empty_parts(v, f"{where}.{k}")]
    if isinstance(node, list):
        return [e for i, v in enumerate(node) for e in _empty_parts(v, f"{where}[{i}]")]
    return []


def test_the_wheel_ships_every_data_file() -> None:
    # pyproject.toml: [tool.setuptools.package-data] "rlver.data" = ["*/*.yaml"]
    assert FILES and all(len(Path(f).parts) == 2 for f in FILES), FILES
    assert set(FILES) >= {"personas/situations.yaml", "heuristic/lexicon.yaml",
                          "heuristic/lines.yaml"}


@pytest.mark.parametrize("name", FILES)
def test_no_list_string_or_table_is_empty(name: str) -> None:
    assert _empty_parts(load(name), name) == []


def test_every_situation_placeholder_resolves() -> None:
    # The generator fills the topic first, then the deed, then everything else.
    rng = random.Random(0)
    for i, sit in enumerate(SITUATIONS):
        for gender, _ in GENDERS:
            slots = set(_slots(rng, sit, gender))
            assert _fields(sit.topic) <= slots, (i, sit.topic)
            assert _fields(sit.deed) <= slots | {"topic"}, (i, sit.deed)
            known = slots | {"topic", "deed"}
            templates = [sit.backstory, *sit.details, *sit.keywords, *sit.hints]
            templates += [t for texts in NEED_TEXTS.values() for t in texts]
            missing = {t: _fields(t) - known for t in templates if _fields(t) - known}
            assert not missing, (i, sit.topic, missing)


def test_every_situation_has_occupations_and_details_to_choose_from() -> None:
    for sit in SITUATIONS:
        lo, hi = sit.ages
        assert any(o[4] in sit.kinds and o[2] <= hi and o[3] >= lo for o in OCCUPATIONS), sit
        assert len(sit.details) >= 5 and sit.hints  # the surface and 2-4 deeper details


def test_opening_frames_use_only_the_hint() -> None:
    for frames in OPENING_FRAMES.values():
        assert all(_fields(f) <= {"hint", "Hint"} and _fields(f) for f in frames), frames


def test_needs_and_types_agree_across_files() -> None:
    assert list(load("personas/character_types.yaml")) == list(CHARACTER_TYPES)
    assert sorted(RLVER_CHARACTER_TYPES.values()) == sorted(CHARACTER_TYPES)
    assert len(NEEDS) == 8 and sorted(RLVER_TASKS.values()) == sorted(NEEDS)
    assert set(NEED_TEXTS) == set(NEEDS)


def test_both_languages_have_every_line() -> None:
    en, zh = _LINES["en"], _LINES["zh"]
    assert set(_LINES) == {"en", "zh"} and set(en) == set(zh)
    for key in ("complaint", "hint"):
        assert set(en[key]) == set(zh[key]), key
    assert set(en["hint"]) == set(NEEDS)
    for ctype in CHARACTER_TYPES:
        for register in ("open", "stall", "curt", "leave"):
            assert f"{register}_{ctype}" in en, (register, ctype)


def test_every_cue_category_speaks_both_languages() -> None:
    assert set(_CUE_NEEDS) <= set(LEXICON)
    for category, phrases in LEXICON.items():
        assert any(p.isascii() for p in phrases), category
        assert any(not p.isascii() for p in phrases), category
        assert all(p == p.lower() and p.strip() == p for p in phrases), category
