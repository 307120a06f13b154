"""The workflow on a real Slurm: the host node (partitions cpu, gpu) of the loopback cluster of
tests/slurm/cluster.sh.

Rollout and evaluate run as Slurm jobs through the Snakemake Slurm executor plugin (test
profile tests/slurm/profile; their partition, GPUs and memory from the config,
helpers.SLURM_UPDATE); the update rule submits its training job to Slurm through submitit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from bench.faults import incomplete_outputs
from rlver.models import link_tree
from rlver.train import submit_update

from .helpers import BIN, ROOT, SLURM_UPDATE, TINY, squeue, start_cluster
from .test_update_dist import make_spec

pytestmark = pytest.mark.slow

SLURM = [*TINY, "iterations=1", *SLURM_UPDATE]


@pytest.fixture(scope="module")
def cluster():
    yield from start_cluster("cpu", "gpu")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, base_model, cluster) -> Path:
    wd = tmp_path_factory.mktemp("slurm")
    link_tree(base_model, wd / "resources" / "models" / base_model.name)
    return wd


def command(workdir: Path, run: str) -> list[str]:
    return [str(BIN / "snakemake"), "-s", str(ROOT / "Snakefile"), "--directory", str(workdir),
            "--profile", str(ROOT / "tests" / "slurm" / "profile"),
            "--config", f"run={run}", "overrides=" + " ".join(SLURM)]


ENV = os.environ | {"PATH": f"{BIN}:{os.environ['PATH']}"}


def test_smoke_on_slurm_survives_a_killed_snakemake(workdir):
    """The smoke experiment through the Slurm profile: rollout and evaluate as Slurm jobs of
    Snakemake's executor plugin, the update as a submitit Slurm job. Snakemake is killed
    (SIGKILL, with every process it runs locally) while the update job runs; the same
    command again (after --unlock) finishes the run to its report, redoes no stage that
    had finished, and cancels the orphaned update job before resubmitting it."""
    run = workdir / "results" / "killed"
    proc = subprocess.Popen(command(workdir, "killed"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    update_log = run / "logs" / "update" / "iter_0000.log"
    # Well inside pytest's timeout (900 s), so a stuck queue fails with the queue shown.
    deadline = time.time() + 600
    # The update starts only once Snakemake has seen both rollouts finish.
    while "submitted job" not in (update_log.read_text() if update_log.exists() else ""):
        assert proc.poll() is None, "snakemake ended before it could be killed"
        assert time.time() < deadline, f"the update was not submitted in time:\n{squeue()}"
        time.sleep(1)
    os.killpg(proc.pid, signal.SIGKILL)  # Snakemake and the jobs it runs locally
    proc.wait()
    unfinished = incomplete_outputs(workdir)
    # A stage's folder is its own while it runs (the update's submitit/ logs, job.json):
    # only files outside the folders of unfinished outputs count as finished.
    busy = {u.parent for u in unfinished}
    finished = [p for p in run.rglob("*") if p.is_file() and "logs" not in p.parts
                and not any(b in p.parents for b in busy)]
    before = {p: p.stat().st_mtime_ns for p in finished}
    assert sum("rollouts" in p.parts for p in before) == 2, sorted(map(str, before))
    # As after any crash: release the lock the killed Snakemake left, then run again.
    subprocess.run([*command(workdir, "killed"), "--unlock"], check=True, env=ENV, timeout=300,
                   capture_output=True)
    res = subprocess.run(command(workdir, "killed"), capture_output=True, text=True, env=ENV,
                         timeout=1500)
    assert res.returncode == 0, (res.stderr + res.stdout)[-4000:]
    assert (run / "report" / "index.html").exists()
    redone = [str(p) for p, t in before.items() if p.exists() and p.stat().st_mtime_ns != t]
    assert not redone, f"finished stages redone: {redone}"
    # rollout and evaluate went to Slurm through the executor plugin ...
    for rule in ("rollout", "evaluate"):
        assert list((workdir / ".snakemake" / "slurm_logs" / f"rule_{rule}").rglob("*.log"))
    # ... and the update through submitit's Slurm executor
    assert "(slurm)" in update_log.read_text()
    assert list((run / "iter_0000" / "update" / "submitit").glob("*_submission.sh"))


def test_update_at_its_time_limit_is_requeued_and_completes(workdir, base_model, rows):
    """The update job hits a Slurm time limit mid-way: Slurm's warning signal reaches it,
    it checkpoints at the next step and submitit requeues it; the requeued job resumes
    from the checkpoint and completes with every step done.

    The limit is forced: once step 1 is logged, `scontrol update TimeLimit` lowers it to
    what the job has used plus 2 minutes, inside cluster.signal_delay_s (150 s), so the
    signal comes at Slurm's next time-limit check; the requeued job gets its limit back.
    """
    spec = make_spec(workdir / "requeue", base_model, rows, "requeue", *SLURM[len(TINY):],
                     "algorithm.ppo_epochs=8", "algorithm.mini_batches=4",
                     "cluster.timeout_min=20", "cluster.signal_delay_s=150")
    job = submit_update(spec)
    deadline = time.monotonic() + 600
    while "step 1/32" not in (job.stderr() or ""):
        assert not job.done(), f"the job ended before step 1:\n{job.stderr()}"
        assert time.monotonic() < deadline, f"no step 1 in 10 min:\n{squeue()}"
        time.sleep(1)
    used = squeue("-j", job.job_id, fmt="%M")  # [hh:]mm:ss
    minutes = sum(int(x) * 60**k for k, x in enumerate(reversed(used.split(":")))) // 60
    subprocess.run(["scontrol", "update", f"JobId={job.job_id}", f"TimeLimit={minutes + 2}"],
                   check=True)
    # Back to the full limit once the job is requeued (pending), so it is not cut again.
    while squeue("-j", job.job_id, fmt="%T") not in ("PENDING", "REQUEUED", ""):
        assert time.monotonic() < deadline, "the job was never requeued"
        time.sleep(0.5)
    subprocess.run(["scontrol", "update", f"JobId={job.job_id}", "TimeLimit=20"], check=False)
    metrics = job.results()[0]
    log = job.stderr()
    assert "Caught signal SIGUSR2" in log and "resumed after step" in log, log[-3000:]
    assert len(metrics["resumed_at_steps"]) >= 1
    assert metrics["optimizer_steps"] == 32
    assert (Path(spec.out_policy_dir) / "model.safetensors").exists()
    assert not (Path(spec.update_dir) / "resume").exists()
