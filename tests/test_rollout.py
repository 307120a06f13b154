"""Rollouts: token-exact log-probs on the real embedded model (hf engine), reproducible
shards, think-then-say rows, and the no-barrier schedules (with fake engines and
simulators whose timing the tests control)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any, Optional

import pyarrow.parquet as pq
import pytest
import torch

from rlver import algorithms
from rlver.chat import ChatTokens, split_think
from rlver.dialogue import DialogueSpec, run_dialogues
from rlver.engines import Engine, Sampled, SamplingSettings
from rlver.models import load_policy
from rlver.personas import generate
from rlver.rollout import rollout_shard
from rlver.schema import TIMING_COLUMNS, read_trajectories
from rlver.simulator import Feeling, SimRequest, Simulator, Utterance
from rlver.simulator.protocol import ProtocolSettings

from .helpers import CharTokenizer


def _shard(run, personas, shard: int, out):
    rollout_shard(str(run / "config.yaml"), 0, shard, str(run / "iter_0000" / "policy"),
                  str(personas / "train.parquet"), str(out))


def assert_logprobs_match(run, rows: list[dict[str, Any]], atol: float = 2e-3,
                          temperature: float = 1.0) -> None:
    """Stored log-probs of sampled tokens = the policy's recomputed ones; 0 elsewhere."""
    model, _ = load_policy(run / "iter_0000" / "policy")
    checked = 0
    for row in rows:
        ids = torch.tensor([row["input_ids"]])
        mask = torch.tensor(row["loss_mask"]).bool()
        with torch.no_grad():
            recomputed = algorithms.token_logprobs(model(ids).logits, ids, temperature)[0]
        stored = torch.tensor(row["logprobs"])
        assert mask.sum() > 0 and (stored[~mask] == 0).all()
        assert torch.allclose(recomputed[mask], stored[mask], atol=atol), (
            (recomputed[mask] - stored[mask]).abs().max()
        )
        checked += int(mask.sum())
    assert checked > 10


def assert_think_rows(rows: list[dict[str, Any]], penalty: float) -> None:
    """One row per assistant turn; later contexts and the simulator never see thinking."""
    by_dialogue: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        by_dialogue.setdefault(r["dialogue"], []).append(r)
    for turns in by_dialogue.values():
        assert [r["sample"] for r in turns] == list(range(turns[0]["num_turns"]))
        for r in turns:
            mask = r["loss_mask"]
            start = mask.index(1)
            assert all(mask[start:]) and not any(mask[:start])  # one span: this turn only
            assert r["reward"] in (pytest.approx(max(0.0, r["final_emotion"] / 100)), penalty)
            assert r["messages"] == turns[0]["messages"]
            assert all("<think>" not in m["content"] and "</think>" not in m["content"]
                       for m in r["messages"])
        # turn k+1's context extends turn k's context, not turn k's sampled ids
        for a, b in zip(turns, turns[1:], strict=False):
            prompt_a = a["input_ids"][: a["loss_mask"].index(1)]
            assert b["input_ids"][: len(prompt_a)] == prompt_a


def test_stored_logprobs_match_the_policy(tiny_run, tmp_path):
    run, personas = tiny_run
    out = tmp_path / "shard_000.parquet"
    _shard(run, personas, 0, out)
    table, meta = read_trajectories(out)
    assert meta["kind"] == "rollout" and table.num_rows == 2  # 1 persona x 2 samples
    assert_logprobs_match(run, table.to_pylist())


def test_rows_follow_the_protocol(tiny_run, tmp_path):
    run, personas = tiny_run
    out = tmp_path / "s.parquet"
    _shard(run, personas, 1, out)
    rows = read_trajectories(out)[0].to_pylist()
    assert len({r["group_id"] for r in rows}) == 1  # samples_per_persona=2 share a group
    for row in rows:
        assert 1 <= row["num_turns"] <= 2  # simulator.max_turns=2, never one more
        assert len(row["emotion"]) == len(row["reason"]) == row["num_turns"]
        assert all(r.strip() for r in row["reason"])
        assert row["reward"] == pytest.approx(max(0.0, row["final_emotion"] / 100))
        assert row["outcome"] in {"success", "failure", "goodbye", "max_turns"}
        roles = [m["role"] for m in row["messages"]]
        assert roles[0] == "user" and roles.count("assistant") == row["num_turns"]
        # one loss-mask span per assistant reply
        mask = row["loss_mask"]
        spans = sum(1 for i, m in enumerate(mask) if m and (i == 0 or not mask[i - 1]))
        assert spans == row["num_turns"]


def test_rerun_of_a_shard_is_identical(tiny_run, tmp_path):
    run, personas = tiny_run
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    _shard(run, personas, 0, a)
    _shard(run, personas, 0, b)
    ta, tb = pq.read_table(a), pq.read_table(b)
    keep = [c for c in ta.column_names if c not in TIMING_COLUMNS]
    assert ta.select(keep).equals(tb.select(keep))
    assert ta.schema.metadata == tb.schema.metadata


def test_greedy_group_member(make_tiny_run, tmp_path):
    """rollout.greedy_per_group=1: the group's first dialogue is the policy's argmax at
    every token, the other is sampled; both store log-probs at the run's temperature."""
    run, personas = make_tiny_run("rollout.greedy_per_group=1", "rollout.temperature=0.7")
    out = tmp_path / "greedy.parquet"
    _shard(run, personas, 0, out)
    rows = sorted(read_trajectories(out)[0].to_pylist(), key=lambda r: r["dialogue"])
    assert [r["dialogue"] for r in rows] == [0, 1] and rows[0]["group_id"] == rows[1]["group_id"]
    assert_logprobs_match(run, rows, temperature=0.7)
    model, _ = load_policy(run / "iter_0000" / "policy")

    def argmax_share(row: dict[str, Any]) -> float:
        ids = torch.tensor([row["input_ids"]])
        with torch.no_grad():
            best = model(ids).logits[0, :-1].argmax(-1)
        at = [t for t, m in enumerate(row["loss_mask"]) if m and t > 0]
        return sum(int(best[t - 1] == ids[0, t]) for t in at) / len(at)

    assert argmax_share(rows[0]) == 1.0
    assert argmax_share(rows[1]) < 1.0


def test_think_rows_hf(make_tiny_run, tmp_path):
    run, personas = make_tiny_run("template=think", "rollout.max_new_tokens=24",
                                  "algorithm.format_penalty_reward=-0.5")
    out = tmp_path / "think.parquet"
    _shard(run, personas, 0, out)
    rows = read_trajectories(out)[0].to_pylist()
    assert len(rows) == sum(r["num_turns"] for r in rows if r["sample"] == 0)
    assert_think_rows(rows, penalty=-0.5)
    assert_logprobs_match(run, rows)


def test_split_think():
    assert split_think("<think>She is hurt.</think>\n\nThat sounds hard.") == (
        "That sounds hard.", True)
    assert split_think("<think>unclosed thought") == ("", False)
    assert split_think("<think></think>Hi") == ("Hi", False)  # empty thinking
    assert split_think("<think>a</think>") == ("", False)  # no reply
    assert split_think("Hello there") == ("Hello there", False)  # no thinking
    assert split_think("<think>a</think>b<think>c</think>d")[1] is False


def test_after_reply_keeps_only_the_visible_reply(base_model):
    _, tokenizer = load_policy(base_model)
    chat = ChatTokens(tokenizer, "Be kind.")
    history = [{"role": "user", "content": "I lost my job."},
               {"role": "assistant", "content": "I'm sorry."}]
    ids = chat.start("I lost my job.") + chat.after_reply(history, "Thanks.")
    messages = [{"role": "system", "content": "Be kind."}, *history,
                {"role": "user", "content": "Thanks."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert tokenizer.decode(ids) == text


# --- schedules, with fakes -----------------------------------------------------------------


class FakeEngine(Engine):
    """Replies "ok" + stop after `gen_s`; logs (start, end, prompt length) per call."""

    def __init__(self, gen_s: float, concurrent: bool) -> None:
        self.tokenizer = CharTokenizer()
        self.max_context = 10**6
        self.concurrent = concurrent
        self.gen_s = gen_s
        self.calls: list[tuple[float, float, int]] = []
        self.sessions: list[object] = []  # the session key of each agenerate call
        self.ended: list[object] = []

    def _reply(self) -> Sampled:
        return Sampled((ord("o"), ord("k"), 0), (-0.1, -0.2, -0.3), finished=True)

    def generate(self, prompts, settings, seeds):
        t0 = time.perf_counter()
        time.sleep(self.gen_s)
        self.calls.append((t0, time.perf_counter(), len(prompts)))
        return [self._reply() for _ in prompts]

    async def agenerate(self, prompt, settings, seed, *, session=None):
        t0 = time.perf_counter()
        await asyncio.sleep(self.gen_s)
        self.calls.append((t0, time.perf_counter(), 1))
        self.sessions.append(session)
        return self._reply()

    def end_session(self, session):
        self.ended.append(session)


class SlowSim(Simulator):
    """+5 per reply; dialogues whose seed is in `slow` take `slow_s` per call, others
    `fast_s`."""

    def __init__(self, fast_s: float, slow_s: float = 0.0, slow: Sequence[str] = ()) -> None:
        self.fast_s, self.slow_s, self.slow = fast_s, slow_s, set(slow)

    def _wait(self, requests: Sequence[SimRequest]) -> None:
        slow = any(r.persona.persona_id in self.slow for r in requests)
        time.sleep(self.slow_s if slow else self.fast_s)

    def feel(self, requests):
        self._wait(requests)
        return [Feeling(5, "fine") for _ in requests]

    def speak(self, requests, emotions, outcomes: Sequence[Optional[str]]):
        self._wait(requests)
        return [Utterance("go on") for _ in requests]


def _specs(n: int) -> list[DialogueSpec]:
    return [DialogueSpec(p, k, f"g{k}", k) for k, p in enumerate(generate(n, 0, "t"))]


def _run(engine, sims, n=4, turns=3, batch_size=2, schedule="async", **kw):
    protocol = ProtocolSettings(initial_emotion=30, max_delta=None, max_turns=turns,
                                failure_below=1)
    return run_dialogues(_specs(n), engine, sims, protocol, SamplingSettings(4), "sys",
                         batch_size, schedule=schedule, **kw)


def test_async_turns_of_a_dialogue_share_one_session_ended_with_it():
    engine = FakeEngine(0.0, concurrent=True)
    _run(engine, [SlowSim(0.0)], n=3, turns=3)
    keys = set(engine.sessions)
    assert len(keys) == 3 and None not in keys
    assert all(engine.sessions.count(k) == 3 for k in keys)  # one key per dialogue
    assert sorted(map(id, engine.ended)) == sorted(map(id, keys))  # each ended once
    for kw in ({"sessions": False}, {"think": True}):  # think contexts are not append-only
        engine = FakeEngine(0.0, concurrent=True)
        _run(engine, [SlowSim(0.0)], n=2, turns=2, **kw)
        assert engine.sessions == [None] * 4 and engine.ended == []



class LongSim(SlowSim):
    """+5 per reply; says a 40-character line."""

    def speak(self, requests, emotions, outcomes: Sequence[Optional[str]]):
        return [Utterance("x" * 40) for _ in requests]


@pytest.mark.parametrize("schedule", ["async", "batched"])
def test_the_simulated_users_messages_are_cut_to_max_user_tokens(schedule, capsys):
    """The context check counts every user message, the opening line too, as at most
    simulator.max_user_tokens of the policy's tokens (one a character here): longer ones
    are cut, for the policy and the simulator alike, and the log says so."""
    engine = FakeEngine(0.0, concurrent=True)
    dialogues = _run(engine, [LongSim(0.0)], n=2, turns=3, schedule=schedule,
                     max_user_tokens=10)
    for d in dialogues:
        users = [m.content for m in d.messages if m.role == "user"]
        assert users[0] == d.persona.opening_line[:10] and len(users) == 4
        assert users[1:] == ["x" * 10] * 3
        assert "x" * 11 not in "".join(map(chr, d.sequence()[0]))
    assert "a simulated user's message of 40 tokens cut to simulator.max_user_tokens=10" in (
        capsys.readouterr().err)
    whole = _run(FakeEngine(0.0, concurrent=True), [LongSim(0.0)], n=1, turns=1,
                 schedule=schedule)[0]
    assert [m.content for m in whole.messages if m.role == "user"][1] == "x" * 40

class GatedSim(SlowSim):
    """+5 per reply; a `feel` call waits (on a condition, not a clock) until `ready(persona,
    k)` holds, k counting that persona's (or batch's) feel calls from 1. A schedule that
    holds the awaited work back behind this call never lets it hold: the call then gives up
    after `patience` seconds and the test fails with `what` (a deadlock guard, not a
    timing)."""

    def __init__(self, shared: dict[str, Any], ready, what: str, patience: float = 60.0) -> None:
        super().__init__(0.0)
        self.shared, self.ready, self.what, self.patience = shared, ready, what, patience

    def feel(self, requests):
        cond, counts = self.shared["cond"], self.shared["feels"]
        key = requests[0].persona.persona_id
        with cond:
            counts[key] = counts.get(key, 0) + 1
            cond.notify_all()
            if not cond.wait_for(lambda: self.ready(key, counts[key]), self.patience):
                self.shared["stuck"].append(f"{key} call {counts[key]}: {self.what}")
        return super().feel(requests)


def _gate() -> dict[str, Any]:
    return {"cond": threading.Condition(), "feels": {}, "stuck": []}


def test_async_slow_simulator_call_holds_back_only_its_own_dialogue():
    """The slow dialogue's first simulator call answers only once the three others have
    finished all their turns: that happens only if nothing waits for the slow call."""
    specs = _specs(4)
    slow_id = specs[0].persona.persona_id
    shared = _gate()
    others_done = lambda key, k: key != slow_id or sum(  # noqa: E731
        n for p, n in shared["feels"].items() if p != slow_id) == 3 * 3
    sims = [GatedSim(shared, others_done, "the other dialogues never finished")
            for _ in range(4)]
    dialogues = _run(FakeEngine(0.01, concurrent=True), sims, n=4, turns=3)
    assert shared["stuck"] == []
    assert all(d.outcome == "max_turns" and len(d.emotion) == 3 for d in dialogues)


class StartCountingEngine(FakeEngine):
    """FakeEngine that counts the calls it has started, under the gate's condition."""

    def __init__(self, gen_s: float, shared: dict[str, Any]) -> None:
        super().__init__(gen_s, concurrent=False)
        self.shared = shared
        shared["started"] = 0

    def generate(self, prompts, settings, seeds):
        with self.shared["cond"]:
            self.shared["started"] += 1
            self.shared["cond"].notify_all()
        return super().generate(prompts, settings, seeds)


def test_batched_engine_works_while_the_simulator_answers():
    """With two batches, batch 1 generates its next turn while batch 2's simulator answers:
    batch 2's k-th simulator call waits until the engine has started batch 1's turn k+1
    (call 2k+1 of A1 B1 A2 B2 A3 B3), which a barrier per turn never starts."""
    shared = _gate()
    engine = StartCountingEngine(0.05, shared)
    batch_2 = {p.persona.persona_id for p in _specs(4)[2:]}
    next_turn_started = lambda key, k: (  # noqa: E731
        key not in batch_2 or 2 * k + 1 > 6 or shared["started"] >= 2 * k + 1)
    sims = [GatedSim(shared, next_turn_started, "batch 1's next turn never started",
                     patience=20.0) for _ in range(2)]
    dialogues = _run(engine, sims, n=4, turns=3, batch_size=2, schedule="batched")
    assert shared["stuck"] == []
    assert all(len(d.emotion) == 3 for d in dialogues)
    assert [c[2] for c in engine.calls] == [2] * 6


def test_async_needs_a_concurrent_engine():
    with pytest.raises(ValueError, match="concurrent engine"):
        _run(FakeEngine(0.0, concurrent=False), [SlowSim(0.0)], schedule="async")


class ThinkEngine(FakeEngine):
    """Batch row 0 thinks well ("<think>hmm</think>hi"), row 1 leaves its block open."""

    def generate(self, prompts, settings, seeds):
        texts = ["<think>hmm</think>hi", "<think>oops"]
        return [Sampled(tuple(map(ord, texts[i % 2])) + (0,), (-0.5,) * (len(texts[i % 2]) + 1),
                        finished=True) for i in range(len(prompts))]


def test_think_rows_format_penalty_and_hidden_thinking():
    engine = ThinkEngine(0.0, concurrent=False)
    protocol = ProtocolSettings(initial_emotion=30, max_delta=None, max_turns=3,
                                failure_below=1)
    dialogues = run_dialogues(_specs(2), engine, SlowSim(0.0), protocol, SamplingSettings(20),
                              "sys", 2, think=True, schedule="batched")
    good, bad = (d.to_rows(0, 0, format_penalty=-1.0) for d in dialogues)
    assert [r["sample"] for r in good] == [0, 1, 2] and len(bad) == 3
    assert all(r["reward"] == pytest.approx(0.45) for r in good)  # 30 + 3 x 5
    assert all(r["reward"] == -1.0 for r in bad)
    assert [m["content"] for m in good[0]["messages"] if m["role"] == "assistant"] == ["hi"] * 3
    assert [m["content"] for m in bad[0]["messages"] if m["role"] == "assistant"] == [""] * 3
    last = engine.tokenizer.decode(good[2]["input_ids"])
    assert last.count("<assistant>hi</>") == 2 and last.count("hmm") == 1  # this turn's only
    assert_think_rows(good + bad, penalty=-1.0)


def test_config_groups_and_schedule_check():
    from rlver import config
    from rlver.errors import RlverInputError

    cfg = config.compose("smoke", ["rollout=vllm", "template=think"])
    assert (cfg.rollout.engine, cfg.rollout.schedule, cfg.template.name) == (
        "vllm", "async", "think")
    with pytest.raises(RlverInputError, match="rollout.schedule"):
        config.compose("smoke", ["rollout.schedule=async"])  # hf cannot serve it
    assert config.compose("smoke", ["rollout.greedy_per_group=3"]).rollout.greedy_per_group == 3
    with pytest.raises(RlverInputError, match="rollout.greedy_per_group.*sampled member"):
        config.compose("smoke", ["rollout.greedy_per_group=4"])  # smoke's groups are 4
    with pytest.raises(RlverInputError, match="rollout.greedy_per_group.*vllm"):
        config.compose("smoke", ["rollout=vllm", "rollout.greedy_per_group=1"])
    assert config.compose("smoke", ["rollout.max_sentences=2"]).rollout.max_sentences == 2
    for bad, key in ((["rollout.max_sentences=0"], "rollout.max_sentences must be null or"),
                     (["evaluation.max_sentences=0"], "evaluation.max_sentences must be null"),
                     (["rollout=vllm", "rollout.max_sentences=1"], "rollout.max_sentences.*vllm"),
                     (["template=think", "evaluation.max_sentences=1"],
                      "evaluation.max_sentences.*think")):
        with pytest.raises(RlverInputError, match=key):
            config.compose("smoke", bad)
