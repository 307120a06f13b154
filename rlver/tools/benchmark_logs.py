"""Benchmark logs in one form: SAGE JSONL dialogues and our eval Parquet, and their scores.

Published SAGE results (the original work's logs) and our own `evaluate` output must be
scored by one definition, so `rlver score` puts both into `LoggedDialogue` and counts
success and failure with `rlver.metrics.benchmark_metrics`. The mean is rounded half up
to one decimal on its exact value, as published numbers are (68.15 -> 68.2), never by
float rounding.

A SAGE log is one JSON object per persona: the persona fields (`id`, `player`, `scene`,
`character`, `topic`, `task`), `emo_point` (final emotion) and `history`, whose user
messages carry `emotion-point`, the emotion after that message. `read_sage_dialogues`
also turns each assistant reply into a `LoggedTurn` (emotion before and after it) and
the persona fields into our `Persona`, for `rlver calibrate`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Optional, Union

from rlver.errors import RlverInputError
from rlver.io import jsonl_records
from rlver.metrics import benchmark_metrics, exact_mean, round_half_up
from rlver.personas import RLVER_CHARACTER_TYPES, Persona, persona_from_profile
from rlver.simulator import Message

#: The benchmark's starting emotion, used when a log does not record one.
INITIAL_EMOTION = 40

Number = Union[int, Decimal]


@dataclass(frozen=True)
class LoggedDialogue:
    """What scoring needs from one benchmark dialogue, whatever file it came from."""

    file: str
    persona_id: str
    final_emotion: Number
    num_turns: int
    #: Our eval files' outcome; SAGE logs record none ("").
    outcome: str = ""


@dataclass(frozen=True)
class LoggedTurn:
    """One logged assistant reply and the emotion change the logged simulator gave it."""

    #: 1-based number of the assistant reply.
    turn: int
    #: The dialogue up to and including this reply.
    history: tuple[Message, ...]
    emotion_before: int
    #: None where the log has no emotion after this reply (e.g. the dialogue's last one).
    emotion_after: Optional[int]

    @property
    def logged_delta(self) -> Optional[int]:
        if self.emotion_after is None:
            return None
        return self.emotion_after - self.emotion_before


@dataclass(frozen=True)
class SageDialogue:
    """A SAGE dialogue replayable through a simulator."""

    file: str
    line: int
    persona: Persona
    turns: tuple[LoggedTurn, ...]


@dataclass(frozen=True)
class FileScore:
    """One line of `rlver score`."""

    file: str
    n: int
    #: Mean final emotion, rounded half up to one decimal.
    score: Decimal
    success: int
    failure: int

    def as_json(self) -> dict[str, Any]:
        return {"file": self.file, "n": self.n, "score": float(self.score),
                "success": self.success, "failure": self.failure}


# --- scoring ---------------------------------------------------------------------------


def score_dialogues(file: str, dialogues: list[LoggedDialogue]) -> FileScore:
    """n, rounded mean, success and failure counts (benchmark definition) of one file."""
    finals = [d.final_emotion for d in dialogues]
    m = benchmark_metrics(finals, [d.outcome for d in dialogues],  # type: ignore[arg-type]
                          [d.num_turns for d in dialogues])
    return FileScore(file, m["n"], round_half_up(exact_mean(finals)), m["success"],
                     m["failure"])


def score_file(path: str | os.PathLike[str]) -> FileScore:
    """Score one SAGE JSONL log or one of our eval Parquet files."""
    return score_dialogues(str(path), read_log(path))


def format_scores(scores: list[FileScore]) -> str:
    """An aligned text table, one row per file."""
    rows = [[s.file, str(s.n), f"{s.score:.1f}", str(s.success), str(s.failure)]
            for s in scores]
    return format_table(["file", "n", "score", "success", "failure"], rows)


def format_table(header: list[str], rows: list[list[str]]) -> str:
    """First column left-aligned, the numbers right-aligned, so columns line up."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for r in [header, *rows]:
        cells = [c.ljust(w) if i == 0 else c.rjust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        lines.append("  ".join(cells))
    return "\n".join(lines)


# --- reading ---------------------------------------------------------------------------


def read_log(path: str | os.PathLike[str]) -> list[LoggedDialogue]:
    """The dialogues of a SAGE JSONL log or an eval Parquet file (by suffix, else content)."""
    path = Path(path)
    if not path.is_file():
        raise RlverInputError(
            f"{path}: file not found. Fix: pass a SAGE .jsonl log or an eval dialogues.parquet."
        )
    dialogues = _read_parquet(path) if _is_parquet(path) else _read_sage_finals(path)
    if not dialogues:
        raise RlverInputError(f"{path}: no dialogues. Fix: pass a non-empty log.")
    return dialogues


def _is_parquet(path: Path) -> bool:
    if path.suffix == ".parquet":
        return True
    if path.suffix in (".jsonl", ".json"):
        return False
    with open(path, "rb") as f:
        return f.read(4) == b"PAR1"


def _read_parquet(path: Path) -> list[LoggedDialogue]:
    """Our eval file: one row per dialogue (think-mode files: the rows with sample 0)."""
    from rlver.schema import read_trajectories

    table, meta = read_trajectories(path)
    if meta.get("kind") != "eval":
        raise RlverInputError(
            f"{path}: field kind is {meta.get('kind')!r}, not 'eval'; rollout files are not "
            "benchmark dialogues. Fix: pass an evaluate stage's dialogues.parquet."
        )
    cols = table.select(["persona_id", "final_emotion", "num_turns", "outcome", "sample"])
    return [
        LoggedDialogue(str(path), r["persona_id"], r["final_emotion"], r["num_turns"],
                       r["outcome"])
        for r in cols.to_pylist() if r["sample"] == 0
    ]


def _sage_records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """(1-based line, object) for each non-blank line; bad JSON names its line."""
    for lineno, row in jsonl_records(path):
        if not isinstance(row, dict):
            raise RlverInputError(
                f"{path}: line {lineno}: expected a JSON object, got "
                f"{type(row).__name__}. Fix: one dialogue object per line."
            )
        yield lineno, row


def _number(value: Any, where: str, field: str) -> Number:
    """An emotion value: a JSON number or a numeric string (SAGE writes both)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        got = "null" if value is None else type(value).__name__
        raise RlverInputError(
            f"{where}: field '{field}' must be a number, got {got}. "
            "Fix: write the emotion as a number 0-100."
        )
    try:
        d = Decimal(str(value).strip())
    except ArithmeticError:
        d = Decimal("NaN")
    if not d.is_finite():
        raise RlverInputError(
            f"{where}: field '{field}' must be a number, got {value!r}. "
            "Fix: write the emotion as a number 0-100."
        )
    return int(d) if d == d.to_integral_value() else d


def _read_sage_finals(path: Path) -> list[LoggedDialogue]:
    out = []
    for lineno, row in _sage_records(path):
        where = f"{path}: line {lineno}"
        if "emo_point" not in row:
            raise RlverInputError(
                f"{where}: missing field 'emo_point' (the final emotion). "
                "Fix: add it to that line, or use the original SAGE log."
            )
        history = row.get("history")
        turns = (sum(isinstance(m, dict) and m.get("role") == "assistant" for m in history)
                 if isinstance(history, list) else 0)
        out.append(LoggedDialogue(str(path), str(row.get("id", lineno)),
                                  _number(row["emo_point"], where, "emo_point"), turns))
    return out


def read_sage_dialogues(path: str | os.PathLike[str],
                        limit: Optional[int] = None) -> list[SageDialogue]:
    """The first `limit` (default all) dialogues of a SAGE log, with personas and turns."""
    path = Path(path)
    if not path.is_file():
        raise RlverInputError(f"{path}: file not found. Fix: pass a SAGE .jsonl log.")
    if _is_parquet(path):
        raise RlverInputError(
            f"{path}: a Parquet file; calibration replays SAGE logs, which carry the personas "
            "and the logged emotions. Fix: pass a SAGE .jsonl log."
        )
    out: list[SageDialogue] = []
    for lineno, row in _sage_records(path):
        if limit is not None and len(out) >= limit:
            break
        where = f"{path}: line {lineno}"
        history = _sage_history(row, where)
        persona = _sage_persona(path, lineno, row, history)
        out.append(SageDialogue(str(path), lineno, persona, _sage_turns(history, where)))
    if not out:
        raise RlverInputError(f"{path}: no dialogues. Fix: pass a non-empty log.")
    return out


def _sage_history(row: dict[str, Any], where: str) -> list[dict[str, Any]]:
    history = row.get("history")
    if not isinstance(history, list) or not history:
        raise RlverInputError(
            f"{where}: field 'history' must be a non-empty list of messages. "
            "Fix: use the original SAGE log."
        )
    for i, m in enumerate(history):
        ok = (isinstance(m, dict) and m.get("role") in ("user", "assistant")
              and isinstance(m.get("content"), str))
        if not ok:
            raise RlverInputError(
                f"{where}: field 'history[{i}]' must be an object with role user or assistant "
                "and a string content. Fix: correct that message."
            )
    return history


def _sage_persona(path: Path, lineno: int, row: dict[str, Any],
                  history: list[dict[str, Any]]) -> Persona:
    """Our Persona from a log's own persona fields, through the profile importer."""
    where = f"{path}: line {lineno}"
    character = row.get("character")
    if not isinstance(character, str) or character.strip() not in RLVER_CHARACTER_TYPES:
        raise RlverInputError(
            f"{where}: field 'character' is {character!r}. "
            f"Fix: use one of {sorted(RLVER_CHARACTER_TYPES)}."
        )
    opening = history[0]["content"] if history[0]["role"] == "user" else ""
    profile = {k: row.get(k) for k in ("id", "player", "scene", "task")}
    profile |= {"main_cha": character, "cha_group": [], "first_talk": opening}
    persona = persona_from_profile(path, lineno, profile, require_opening=False)
    topic = row.get("topic")
    return replace(persona, topic=topic.strip()) if isinstance(topic, str) and topic.strip() \
        else persona


def _sage_turns(history: list[dict[str, Any]], where: str) -> tuple[LoggedTurn, ...]:
    """Each assistant reply with the emotion before it and the next user message's after."""
    messages = tuple(Message(m["role"], m["content"]) for m in history)
    emotion = INITIAL_EMOTION
    turns: list[LoggedTurn] = []
    for i, m in enumerate(history):
        point = _emotion_point(m, where, i)
        if m["role"] == "user":
            emotion = point if point is not None else emotion
            continue
        nxt = history[i + 1] if i + 1 < len(history) else None
        after = _emotion_point(nxt, where, i + 1) if nxt and nxt["role"] == "user" else None
        turns.append(LoggedTurn(len(turns) + 1, messages[: i + 1], emotion, after))
    return tuple(turns)


def _emotion_point(message: dict[str, Any], where: str, index: int) -> Optional[int]:
    value = message.get("emotion-point")
    if value is None or message["role"] != "user":
        return None
    field = f"history[{index}].emotion-point"
    number = _number(value, where, field)
    if not isinstance(number, int):
        raise RlverInputError(
            f"{where}: field '{field}' is {value!r}, not a whole number. "
            "Fix: write the emotion as a whole number 0-100."
        )
    return number
