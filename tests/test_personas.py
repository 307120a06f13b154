"""Personas: the seeded English generator, the original-profile importer, the stage."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

from rlver.errors import RlverInputError
from rlver.io import sha256_file
from rlver.personas import (
    CHARACTER_TYPES,
    NEEDS,
    OCCUPATIONS,
    SITUATIONS,
    TRAITS,
    Persona,
    build_persona_sets,
    generate,
    import_rlver_jsonl,
    persona_key,
    read_persona_meta,
    read_personas,
    write_personas,
)

from .helpers import shared

GOOD_ROW = {
    "id": "p-1",
    "player": "* 姓名：王丽娜\n* 年龄：29岁\n* 性别：女性\n\n* 职业：小学教师\n",
    "scene": (
        "## 背景故事\n\n**事件起因**\n\n王丽娜和男友李明在朋友聚会上相识，李明是一名工程师。\n\n"
        "**事件经过**\n\n- **六个月前：**  \n  王丽娜觉得和李明的约会越来越平淡，缺乏新鲜感。\n"
        "- **当前：**  \n  李明提到结婚，王丽娜感到压力，开始失眠。\n\n"
        "**主要冲突**\n\n- **冲突事件：**  \n  王丽娜和李明关于婚姻的对话演变成了争论。\n"
    ),
    "main_cha": "负面型",
    "cha_group": ["内向", "谦逊"],
    "task": "你想获得能真实帮助你解决当下困境的建议",
}


@pytest.fixture(scope="module")
def personas() -> list[Persona]:
    return generate(240, 0, "train")


def test_generate_is_deterministic(personas: list[Persona]) -> None:
    assert generate(240, 0, "train") == personas
    assert generate(240, 1, "train") != personas
    # A longer list extends a shorter one: each persona depends only on (seed, index).
    assert generate(30, 0, "train") == personas[:30]


def test_generate_is_diverse(personas: list[Persona]) -> None:
    assert len({(p.name, p.backstory, p.need) for p in personas}) == 240
    assert len({persona_key(p) for p in personas}) == 240
    assert len({p.persona_id for p in personas}) == 240
    assert personas[7].persona_id == "train-0007"
    assert len({p.occupation for p in personas}) >= 30
    assert len({p.name.split()[0] for p in personas}) >= 40
    assert len({p.name.split()[-1] for p in personas}) >= 40
    assert len({p.topic for p in personas}) >= 24
    assert {p.gender for p in personas} == {"woman", "man", "non-binary"}
    ages = [p.age for p in personas]
    assert min(ages) >= 18 and max(ages) <= 75 and max(ages) - min(ages) >= 40
    assert len(SITUATIONS) >= 24 and len(OCCUPATIONS) >= 30
    assert len({t for ts in TRAITS.values() for t in ts}) >= 20


def test_generate_covers_needs_and_types_evenly(personas: list[Persona]) -> None:
    needs = Counter(p.need for p in personas)
    types = Counter(p.character_type for p in personas)
    assert set(needs) == set(NEEDS) and set(types) == set(CHARACTER_TYPES)
    assert max(needs.values()) - min(needs.values()) <= 1
    assert max(types.values()) - min(types.values()) <= 1
    # 8 and 3 are coprime: the first 24 personas hold every need x type pair once.
    assert len({(p.need, p.character_type) for p in personas[:24]}) == 24


def test_generated_fields(personas: list[Persona]) -> None:
    for p in personas:
        assert p.language == "en" and p.source == "generated"
        for f in ("name", "gender", "occupation", "need_text", "topic", "backstory", "sheet",
                  "opening_line"):
            text = getattr(p, f)
            assert text.strip(), (p.persona_id, f)
            assert "{" not in text and "}" not in text, (p.persona_id, f, text)
        assert p.backstory.count(". ") >= 2, p.backstory
        assert 3 <= len(p.details) <= 5
        assert all(d[0].isupper() and d.endswith((".", "?", "!")) for d in p.details)
        assert 6 <= len(p.keywords) <= 12, p.keywords
        assert all(k == k.lower() and k.strip() for k in p.keywords)
        assert 2 <= len(p.traits) <= 3 and set(p.traits) <= set(TRAITS[p.character_type])
        assert p.name in p.sheet and p.occupation in p.sheet
        assert "Speaking style:" in p.sheet


def test_keywords_come_from_the_story(personas: list[Persona]) -> None:
    for p in personas:
        story = (p.backstory + " " + " ".join(p.details)).lower()
        assert sum(k in story for k in p.keywords) >= len(p.keywords) // 2, p.keywords


def test_generate_rejects_negative_n() -> None:
    with pytest.raises(ValueError):
        generate(-1, 0, "x")


def test_generate_avoids_excluded_personas(personas: list[Persona]) -> None:
    # Seed 0 again, but excluding seed 0's personas: every one must be redrawn.
    other = generate(20, 0, "test", exclude=frozenset(persona_key(p) for p in personas))
    assert not {persona_key(p) for p in other} & {persona_key(p) for p in personas}


def test_write_read_round_trip(tmp_path: Path, personas: list[Persona]) -> None:
    path = tmp_path / "p.parquet"
    write_personas(path, personas[:10], {"source": "generated", "seed": "0"})
    assert read_personas(path) == personas[:10]
    assert read_persona_meta(path)["seed"] == "0"


def test_import_reference_profiles() -> None:
    train = import_rlver_jsonl(shared("data/rlver_profiles/train_profile.jsonl"))
    test = import_rlver_jsonl(shared("data/rlver_profiles/test_profile.jsonl"),
                              require_opening=True)
    assert len(train) == 500 and len(test) == 100
    for ps in (train, test):
        assert {p.need for p in ps} == set(NEEDS)
        assert {p.character_type for p in ps} == set(CHARACTER_TYPES)
        assert all(p.language == "zh" and p.source == "rlver" for p in ps)
        assert all(p.name and p.traits and p.backstory and p.sheet for p in ps)
        assert all(p.age > 0 for p in ps)
        assert sum(bool(p.details) for p in ps) >= 0.95 * len(ps)
        assert sum(bool(p.keywords) for p in ps) >= 0.9 * len(ps)
    assert all(p.opening_line for p in test)
    assert not any(p.opening_line for p in train)
    first = train[0]
    assert first.name == "王丽娜" and first.age == 29 and first.occupation == "小学教师"
    assert first.need == "practical_advice" and "李明" in first.keywords


def test_import_requires_opening_lines_when_asked() -> None:
    profiles = shared("data/rlver_profiles/train_profile.jsonl")
    with pytest.raises(RlverInputError, match=r"line 1: missing field 'first_talk'"):
        import_rlver_jsonl(profiles, require_opening=True)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), "utf-8")
    return path


def test_import_small_file(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "ok.jsonl", [GOOD_ROW, GOOD_ROW | {"id": "p-2"}])
    p = import_rlver_jsonl(path)[0]
    assert (p.persona_id, p.name, p.age, p.gender, p.occupation) == (
        "p-1", "王丽娜", 29, "女性", "小学教师"
    )
    assert (p.character_type, p.need) == ("negative", "practical_advice")
    assert p.traits == ("内向", "谦逊")
    assert p.details == (
        "王丽娜觉得和李明的约会越来越平淡，缺乏新鲜感。",
        "李明提到结婚，王丽娜感到压力，开始失眠。",
    )
    assert p.topic == "王丽娜和李明关于婚姻的对话演变成了争论。"
    assert "李明" in p.keywords and "王丽娜" not in p.keywords
    assert p.opening_line == ""


def test_import_missing_field_names_file_line_and_field(tmp_path: Path) -> None:
    bad = {k: v for k, v in GOOD_ROW.items() if k != "task"}
    path = _write_jsonl(tmp_path / "train_profile.jsonl", [GOOD_ROW, bad])
    with pytest.raises(RlverInputError) as info:
        import_rlver_jsonl(path)
    msg = str(info.value)
    assert "train_profile.jsonl: line 2: missing field 'task'" in msg and "Fix:" in msg


@pytest.mark.parametrize(
    ("field", "value"), [("main_cha", "快乐型"), ("task", "你想要一个拥抱")]
)
def test_import_unknown_value_names_field_and_value(
    tmp_path: Path, field: str, value: str
) -> None:
    path = _write_jsonl(tmp_path / "profiles.jsonl", [GOOD_ROW | {field: value}])
    with pytest.raises(RlverInputError) as info:
        import_rlver_jsonl(path)
    msg = str(info.value)
    assert "profiles.jsonl: line 1:" in msg and f"'{field}'" in msg and value in msg
    assert "Fix:" in msg


def test_import_invalid_json_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(GOOD_ROW) + "\n\n{not json\n", "utf-8")
    with pytest.raises(RlverInputError, match=r"broken\.jsonl: line 3: invalid JSON"):
        import_rlver_jsonl(path)


def test_import_duplicate_id_and_missing_file(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "dup.jsonl", [GOOD_ROW, GOOD_ROW])
    with pytest.raises(RlverInputError, match=r"line 2: field 'id' value 'p-1' repeats line 1"):
        import_rlver_jsonl(path)
    with pytest.raises(RlverInputError, match="not found"):
        import_rlver_jsonl(tmp_path / "absent.jsonl")


def test_build_generated_sets(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = SimpleNamespace(
        name="generated", source="generated", num_train=48, num_test=24, seed=3,
        train_path="", test_path="",
    )
    train_out, test_out = tmp_path / "train.parquet", tmp_path / "test.parquet"
    build_persona_sets(cfg, train_out, test_out)
    train, test = read_personas(train_out), read_personas(test_out)
    assert len(train) == 48 and len(test) == 24
    assert train[0].persona_id == "train-0000" and test[0].persona_id == "test-0000"
    assert not {persona_key(p) for p in train} & {persona_key(p) for p in test}
    meta = read_persona_meta(test_out)
    assert meta["source"] == "generated" and meta["seed"] == "3" and meta["count"] == "24"
    err = capsys.readouterr().err
    assert f"personas: wrote 48 train personas to {train_out}" in err
    assert f"personas: wrote 24 test personas to {test_out}" in err
    # Same config, same files' content.
    build_persona_sets(cfg, tmp_path / "t2.parquet", tmp_path / "s2.parquet")
    assert read_personas(tmp_path / "t2.parquet") == train


def test_build_rlver_sets(tmp_path: Path) -> None:
    train_src = _write_jsonl(tmp_path / "train.jsonl", [GOOD_ROW])
    test_src = _write_jsonl(tmp_path / "test.jsonl", [GOOD_ROW | {"first_talk": "唉，最近好累。"}])
    cfg = SimpleNamespace(
        name="rlver", source="rlver", num_train=240, num_test=100, seed=0,
        train_path=str(train_src), test_path=str(test_src),
    )
    build_persona_sets(cfg, tmp_path / "a.parquet", tmp_path / "b.parquet")
    assert read_personas(tmp_path / "b.parquet")[0].opening_line == "唉，最近好累。"
    meta = read_persona_meta(tmp_path / "a.parquet")
    assert meta["source"] == "rlver" and meta["source_sha256"] == sha256_file(train_src)
    # The test file must carry opening lines.
    cfg.test_path = str(train_src)
    with pytest.raises(RlverInputError, match="first_talk"):
        build_persona_sets(cfg, tmp_path / "c.parquet", tmp_path / "d.parquet")
    cfg.train_path = ""
    with pytest.raises(RlverInputError, match=r"personas\.train_path"):
        build_persona_sets(cfg, tmp_path / "c.parquet", tmp_path / "d.parquet")
