"""Import of the original work's profiles (Chinese JSONL) as personas.

The word lists that find names, story items and keywords in a Chinese scene are package
data: `rlver/data/personas/rlver_profiles.yaml`.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

from rlver.data import load
from rlver.errors import RlverInputError
from rlver.io import jsonl_records
from rlver.personas.schema import Persona, persona_problems

_DATA = load("personas/rlver_profiles.yaml")

#: main_cha values of the original data.
RLVER_CHARACTER_TYPES: dict[str, str] = dict(_DATA["character_types"])
#: The eight `task` strings of the original data (exact, stripped) and our need keys.
RLVER_TASKS: dict[str, str] = dict(_DATA["tasks"])
RLVER_REQUIRED_FIELDS: tuple[str, ...] = ("id", "player", "scene", "main_cha", "cha_group", "task")

_ZH_SURNAMES: str = _DATA["surnames"]
_ZH_NOT_GIVEN = frozenset(_DATA["not_given"])
_ZH_WORD_BEFORE = frozenset(_DATA["word_before"])
_ZH_NOT_NICKNAMES = frozenset(_DATA["not_nicknames"])
_ZH_STORY_NOUNS: tuple[str, ...] = tuple(_DATA["story_nouns"])
_ZH_SECTION_ENDS: tuple[str, ...] = tuple(_DATA["section_ends"])
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


def persona_from_profile(
    path: Path, lineno: int, row: Any, require_opening: bool
) -> Persona:
    """One profile object (line `lineno` of `path`) as a persona; a bad field raises
    RlverInputError naming the file, the line, the field and the fix."""
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
    persona = Persona(
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
    problems = persona_problems(persona)
    if problems:
        raise RlverInputError(f"{where}: {problems[0]}. Fix: correct that line.")
    return persona


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
        p = persona_from_profile(path, lineno, row, require_opening)
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
