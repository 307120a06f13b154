"""The GRPO update through submitit's local executor and DeepSpeed, on the real model."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rlver import algorithms
from rlver.errors import RlverInputError
from rlver.models import load_policy
from rlver.rollout import rollout_shard
from rlver.schema import read_trajectories, write_trajectories
from rlver.update import UpdateSpec, check_inputs, run_update


def grpo_loss(policy_dir, rows, clip=0.2) -> float:
    """Token-mean clipped surrogate of `rows` under the policy at `policy_dir`."""
    model, _ = load_policy(policy_dir)
    rewards = torch.tensor([r["reward"] for r in rows])
    adv = algorithms.group_advantages(rewards, [r["group_id"] for r in rows], 1e-6)
    total, tokens = 0.0, 0
    for row, a in zip(rows, adv.tolist(), strict=True):
        ids = torch.tensor([row["input_ids"]])
        mask = torch.tensor([row["loss_mask"]], dtype=torch.float32)
        with torch.no_grad():
            logp = algorithms.token_logprobs(model(ids).logits, ids)
        loss, _ = algorithms.clipped_surrogate(logp, torch.tensor([row["logprobs"]]),
                                               torch.full_like(logp, a), clip)
        total += algorithms.masked_sum(loss, mask).item()
        tokens += int(mask.sum())
    return total / tokens


@pytest.fixture()
def rollouts(make_tiny_run):
    """Iteration 0's two shards, with rewards spread inside each group so that the GRPO
    advantages are non-zero whatever the simulator said. A large learning rate for one
    step puts the effect of the update well above float noise."""
    run, personas = make_tiny_run("algorithm.lr=1e-4")
    paths = []
    for shard in (0, 1):
        path = run / "iter_0000" / "rollouts" / f"shard_{shard:03d}.parquet"
        rollout_shard(str(run / "config.yaml"), 0, shard, str(run / "iter_0000" / "policy"),
                      str(personas / "train.parquet"), str(path))
        table, meta = read_trajectories(path)
        rows = table.to_pylist()
        for i, row in enumerate(rows):
            row["reward"] = 0.2 + 0.6 * (i % 2)
        write_trajectories(path, rows, config_hash=meta["config_hash"],
                           policy_sha256=meta["policy_sha256"], kind="rollout")
        paths.append(str(path))
    return run, tuple(paths)


def test_update_changes_weights_and_lowers_the_loss(rollouts, tmp_path):
    run, paths = rollouts
    old, new = run / "iter_0000" / "policy", run / "iter_0001" / "policy"
    spec = UpdateSpec(str(run / "config.yaml"), 0, str(old), paths, str(new),
                      str(run / "iter_0000" / "update"))
    metrics = run_update(spec)
    assert metrics["num_samples"] == 4 and metrics["grad_norm"] > 0
    assert json.loads((run / "iter_0000/update/metrics.json").read_text()) == metrics
    assert list((run / "iter_0000/update/tensorboard").glob("events.out.tfevents.*"))
    w_old, w_new = load_file(old / "model.safetensors"), load_file(new / "model.safetensors")
    changed = sum(not torch.equal(w_old[k], w_new[k]) for k in w_old)
    assert changed > len(w_old) // 2
    rows = [r for p in paths for r in read_trajectories(p)[0].to_pylist()]
    before, after = grpo_loss(old, rows), grpo_loss(new, rows)
    assert metrics["loss"] == pytest.approx(before, abs=1e-3)
    assert after < before - 1e-3, (before, after)


def test_update_refuses_rollouts_of_another_policy(rollouts, base_model, tmp_path):
    run, paths = rollouts
    other = tmp_path / "other"
    other.mkdir()
    for f in base_model.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    w = load_file(other / "model.safetensors")
    w["model.norm.weight"] += 1
    from safetensors.torch import save_file

    save_file(w, other / "model.safetensors")
    spec = UpdateSpec(str(run / "config.yaml"), 0, str(other), paths,
                      str(tmp_path / "new"), str(tmp_path / "upd"))
    with pytest.raises(RlverInputError, match="policy_sha256"):
        check_inputs(spec)
