"""The update through submitit's local executor and DeepSpeed, on the real model; the
plan of optimizer steps and micro-batches; the algorithm's config checks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlver import algorithms, config
from rlver.errors import RlverInputError
from rlver.models import load_policy
from rlver.rollout import rollout_shard
from rlver.schema import read_trajectories, write_trajectories
from rlver.train import UpdateSpec, run_update
from rlver.train.advantages import advantages
from rlver.train.launch import check_inputs, job_parameters
from rlver.train.orphans import clear_extension_locks, local_job_processes, running
from rlver.train.plan import make_plan, pack

from .helpers import BIN, TINY


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
    run, personas = make_tiny_run("algorithm.lr=1e-4", "algorithm.keep_state_iterations=0")
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


def _orphan_a_local_job(spec: UpdateSpec) -> list[int]:
    """Start `rlver update` and SIGKILL it once its submitit job is running, as when
    Snakemake is killed: the job's processes (local controller and task) live on."""
    job_file = Path(spec.update_dir) / "job.json"
    runner = subprocess.Popen(
        [str(BIN / "rlver"), "update", "--config", spec.config_path, "--iteration",
         str(spec.iteration), "--policy", spec.policy_dir, "--rollouts", *spec.rollout_paths,
         "--out-policy", spec.out_policy_dir, "--update-dir", spec.update_dir])
    deadline = time.monotonic() + 120
    while not job_file.is_file() and runner.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    runner.kill()
    runner.wait()
    job_id = int(json.loads(job_file.read_text())["job_id"])
    while len(pids := local_job_processes(job_id, str(Path(spec.update_dir) / "submitit"))) < 2:
        assert time.monotonic() < deadline, pids  # the controller starts its task
        time.sleep(0.2)
    return pids  # the controller and its task, orphaned


@pytest.mark.slow
def test_update_stops_an_orphaned_job_then_changes_weights_and_lowers_the_loss(
        rollouts, capfd):
    run, paths = rollouts
    old, new = run / "iter_0000" / "policy", run / "iter_0001" / "policy"
    spec = UpdateSpec(str(run / "config.yaml"), 0, str(old), paths, str(new),
                      str(run / "iter_0000" / "update"))
    orphans = _orphan_a_local_job(spec)
    time.sleep(2)
    assert all(running(pid) for pid in orphans)  # SIGKILL of the runner left them
    # A task killed while it loads a DeepSpeed op leaves the op's build lock behind (seen
    # here once, by timing): put one there, as that moment's kill would. Its op folder is
    # made up, so that a real op's lock, taken at this moment by a test in the other
    # worker, is not touched.
    lock = Path(os.environ["TORCH_EXTENSIONS_DIR"]) / f"rlver_test_op_{os.getpid()}" / "lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    lock.touch()
    try:
        metrics = run_update(spec)  # the rerun
    finally:
        shutil.rmtree(lock.parent, ignore_errors=True)
    err = capfd.readouterr().err
    assert "an earlier submission of this update that is still running" in err
    assert "left by the stopped job" in err and not lock.exists()
    assert not any(running(pid) for pid in orphans)
    assert metrics["num_samples"] == 4 and metrics["grad_norm"] > 0
    assert json.loads((run / "iter_0000/update/metrics.json").read_text()) == metrics
    assert (run / "tensorboard/events.out.tfevents.update.iter_0000").is_file()
    w_old, w_new = load_file(old / "model.safetensors"), load_file(new / "model.safetensors")
    changed = sum(not torch.equal(w_old[k], w_new[k]) for k in w_old)
    assert changed > len(w_old) // 2
    rows = [r for p in paths for r in read_trajectories(p)[0].to_pylist()]
    before, after = grpo_loss(old, rows), grpo_loss(new, rows)
    assert metrics["loss"] == pytest.approx(before, abs=1e-3)
    assert after < before - 1e-3, (before, after)


def test_only_locks_nobody_holds_are_cleared(tmp_path, monkeypatch, capfd):
    """A build lock that a living process holds open (torch's FileBaton keeps it open
    while it builds or loads the op) belongs to another job; a stale one goes."""
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    held, stale, old = (tmp_path / op / "lock" for op in ("held_op", "stale_op", "old_op"))
    for lock in (old, held, stale):
        lock.parent.mkdir()
    old.touch()
    os.utime(old, (1.0, 1.0))  # before the stopped job was submitted: not its lock
    fd = os.open(held, os.O_CREAT | os.O_EXCL)  # as FileBaton.try_acquire does
    stale.touch()
    try:
        clear_extension_locks(since=time.time() - 60)
    finally:
        os.close(fd)
    assert held.exists() and old.exists() and not stale.exists()
    assert str(stale) in capfd.readouterr().err


def test_update_refuses_rollouts_of_another_policy(tiny_run, base_model, tmp_path):
    run, _ = tiny_run
    cfg = config.load(run / "config.yaml")
    row = {"iteration": 0, "shard": 0, "dialogue": 0, "sample": 0, "persona_id": "p",
           "group_id": "g", "seed": 1, "messages": [], "input_ids": [1, 2], "loss_mask": [0, 1],
           "logprobs": [0.0, -0.5], "emotion_start": 30, "emotion": [35], "delta": [5],
           "reason": ["+5"], "parse_error": [False],
           "truncated": [False], "num_turns": 1, "outcome": "max_turns",
           "final_emotion": 35, "reward": 0.35, "seconds": 0.1}
    paths = (str(tmp_path / "shard.parquet"),)
    from rlver.io import weights_sha256

    write_trajectories(paths[0], [row], config_hash=config.config_hash(cfg),
                       policy_sha256=weights_sha256(base_model), kind="rollout")
    other = tmp_path / "other"
    other.mkdir()
    for f in base_model.iterdir():
        if f.name != "weights.sha256":  # a new policy: its own weights, no stale record
            (other / f.name).write_bytes(f.read_bytes())
    w = load_file(other / "model.safetensors")
    w["model.norm.weight"] += 1
    from safetensors.torch import save_file

    save_file(w, other / "model.safetensors")
    check_inputs(UpdateSpec(str(run / "config.yaml"), 0, str(base_model), paths,
                            str(tmp_path / "new"), str(tmp_path / "upd")))
    spec = UpdateSpec(str(run / "config.yaml"), 0, str(other), paths,
                      str(tmp_path / "new"), str(tmp_path / "upd"))
    with pytest.raises(RlverInputError, match="policy_sha256"):
        check_inputs(spec)


def test_micro_batches_keep_to_the_token_budget():
    lengths = [100, 40, 90, 30, 10, 300]
    micro = pack(list(range(6)), lengths, max_rows=3, max_tokens=200)
    # longest first; 300 is over the budget and alone; 2 x 100 fits, 3 x 90 would not
    assert micro == [[5], [0, 2], [1, 3, 4]]
    assert all(len(m) * max(lengths[r] for r in m) <= 200 for m in micro[1:])
    assert pack(list(range(6)), lengths, max_rows=2, max_tokens=0) == [[5, 0], [2, 1], [3, 4]]


def test_two_ranks_share_the_micro_batches_of_one_rank():
    alg = config.compose("smoke", [*TINY, "algorithm.ppo_epochs=2", "algorithm.mini_batches=2",
                                   "algorithm.micro_batch_size=1"]).algorithm
    lengths, actions = [50, 60, 70, 80, 90], [5, 6, 7, 8, 9]
    one = make_plan(lengths, actions, alg, 0, 3, rank=0, world=1)
    two = [make_plan(lengths, actions, alg, 0, 3, rank=r, world=2) for r in (0, 1)]
    assert len(one) == len(two[0]) == len(two[1]) == 4  # 2 epochs x 2 mini-batches
    for k, step in enumerate(one):
        rows = sorted(r for mb in step.micro for r in mb.rows)
        shared = [mb for rank in two for mb in rank[k].micro if mb.weight]
        assert sorted(r for mb in shared for r in mb.rows) == rows  # same rows, once each
        assert len(two[0][k].micro) == len(two[1][k].micro)  # a filler evens out 5 rows
        assert step.tokens == two[0][k].tokens == sum(actions[r] for r in rows)
    # each epoch sees every row once, in a seeded order
    assert sorted(r for step in one[:2] for mb in step.micro for r in mb.rows) == list(range(5))
    assert one == make_plan(lengths, actions, alg, 0, 3, rank=0, world=1)


def test_turn_credit_gives_each_reply_its_own_advantage():
    # two dialogues of one group, replies at tokens 1-2 and 5; user start 50
    mask = [0, 1, 1, 0, 0, 1]
    rows = [{"group_id": "g", "input_ids": list(range(6)), "loss_mask": mask,
             "logprobs": [0.0] * 6, "emotion_start": 50,
             "emotion": e, "reward": e[-1] / 100} for e in ([60, 40], [40, 30])]
    alg = config.compose("smoke").algorithm
    alg.adv_eps = 0.0
    final = advantages(rows, {}, alg)
    assert [final[i]["adv"].tolist() for i in (0, 1)] == [
        pytest.approx([1.0] * 3), pytest.approx([-1.0] * 3)]
    alg.credit = "turn"
    # reply 1: returns -0.1 vs -0.2 -> +1, -1; reply 2: -0.2 vs -0.1 -> -1, +1
    turn = advantages(rows, {}, alg)
    assert [turn[i]["adv"].tolist() for i in (0, 1)] == [
        pytest.approx([1.0, 1.0, -1.0]), pytest.approx([-1.0, -1.0, 1.0])]
    # PPO: each reply's own change on its last token, so the returns are rewards-to-go
    ppo = config.compose("smoke", ["algorithm=ppo", "algorithm.credit=turn"]).algorithm
    terms = {i: {"old_values": torch.zeros(3)} for i in (0, 1)}
    out = advantages(rows, terms, ppo)
    assert out[0]["returns"].tolist() == pytest.approx([-0.1, -0.1, -0.2])
    assert out[1]["returns"].tolist() == pytest.approx([-0.2, -0.2, -0.1])


def test_turn_credit_is_refused_with_think():
    with pytest.raises(RlverInputError, match="algorithm.credit"):
        config.compose("smoke", ["algorithm.credit=turn", "template.name=think"])
    assert config.compose("smoke", ["algorithm.credit=turn"]).algorithm.credit == "turn"


@pytest.mark.parametrize(("override", "key"), [
    ("algorithm.name=a2c", "algorithm.name"),
    ("algorithm.kl_estimator=k2", "algorithm.kl_estimator"),
    ("algorithm.mini_batches=0", "algorithm.mini_batches"),
    ("algorithm.gae_lambda=1.5", "algorithm.gae_lambda"),
    ("algorithm.credit=dialogue", "algorithm.credit"),
])
def test_bad_algorithm_values_are_named(override, key):
    with pytest.raises(RlverInputError, match=key):
        config.compose("smoke", [override])


def test_ppo_needs_its_critic_carried():
    with pytest.raises(RlverInputError, match="keep_state_iterations"):
        config.compose("smoke", ["algorithm=ppo", "algorithm.keep_state_iterations=0"])
    ppo = config.compose("smoke", ["algorithm=ppo"]).algorithm
    assert (ppo.critic_lr, ppo.critic_warmup_ratio, ppo.value_clip, ppo.gamma, ppo.gae_lambda,
            ppo.entropy_coef, ppo.kl_coef, ppo.ppo_epochs) == (5e-6, 0.05, 0.5, 1.0, 1.0,
                                                               0.001, 0.0, 1)


def test_job_parameters_give_the_local_job_its_gpus():
    """cluster.gpus_per_node reaches submitit on both launchers (locally it sets
    CUDA_VISIBLE_DEVICES; it used to be dropped, so a GPU workstation trained on CPU)."""
    local = job_parameters(config.compose("smoke", []), 3)
    assert local["gpus_per_node"] == 0 and local["name"] == "rlver-update-smoke-0003"
    assert "slurm_partition" not in local
    assert job_parameters(config.compose("smoke", ["cluster.gpus_per_node=1"]), 0)[
        "gpus_per_node"] == 1
    slurm = job_parameters(config.compose("smoke", ["cluster=slurm"]), 0)
    assert slurm["gpus_per_node"] == 1 and slurm["slurm_partition"] == "gpu"
