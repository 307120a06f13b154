"""The LLM simulated user: the paper's two-step protocol, asked of a chat model.

`LLMSimulator` builds the prompts (`prompts.py`), sends every live dialogue's call of a
step to a completion backend at once, parses the answers and retries what failed. Two
backends (`rlver.completions`): `OpenAIHTTPBackend` (any OpenAI-compatible endpoint,
requests in flight together up to `max_concurrency`) and `VLLMEngineBackend` (an
in-process vLLM engine, one batched call).

Failures are bounded, never fatal to the shard (the original code looped forever): an
item gets at most `1 + max_retries` attempts, whatever went wrong (HTTP 429/5xx,
timeout, dropped connection, a body that is not a chat completion, an answer that does
not parse); then it falls back — a Feeling with delta 0 and `parse_error=True` (`fatal`
when `on_parse_error=error`), or a short neutral utterance. Retries go out in rounds:
all items still failing after a round are sent again together after one backoff
(`backoff_s`, doubled each round), so batching survives the retries.

Step one is structured by default (`structured_feel`): the answer is requested against a
JSON schema (`feeling_schema`: an integer delta in the protocol's range, a bounded reason),
through vLLM's structured outputs in-process or `response_format` over HTTP, so it parses
by construction. An endpoint that refuses `response_format` (HTTP 400 or 422 naming it)
is detected on the first call; from then on this simulator asks step one in free text and
parses it leniently, and says so once on stderr. Step two is always free text.
"""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Optional, TypeVar

from rlver.completions import Chat, CompletionBackend, CompletionError, StructuredOutputsRefused
from rlver.config_checks import DIFFICULTIES, ON_PARSE_ERROR
from rlver.errors import RlverInputError
from rlver.simulator.base import Feeling, SimRequest, Simulator, Utterance
from rlver.simulator.prompts import (
    FAREWELL_MARKER,
    fallback_utterance,
    feel_messages,
    prompt_language,
    speak_messages,
)

#: A proposed change outside this range is clamped: one reply never swings more.
MAX_ABS_DELTA = 50
#: One backoff never waits longer than this, whatever `max_retries` says.
MAX_BACKOFF_S = 60.0
#: Structured step one: the reason is at most this long (one or two sentences).
MAX_REASON_CHARS = 240

T = TypeVar("T")


class AnswerFormatError(ValueError):
    """The model answered, but not in the format the prompt asked for."""


@dataclass(frozen=True)
class _Failure:
    """An item with no usable answer after its attempts, and why."""

    why: str


def feeling_schema(max_abs_delta: int) -> dict[str, Any]:
    """Step one's answer as a JSON schema: a reason (one or two sentences), then the integer
    delta within +-max_abs_delta. Reason first: the model states why before it scores."""
    return {
        "title": "feeling",
        "type": "object",
        "properties": {
            "reason": {"type": "string", "minLength": 1, "maxLength": MAX_REASON_CHARS},
            "delta": {"type": "integer", "minimum": -max_abs_delta, "maximum": max_abs_delta},
        },
        "required": ["reason", "delta"],
        "additionalProperties": False,
    }


# --- parsers -----------------------------------------------------------------------------

_DECODER = json.JSONDecoder()
#: `"delta": 3` inside JSON too broken to decode (e.g. unescaped quotes in the reason).
_DELTA_KEY = re.compile(r'"delta"\s*:\s*"?([+-]?\d+(?:\.\d+)?)', re.IGNORECASE)
#: A `Delta: -3` line (bold, bullet and full-width colon tolerated).
_DELTA_LINE = re.compile(
    r"^[\s*#>\-]*(?:delta|change|emotion change|变化|情绪变化)[\s*]*[:：=][\s*]*"
    r"([+-]?\d+(?:\.\d+)?)[\s*]*$",
    re.IGNORECASE | re.MULTILINE,
)
_REASON_KEY = re.compile(r'"reason"\s*:\s*"((?:[^"\\]|\\.)*)"', re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?\d+")
#: The farewell marker, also in full-width brackets or another case.
_FAREWELL = re.compile(rf"[\[【]\s*{re.escape(FAREWELL_MARKER.strip('[]'))}\s*[\]】]",
                       re.IGNORECASE)
_FENCE = re.compile(r"^```[\w-]*\s*|\s*```$")
_QUOTES = {'"': '"', "'": "'", "“": "”", "‘": "’", "「": "」", "『": "』"}


def parse_feeling(text: str) -> tuple[int, str]:
    """(delta, reason) from a step-one answer.

    Accepts the last JSON object with a `delta` anywhere in the answer, else a `"delta": N`
    fragment or a `Delta: N` line. The delta must be an integer (3, "+3" or 3.0; not 2.5)
    and is clamped to +-MAX_ABS_DELTA. Raises AnswerFormatError saying what is wrong.
    """
    text = _FENCE.sub("", text.strip())
    if not text:
        raise AnswerFormatError("empty answer")
    found = _last_json_with_delta(text)
    if found is not None:
        obj, start = found
        delta = _as_int(_get(obj, "delta"))
        reason = _get(obj, "reason")
        reason = reason if isinstance(reason, str) and reason.strip() else text[:start]
    else:
        matches = list(_DELTA_KEY.finditer(text)) or list(_DELTA_LINE.finditer(text))
        if not matches:
            raise AnswerFormatError('no delta found (expected {"reason": ..., "delta": N})')
        delta = _as_int(matches[-1].group(1))
        key = _REASON_KEY.search(text)
        reason = key.group(1) if key else text[: matches[-1].start()]
    delta = max(-MAX_ABS_DELTA, min(MAX_ABS_DELTA, delta))
    return delta, _clean_reason(reason)


def parse_utterance(text: str, name: str = "") -> tuple[str, bool]:
    """(message, farewell) from a step-two answer.

    Keeps the first paragraph only, and cuts where a speaker label starts a later line:
    small models go on to write the rest of the dialogue or echo the prompt. Role prefixes
    and wrapping quotes are removed; `farewell` if the farewell marker ends the message
    (the marker is removed). Raises AnswerFormatError when nothing is left.
    """
    labels = _labels(name)
    text = _FENCE.sub("", text.strip())
    end = _message_end(text, labels)
    farewell = bool(_FAREWELL.search(text[:end]) or _FAREWELL.match(text[end:].strip()))
    text = _FAREWELL.sub("", text[:end]).strip()
    prefix = re.compile(rf"^(?:\*\*)?{labels}(?:\*\*)?\s*(?:\*\*)?", re.IGNORECASE)
    for _ in range(3):  # prefixes and quotes can nest: 'Anna: "..."'
        text = prefix.sub("", text).strip()
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text = text[1:-1].strip()
    if not text:
        only_marker = " (only the farewell marker)" if farewell else ""
        raise AnswerFormatError("empty message" + only_marker)
    return text, farewell


def _labels(name: str) -> str:
    """A speaker label such as `Anna:`, `You (Anna Kowalski):`, `Them:` or `对方：`."""
    names = {name, name.split()[0] if name.split() else ""} - {""}
    words = [re.escape(n) for n in sorted(names, key=len, reverse=True)]
    words += ["you", "me", "user", "persona", "them", "their", "they", "listener", "assistant",
              "emotion", "我", "你", "用户", "对方", "情绪"]
    return r"(?:" + "|".join(words) + r")(?:\s*[(（][^)）\n]*[)）])?\s*[:：]"


def _message_end(text: str, labels: str) -> int:
    """Where the persona's one message ends: a blank line or a later labelled line."""
    ends = [len(text)]
    first_line_end = text.find("\n")
    if first_line_end >= 0:
        later = re.compile(r"\n\s*(?:\*\*)?" + labels, re.IGNORECASE)
        hit = later.search(text, first_line_end)
        if hit:
            ends.append(hit.start())
    blank = re.search(r"\n\s*\n", text)
    if blank:
        ends.append(blank.start())
    return min(ends)


def _last_json_with_delta(text: str) -> Optional[tuple[dict[str, Any], int]]:
    """The last JSON object (at any nesting) that has a `delta` key, and where it starts."""
    best = None
    for start in (i for i, c in enumerate(text) if c == "{"):
        try:
            obj, _ = _DECODER.raw_decode(text, start)
        except ValueError:
            continue
        if isinstance(obj, dict) and _get(obj, "delta") is not None:
            best = (obj, start)
    return best


def _get(obj: dict[str, Any], key: str) -> Any:
    return next((v for k, v in obj.items() if str(k).strip().lower() == key), None)


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise AnswerFormatError(f"delta {value!r} is not an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        if _INTEGER.fullmatch(value.strip()):
            return int(value.strip())
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is not None and number.is_integer():
            return int(number)
    raise AnswerFormatError(f"delta {value!r} is not an integer")


def _clean_reason(reason: str) -> str:
    reason = " ".join(reason.split()).strip(" \"'`")
    if len(reason) > 500:
        reason = reason[:500] + "..."
    return reason or "(no reason given)"


# --- the simulator -----------------------------------------------------------------------


class LLMSimulator(Simulator):
    """The two-step protocol with a chat model; see the module docstring for failures."""

    def __init__(
        self, cfg: Any, backend: CompletionBackend, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        if cfg.difficulty not in DIFFICULTIES:
            raise ValueError(f"difficulty must be one of {DIFFICULTIES}, got {cfg.difficulty!r}")
        if cfg.on_parse_error not in ON_PARSE_ERROR:
            raise ValueError(f"on_parse_error must be one of {ON_PARSE_ERROR}, got "
                             f"{cfg.on_parse_error!r}")
        self.difficulty: str = cfg.difficulty
        self.language: str = cfg.language
        self.max_retries = max(0, int(cfg.max_retries))
        self.backoff_s = max(0.0, float(cfg.backoff_s))
        self.fatal_on_parse_error = cfg.on_parse_error == "error"
        #: Step one against `schema`; off for good once the endpoint refuses it.
        self.structured = bool(cfg.structured_feel)
        limit = MAX_ABS_DELTA if cfg.max_delta is None else min(MAX_ABS_DELTA, cfg.max_delta)
        self.schema = feeling_schema(limit)
        #: What the prompts show of the dialogue (characters of the transcript, a message).
        self.view = (int(cfg.transcript_chars), int(cfg.message_chars))
        self.backend = backend
        self._sleep = sleep
        #: Step one's reasons by request, so step two speaks from what was felt.
        self._reactions: dict[SimRequest, str] = {}

    def feel(self, requests: Sequence[SimRequest]) -> list[Feeling]:
        """Proposed change and reason per request; delta 0 and parse_error after failures."""
        seeds = [r.seed for r in requests]
        answers = None
        if self.structured:
            chats = [feel_messages(r, self.difficulty, self._language(r), structured=True,
                                   view=self.view) for r in requests]
            try:
                answers = self._ask("feel", chats, seeds, parse_feeling, self.schema)
            except StructuredOutputsRefused as exc:
                self.structured = False
                print(f"simulator: the endpoint refused structured outputs ({exc}); step one "
                      "asks in free text from now on", file=sys.stderr, flush=True)
        if answers is None:
            chats = [feel_messages(r, self.difficulty, self._language(r), view=self.view)
                     for r in requests]
            answers = self._ask("feel", chats, seeds, parse_feeling)
        feelings = []
        for answer in answers:
            if isinstance(answer, _Failure):
                feelings.append(Feeling(0, f"parse_error: {answer.why}", parse_error=True,
                                        fatal=self.fatal_on_parse_error))
            else:
                feelings.append(Feeling(delta=answer[0], reason=answer[1]))
        self._reactions = {
            r: f.reason for r, f in zip(requests, feelings, strict=True)
            if not f.parse_error
        }
        return feelings

    def speak(
        self,
        requests: Sequence[SimRequest],
        emotions: Sequence[int],
        outcomes: Sequence[Optional[str]],
    ) -> list[Utterance]:
        """The persona's next message; a closing line when the protocol ended the dialogue.
        `farewell` only when the persona leaves by itself (marker present, no outcome)."""
        chats = [
            speak_messages(r, e, o, self.difficulty, self._language(r),
                           self._reactions.get(r, ""), view=self.view)
            for r, e, o in zip(requests, emotions, outcomes, strict=True)
        ]
        parsers: list[Callable[[str], tuple[str, bool]]] = [
            partial(parse_utterance, name=r.persona.name) for r in requests
        ]
        answers = self._ask("speak", chats, [r.seed for r in requests], parsers)
        out = []
        for r, o, answer in zip(requests, outcomes, answers, strict=True):
            if isinstance(answer, _Failure):
                out.append(Utterance(fallback_utterance(self._language(r), o is not None)))
            else:
                out.append(Utterance(answer[0], farewell=answer[1] and o is None))
        return out

    def close(self) -> None:
        """Release the backend's connections or engine, if it holds any."""
        close = getattr(self.backend, "close", None)
        if close is not None:
            close()

    def _language(self, request: SimRequest) -> str:
        return prompt_language(request.persona, self.language)

    def _ask(
        self,
        step: str,
        chats: list[Chat],
        seeds: list[int],
        parse: Callable[[str], T] | list[Callable[[str], T]],
        schema: Optional[dict[str, Any]] = None,
    ) -> list[T | _Failure]:
        """Each item's parsed answer, or a _Failure saying why it has none. Raises
        StructuredOutputsRefused if the backend refuses `schema`.

        Rounds: everything pending goes to the backend in one call; failures wait one
        backoff and go again, until each item has had 1 + max_retries attempts. Each
        attempt has its own seed: a server that honours seeds would otherwise return the
        same unparsable answer every time.
        """
        parsers = parse if isinstance(parse, list) else [parse] * len(chats)
        results: list[Any] = [None] * len(chats)
        errors = [""] * len(chats)
        attempts = [0] * len(chats)
        pending = list(range(len(chats)))
        for attempt in range(self.max_retries + 1):
            if attempt:
                self._sleep(min(MAX_BACKOFF_S, self.backoff_s * 2 ** (attempt - 1)))
            answers = self._complete([chats[i] for i in pending],
                                     [attempt_seed(seeds[i], step, attempt) for i in pending],
                                     schema)
            still = []
            for i, answer in zip(pending, answers, strict=True):
                attempts[i] += 1
                try:
                    if isinstance(answer, Exception):
                        raise answer
                    results[i] = parsers[i](answer)
                except CompletionError as exc:
                    errors[i] = str(exc) + ("" if exc.retryable else " (not retried)")
                    if exc.retryable:
                        still.append(i)
                except Exception as exc:  # AnswerFormatError, or anything else a parser hit
                    errors[i] = f"{type(exc).__name__}: {exc}"
                    still.append(i)
            pending = still
            if not pending:
                break
        failed = [i for i, r in enumerate(results) if r is None]
        for i in failed:
            tries = f"{attempts[i]} attempt" + ("s" if attempts[i] > 1 else "")
            results[i] = _Failure(f"{step}: no usable answer after {tries}: {errors[i]}")
        if failed:
            print(f"simulator: {step}: {len(failed)}/{len(chats)} answers unusable, fallback "
                  f"used; first: {results[failed[0]].why}", file=sys.stderr, flush=True)
        return results

    def _complete(
        self, batch: list[Chat], seeds: list[int], schema: Optional[dict[str, Any]]
    ) -> list[str | Exception]:
        """The backend's answers; a backend that raises fails the whole batch, not the run,
        unless it raises RlverInputError (a served simulator that never answers: the stage
        fails with its message). A refused schema is raised: the caller asks again without
        one."""
        try:
            answers = self.backend.complete(batch, seeds, schema)
        except RlverInputError:
            raise
        except Exception as exc:
            return [CompletionError(f"backend failed: {type(exc).__name__}: {exc}")] * len(batch)
        if len(answers) != len(batch):
            return [CompletionError(f"backend returned {len(answers)} answers for "
                                    f"{len(batch)} prompts")] * len(batch)
        refused = next((a for a in answers if isinstance(a, StructuredOutputsRefused)), None)
        if refused is not None:
            raise refused
        return answers


def attempt_seed(seed: int, step: str, attempt: int) -> int:
    """A 31-bit sampling seed per (request seed, step, attempt): reproducible, different for
    the two steps and for each retry, and small enough for any server's seed field."""
    digest = hashlib.sha256(f"{seed}/{step}/{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") >> 1
