"""Rollouts on the real embedded model: token-exact log-probs, reproducible shards."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch

from rlver import algorithms
from rlver.models import load_policy
from rlver.rollout import rollout_shard
from rlver.schema import TIMING_COLUMNS, read_trajectories


def _shard(run, personas, shard: int, out):
    rollout_shard(str(run / "config.yaml"), 0, shard, str(run / "iter_0000" / "policy"),
                  str(personas / "train.parquet"), str(out))


def test_stored_logprobs_match_the_policy(tiny_run, tmp_path):
    run, personas = tiny_run
    out = tmp_path / "shard_000.parquet"
    _shard(run, personas, 0, out)
    table, meta = read_trajectories(out)
    assert meta["kind"] == "rollout" and table.num_rows == 2  # 1 persona x 2 samples
    model, _ = load_policy(run / "iter_0000" / "policy")
    checked = 0
    for row in table.to_pylist():
        ids = torch.tensor([row["input_ids"]])
        mask = torch.tensor(row["loss_mask"]).bool()
        with torch.no_grad():
            recomputed = algorithms.token_logprobs(model(ids).logits, ids)[0]
        stored = torch.tensor(row["logprobs"])
        assert mask.sum() > 0 and (stored[~mask] == 0).all()
        assert torch.allclose(recomputed[mask], stored[mask], atol=2e-3), (
            (recomputed[mask] - stored[mask]).abs().max()
        )
        checked += int(mask.sum())
    assert checked > 10


def test_rows_follow_the_protocol(tiny_run, tmp_path):
    run, personas = tiny_run
    out = tmp_path / "s.parquet"
    _shard(run, personas, 1, out)
    for row in read_trajectories(out)[0].to_pylist():
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
