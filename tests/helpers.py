"""Helpers the test files share: paths, the tiny config, running the workflow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from submitit.local.local import LocalJobEnvironment

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
BIN = Path(sys.executable).parent
#: The loopback Slurm cluster of the tests (tests/slurm/README.md).
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
#: Its state, logs and PID files (cluster.sh's RLVER_SLURM_DIR).
SLURM_DIR = Path(os.environ.get("RLVER_SLURM_DIR", "/tmp/rlver-slurm"))

#: Overrides that shrink the smoke experiment to seconds per stage, for tests.
TINY = [
    "iterations=2",
    "personas.num_train=24",
    "personas.num_test=4",
    "rollout.personas_per_iteration=2",
    "rollout.samples_per_persona=2",
    "rollout.shards=2",
    "rollout.batch_size=4",
    "rollout.max_new_tokens=12",
    "simulator.max_turns=2",
    "evaluation.num_personas=2",
    "evaluation.max_turns=2",
    "evaluation.max_new_tokens=12",
    "cluster.cpus_per_task=1",
]


def snakemake(workdir: Path, run: str | None, overrides: list[str], args: tuple[str, ...] = (),
              config: tuple[str, ...] = (), timeout: float = 900
              ) -> subprocess.CompletedProcess[str]:
    """The workflow in `workdir` with profiles/local; `config`: more --config items
    (experiment=..., scale=...). Errors of the Snakefile are printed on stdout: both
    streams end up in `stderr`."""
    run_item = [] if run is None else [f"run={run}"]
    cmd = [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
           "--profile", str(ROOT / "profiles" / "local"), *args,
           "--config", *run_item, *config, "overrides=" + " ".join(overrides)]
    env = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    res.stderr += res.stdout
    return res


def job_counts(log: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table as {rule: count}."""
    table = log.split("Job stats:")[1].split("total")[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


def update_spec(workdir: Path, base_model: Path, rows: list[dict], name: str,
                *overrides: str) -> object:
    """The UpdateSpec of iteration 0 of a run `name` (the smoke experiment with TINY and
    `overrides`) whose rollouts are `rows`, frozen and written under `workdir`."""
    from rlver import config
    from rlver.io import weights_sha256
    from rlver.models import link_tree
    from rlver.schema import write_trajectories
    from rlver.train import UpdateSpec

    cfg = config.compose("smoke", [*TINY, *overrides], run=name)
    run = workdir / name
    config.freeze(cfg, run / "config.yaml")
    policy = run / "iter_0000" / "policy"
    link_tree(base_model, policy)
    path = run / "iter_0000" / "rollouts" / "shard_000.parquet"
    write_trajectories(path, rows, config_hash=config.config_hash(cfg),
                       policy_sha256=weights_sha256(policy), kind="rollout")
    return UpdateSpec(str(run / "config.yaml"), 0, str(policy), (str(path),),
                      str(run / "iter_0001" / "policy"), str(run / "iter_0000" / "update"))


#: Overrides that send the update job to the loopback Slurm cluster (no GPUs, small), and
#: size its rollout and evaluate jobs for it (config/cluster/slurm.yaml's are a 7B job's).
SLURM_UPDATE = ["cluster=slurm", "cluster.partition=gpu", "cluster.gpus_per_node=0",
                "cluster.cpus_per_task=1", "cluster.mem_gb=3", "cluster.timeout_min=10",
                *(f"cluster.{job}.{key}" for job in ("rollout", "evaluate")
                  for key in ("gpus=0", "cpus=1", "mem_mb=2000", "runtime_min=30"))]


def squeue(*args: str, fmt: str = "%i %j %T %M %R") -> str:
    """The queue (or what `args` select of it) in `fmt`, without a header; empty: no jobs.
    The test cluster has no accounting, so no sacct."""
    res = subprocess.run(["squeue", "-h", *args, "-o", fmt], capture_output=True, text=True,
                         check=False)
    return res.stdout.strip()


def start_cluster(*partitions: str) -> Iterator[None]:
    """Start the loopback cluster in the tests' one layout (this host: partitions cpu and
    gpu; rlver-n1, rlver-n2: partition nodes) with no job queued in `partitions`, for a
    fixture to yield from; cancel the jobs there afterwards. One layout and per-partition
    clean-up: the two pytest workers of `make test` use the cluster at once, and neither
    restarts it or cancels the other's jobs."""
    if os.geteuid() != 0 and shutil.which("slurmctld") is None:
        pytest.skip("starting the loopback Slurm cluster needs root (apt-get, munged)")
    subprocess.run([str(CLUSTER), "start", "--nodes", "2"], check=True, timeout=600)
    # Jobs of an earlier test session that was killed would hold the nodes' CPUs: the
    # cluster belongs to the tests, so they are cancelled and the nodes drained of them.
    where = ["--user", os.environ.get("USER", "root"), "--partition", ",".join(partitions)]
    subprocess.run(["scancel", *where], check=False)
    deadline = time.monotonic() + 120
    while squeue(*where):
        assert time.monotonic() < deadline, f"leftover jobs were not cancelled:\n{squeue()}"
        time.sleep(1)
    yield
    subprocess.run(["scancel", *where], check=False)


def preempt_after(job, text: str, timeout_s: float = 600) -> None:
    """Once rank 0 has logged `text`, send submitit's preemption signal to every task of
    the job: what submitit's local controller does at a timeout, and Slurm on preemption.

    (`LocalJob._interrupt()` signals the controller process instead; in submitit 1.5.4
    the controller has no handler for that signal and dies of it, so no task hears it.)
    """
    deadline = time.monotonic() + timeout_s
    while text not in (job.stderr() or ""):
        assert job.state == "RUNNING", f"job ended before '{text}':\n{job.stderr()}"
        assert time.monotonic() < deadline, f"no '{text}' in {timeout_s} s"
        time.sleep(0.1)
    pid = job._process.pid
    tasks = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    assert tasks, "the job has no running tasks"
    for task in tasks:
        os.kill(int(task), LocalJobEnvironment._usr_sig())


class CharTokenizer:
    """Just enough tokenizer for ChatTokens and decoding, for engines the tests script:
    one id per character, 0 the end of a turn."""

    eos_token_id = 0

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=False):
        text = "".join(f"<{m['role']}>{m['content']}</>" for m in messages)
        return text + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [ord(c) for c in text]}

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids if i)
