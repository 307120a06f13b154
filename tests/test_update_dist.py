"""The update job on several ranks and under preemption, through submitit's local executor
(gloo on CPU), on the real model and real rollouts; and on two nodes of the loopback Slurm
cluster (`tests/slurm/cluster.sh start --nodes 2`, partition `nodes`), one rank on each.

Every run here is one iteration of 4 optimizer steps (2 epochs x 2 mini-batches of the 4
rollout rows); one rank accumulates 2 micro-batches per step, two ranks run 1 each. The
old log-probs are the trainer's (`algorithm.old_logprobs=recompute`): a requeued job takes
them from its checkpoint, or its steps would differ from the uninterrupted job's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rlver.digest import column_hashes
from rlver.layout import Run
from rlver.models import link_tree
from rlver.train import UpdateSpec, run_update, submit_update

from . import helpers as h
from .helpers import (
    CLUSTER,
    SLURM_DIR,
    SLURM_UPDATE,
    preempt_after,
    squeue,
    start_cluster,
    update_spec,
)

pytestmark = pytest.mark.slow

STEPS = ["iterations=1", "algorithm.lr=1e-5", "algorithm.ppo_epochs=2",
         "algorithm.mini_batches=2", "algorithm.micro_batch_size=1",
         "algorithm.old_logprobs=recompute"]
COMPARED = ("loss", "grad_norm", "entropy", "approx_kl", "clip_frac", "value_loss")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    wd = tmp_path_factory.mktemp("updates")
    yield wd
    shutil.rmtree(wd, ignore_errors=True)  # policies of every run: keep the disk clean


def make_spec(workdir: Path, base_model: Path, rows: list[dict], name: str,
              *overrides: str) -> UpdateSpec:
    """A run `name` whose iteration 0 has `rows` as its rollouts, under `overrides`."""
    return update_spec(workdir, base_model, rows, name, *STEPS, *overrides)


def weights(policy_dir: str) -> dict[str, torch.Tensor]:
    return load_file(Path(policy_dir) / "model.safetensors")


def assert_same_trajectory(a: dict, b: dict, **tol: float) -> None:
    assert len(a["steps"]) == len(b["steps"]) == 4
    for step_a, step_b in zip(a["steps"], b["steps"], strict=True):
        for key in COMPARED:
            assert step_a[key] == pytest.approx(step_b[key], **tol), (key, step_a, step_b)


@pytest.fixture(scope="module")
def grpo_two_ranks(workdir, base_model, rows):
    spec = make_spec(workdir, base_model, rows, "two", "cluster.tasks_per_node=2")
    results = submit_update(spec).results()
    return spec, results


def test_two_ranks_follow_one_rank_with_gradient_accumulation(workdir, base_model, rows,
                                                               grpo_two_ranks):
    one_spec = make_spec(workdir, base_model, rows, "one")
    one = run_update(one_spec)
    two_spec, (two, two_rank1) = grpo_two_ranks
    assert one["world_size"] == 1 and two["world_size"] == 2
    assert_same_trajectory(one, two, rel=1e-5, abs=1e-7)
    assert two["steps"][-1]["approx_kl"] > 1e-3  # the policy did move
    # both ranks end with the same weights, bit for bit
    assert two["weights_sha256"] is not None
    assert two_rank1 == {"rank": 1, "weights_sha256": two["weights_sha256"]}
    w1, w2 = weights(one_spec.out_policy_dir), weights(two_spec.out_policy_dir)
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) <= 1e-6


def test_preempted_update_requeues_and_ends_with_the_uninterrupted_weights(
        workdir, base_model, rows, grpo_two_ranks):
    ref_spec, (ref, _) = grpo_two_ranks
    spec = make_spec(workdir, base_model, rows, "preempted", "cluster.tasks_per_node=2")
    job = submit_update(spec)
    preempt_after(job, "step 1/4")
    got, rank1 = job.results()
    log = job.stderr()
    assert "this job is preempted" in log and "resumed after step" in log, log
    assert len(got["resumed_at_steps"]) == 1 and 1 <= got["resumed_at_steps"][0] < 4
    assert_same_trajectory(got, ref, rel=0, abs=0)
    assert got["weights_sha256"] == rank1["weights_sha256"] == ref["weights_sha256"]
    w_ref, w_got = weights(ref_spec.out_policy_dir), weights(spec.out_policy_dir)
    assert all(torch.equal(w_ref[k], w_got[k]) for k in w_ref)
    assert not (Path(spec.update_dir) / "resume").exists()


def test_a_one_step_update_preempted_in_its_step_checkpoints_before_the_export(
        workdir, base_model, rows):
    """The paper's one optimizer step per update: a signal during that step is acted on
    at its end, before the export (a checkpoint and a requeue, not Slurm's kill at the
    time limit), and the requeued job exports the uninterrupted job's weights."""
    one_step = ("algorithm.ppo_epochs=1", "algorithm.mini_batches=1")
    ref_spec = make_spec(workdir, base_model, rows, "one_step", *one_step)
    ref = run_update(ref_spec)
    spec = make_spec(workdir, base_model, rows, "one_step_preempted", *one_step)
    job = submit_update(spec)
    preempt_after(job, "fresh optimizer state")  # logged before the step begins
    got = job.results()[0]
    log = job.stderr()
    assert "this job is preempted" in log and "resumed after step 1/1" in log, log
    assert got["resumed_at_steps"] == [1]
    assert got["steps"] == ref["steps"]
    w_ref, w_got = weights(ref_spec.out_policy_dir), weights(spec.out_policy_dir)
    assert all(torch.equal(w_ref[k], w_got[k]) for k in w_ref)
    assert not (Path(spec.update_dir) / "resume").exists()


def test_preempted_ppo_resumes_its_critic_and_values(workdir, base_model, rows):
    """PPO: the critic's engine and the rollout-time values come back from the checkpoint
    too (value losses after the resume depend on both)."""
    ref_spec = make_spec(workdir, base_model, rows, "ppo", "algorithm=ppo")
    ref = run_update(ref_spec)
    spec = make_spec(workdir, base_model, rows, "ppo_preempted", "algorithm=ppo")
    job = submit_update(spec)
    preempt_after(job, "step 1/4")
    got = job.results()[0]
    assert len(got["resumed_at_steps"]) == 1
    assert_same_trajectory(got, ref, rel=0, abs=0)
    assert [s["critic_grad_norm"] for s in got["steps"]] == [
        s["critic_grad_norm"] for s in ref["steps"]]
    assert ref["steps"][-1]["value_loss"] < ref["steps"][0]["value_loss"]  # the critic learns
    w_ref, w_got = weights(ref_spec.out_policy_dir), weights(spec.out_policy_dir)
    assert all(torch.equal(w_ref[k], w_got[k]) for k in w_ref)


def test_zero3_bf16_on_two_ranks_trains_and_exports(workdir, base_model, rows, grpo_two_ranks):
    """ZeRO-3 shards the weights over the ranks and bf16 runs the forward in bfloat16: the
    same batch gives nearly the same first loss as fp32 ZeRO-0, the export gathers the
    full weights on all ranks (collective) into a loadable policy, and it has learned."""
    from rlver.models import load_policy

    _, (ref, _) = grpo_two_ranks
    spec = make_spec(workdir, base_model, rows, "zero3", "cluster.tasks_per_node=2",
                     "algorithm.zero_stage=3", "algorithm.precision=bf16")
    got, _rank1 = submit_update(spec).results()
    assert got["world_size"] == 2 and len(got["steps"]) == 4
    assert got["steps"][0]["loss"] == pytest.approx(ref["steps"][0]["loss"], abs=0.05)
    assert got["steps"][-1]["approx_kl"] > 1e-4  # the policy moved in its bf16 weights too
    new, base = weights(spec.out_policy_dir), weights(str(base_model))
    assert new.keys() == base.keys()
    changed = sum(not torch.equal(new[k].float(), base[k].float()) for k in base)
    assert changed > len(base) // 2, f"only {changed} of {len(base)} tensors changed"
    model, _ = load_policy(spec.out_policy_dir)
    assert sum(p.numel() for p in model.parameters()) > 1e8


@pytest.fixture()
def two_nodes():
    """Nodes rlver-n1 and rlver-n2 of the loopback cluster (partition `nodes`): two slurmd
    on this machine, each in its own UTS namespace."""
    yield from start_cluster("nodes")


#: The update job on partition `nodes`, one rank on each of its two nodes.
TWO_NODES = [*(o for o in SLURM_UPDATE if not o.startswith("cluster.partition=")),
             "cluster.partition=nodes", "cluster.nodes=2", "cluster.tasks_per_node=1"]


def kill_node(name: str) -> list[int]:
    """SIGKILL every process of test node `name`: its slurmd and its job's processes, all
    in the UTS namespace the node's slurmd runs in. Returns their ids."""
    slurmd = int((SLURM_DIR / f"slurmd-{name}.pid").read_text())
    uts = os.readlink(f"/proc/{slurmd}/ns/uts")
    killed = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{pid}/ns/uts") == uts:
                os.kill(int(pid), signal.SIGKILL)
                killed.append(int(pid))
        except OSError:  # gone meanwhile
            pass
    return killed


def test_two_nodes_follow_two_ranks_on_one_through_a_lost_node(
        workdir, base_model, rows, grpo_two_ranks, two_nodes):
    """One rank on each of two Slurm nodes (submitit, gloo over loopback): the rendezvous
    on the first node's name, local ranks from 0 on each node. Node rlver-n2 dies after
    step 1 (its slurmd and its rank, SIGKILL): Slurm marks it down and requeues the job
    (JobRequeue=1), which waits for two nodes; once the node is back, the job runs again
    and ends with the update of two ranks on one node, the policy exported once.

    (One test for both, so the suite pays for one extra update job, not two.)"""
    ref_spec, (ref, _) = grpo_two_ranks
    spec = make_spec(workdir, base_model, rows, "nodes", *TWO_NODES)
    job = submit_update(spec)
    deadline = time.monotonic() + 600
    while "step 1/4" not in (job.stderr() or ""):
        assert job.state not in ("FAILED", "COMPLETED"), job.stderr()
        assert time.monotonic() < deadline, f"no step 1 in 10 min:\n{squeue()}"
        time.sleep(1)
    nodes = ("rlver-n1", "rlver-n2")
    for rank, node in enumerate(nodes):
        log = job.task(rank).stderr() or ""
        assert f"rank {rank}/2 (local rank 0) on {node}; nodes {','.join(nodes)}; " \
               f"rendezvous at {nodes[0]}:" in log, log[-3000:]
    assert kill_node(nodes[1])
    while (state := squeue("--states=all", "-j", job.job_id, fmt="%T")) != "PENDING":
        assert state not in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), \
            f"the job ended {state} instead of requeueing:\n{job.stderr()[-3000:]}"
        assert time.monotonic() < deadline, f"the job was not requeued:\n{squeue()}"
        time.sleep(1)
    # not responding (`*`), or already down: the requeue can come first
    assert "*" in squeue_nodes(nodes[1]) or "down" in squeue_nodes(nodes[1])
    subprocess.run([str(CLUSTER), "start", "--nodes", "2"], check=True, timeout=600)
    got, rank1 = job.results()
    assert job.stderr().count("rank 0/2 (local rank 0) on rlver-n1") == 2  # run, rerun
    assert got["world_size"] == 2 and got["resumed_at_steps"] == []
    assert_same_trajectory(ref, got, rel=1e-5, abs=1e-7)
    assert got["weights_sha256"] == rank1["weights_sha256"]
    w_ref, w_got = weights(ref_spec.out_policy_dir), weights(spec.out_policy_dir)
    assert w_ref.keys() == w_got.keys()
    assert max((w_ref[k] - w_got[k]).abs().max().item() for k in w_ref) <= 1e-6
    # one export, renamed into place whole: no second copy, no temporary folder left
    assert [p.name for p in Path(spec.out_policy_dir).parent.iterdir()] == ["policy"]


def squeue_nodes(name: str) -> str:
    """Slurm's state of node `name` (sinfo)."""
    return subprocess.run(["sinfo", "-h", "-n", name, "-o", "%T"], capture_output=True,
                          text=True, check=False).stdout


def test_rollout_shards_on_two_nodes_equal_those_written_here(
        workdir, base_model, tiny_shards, two_nodes):
    """The tiny experiment's first rollouts and evaluation through the Slurm profile, on
    partition `nodes` (LLN: each job on the least loaded node): the two shards land on
    rlver-n1 and rlver-n2, and each equals the shard written in-process on this host (every
    column but timings). The update is left out: the two-node update test covers it."""
    wd = workdir / "spread"
    link_tree(base_model, wd / "resources" / "models" / base_model.name)
    run, rel = Run(wd / "results" / "spread"), Run(Path("results") / "spread")
    targets = [*rel.shards(0, 2), rel.eval_metrics(0)]  # relative to --directory
    res = subprocess.run(
        [str(h.BIN / "snakemake"), *map(str, targets), "-s", str(h.ROOT / "Snakefile"),
         "--directory", str(wd),
         "--profile", str(h.ROOT / "tests" / "slurm" / "profile"),
         "--set-resources", "rollout:slurm_partition=nodes", "evaluate:slurm_partition=nodes",
         "--config", "run=spread", "overrides=" + " ".join([*h.TINY, *SLURM_UPDATE])],
        capture_output=True, text=True, timeout=900,
        env=os.environ | {"PATH": f"{h.BIN}:{os.environ['PATH']}"})
    assert res.returncode == 0, (res.stderr + res.stdout)[-4000:]
    hosts = {}
    for rule in ("rollout", "evaluate"):
        for log in (wd / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log"):
            line = next(x for x in log.read_text().splitlines() if "Slurm job" in x)
            hosts[log.parent.name] = line.rsplit(" on ", 1)[1]
    assert set(hosts.values()) == {"rlver-n1", "rlver-n2"}, hosts
    for mine, here in zip(run.shards(0, 2), tiny_shards, strict=True):
        assert column_hashes(mine) == column_hashes(here), mine
    assert run.eval_metrics(0).is_file()
