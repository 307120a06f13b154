"""Helpers the test files share: paths, the tiny config, running the workflow."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from submitit.local.local import LocalJobEnvironment

from bench.support import (  # noqa: F401  (the tests import them here)
    BIN,
    ROOT,
    TINY,
    snakemake,
    update_spec,
)

#: The reference data and paper notes beside the repository (../shared/); RLVER_SHARED_DIR
#: points elsewhere (a clone or worktree that is not beside it).
SHARED = Path(os.environ.get("RLVER_SHARED_DIR", ROOT.parent / "shared"))
#: The loopback Slurm cluster of the tests (docs/cluster.md, "Testing against a real Slurm").
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
#: Its state, logs and PID files (cluster.sh's RLVER_SLURM_DIR).
SLURM_DIR = Path(os.environ.get("RLVER_SLURM_DIR", "/tmp/rlver-slurm"))

def shared(relative: str) -> Path:
    """../shared/<relative>, for a test that needs it. Where it is absent the test is
    skipped, except under CI=true, where it fails saying what is missing: CI always has
    it, so a missing file must never turn into a green run."""
    path = SHARED / relative
    if not path.exists():
        what = (f"{path} is absent (../shared/{relative}: the reference data and paper notes "
                "beside the repository)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what}; CI=true needs it. Fix: put the shared folder beside the "
                        "repository, or point RLVER_SHARED_DIR at it.", pytrace=False)
        pytest.skip(what)
    return path


def job_counts(log: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table as {rule: count}."""
    table = log.split("Job stats:")[1].split("total")[0]
    return {m[0]: int(m[1]) for m in re.findall(r"^(\w+)\s+(\d+)$", table, re.M)}


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
