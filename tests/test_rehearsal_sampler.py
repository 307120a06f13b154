"""bench/rehearsal.py's memory sampler finds a run's stages from /proc and counts each
process once."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from bench.rehearsal import Sampler, _pss

#: A stand-in for submitit's local launcher: its argv names the module and ends with the
#: job folder, and it starts a child whose argv does the same (the task), as submitit's
#: `_local` starts `_submit`. Both sleep; nothing of submitit runs.
LAUNCHER = (
    "import subprocess, sys, time\n"
    "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)',"
    " 'submitit.core._submit', sys.argv[-1]])\n"
    "time.sleep(30)\n"
)


def test_an_update_job_is_found_and_its_processes_counted_once(tmp_path: Path) -> None:
    folder = tmp_path / "results" / "run" / "iter_0003" / "update" / "submitit"
    proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "submitit.local._local",
                             str(folder)])
    try:
        sampler = Sampler(tmp_path)
        for _ in range(100):  # the child is up within a second or two
            time.sleep(0.1)
            sampler.sample()
            if "update 3" in sampler.stages and len(sampler.stages["update 3"].roots) == 2:
                break
        use = sampler.stages["update 3"]
        assert len(use.roots) == 2  # launcher and task, both recognised
        # The union of the two trees, not their sum: the task is inside the launcher's.
        union = sum(_pss(p) for p in use.roots)
        assert abs(use.peak_pss - union) < 0.2 * union
        other = Sampler(tmp_path / "elsewhere")
        other.sample()
        assert other.stages == {}
    finally:
        proc.kill()
        subprocess.run(["pkill", "-f", str(folder)], check=False)
        proc.wait()


def test_a_stopped_local_run_leaves_no_job(tmp_path: Path) -> None:
    """`cancel_jobs` with the local profile ends a job of the run that runs in a session
    of its own (as submitit's local jobs do), and nothing outside the run; it does not
    need Slurm's commands."""
    from bench.rehearsal import cancel_jobs

    folder = tmp_path / "results" / "run" / "iter_0000" / "update" / "submitit"
    job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", str(folder)],
                           start_new_session=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              str(tmp_path.parent / "elsewhere")], start_new_session=True)
    try:
        time.sleep(0.5)
        cancel_jobs(tmp_path, "local")
        assert job.wait(timeout=10) != 0
        assert other.poll() is None
    finally:
        for p in (job, other):
            p.kill()
            p.wait()


def test_a_failed_jobs_error_block_and_its_logs_are_kept(tmp_path: Path) -> None:
    """The rehearsal deletes a run folder once read: a failed job's reason is copied out
    (Snakemake's error block and the tail of each log file the block names)."""
    from bench.rehearsal import failures

    stage_log = tmp_path / "results" / "r" / "logs" / "evaluate" / "iter_0000.log"
    stage_log.parent.mkdir(parents=True)
    stage_log.write_text("".join(f"line {i}\n" for i in range(100)) + "evaluate: refused\n")
    slurm_log = tmp_path / ".snakemake" / "slurm_logs" / "rule_evaluate" / "0000" / "2.log"
    slurm_log.parent.mkdir(parents=True)
    slurm_log.write_text("slurmstepd: error: Exceeded job memory limit\n")
    (tmp_path / "snakemake.log").write_text(
        "Finished jobid: 4 (Rule: rollout)\n"
        "Error in rule evaluate:\n"
        "    message: SLURM-job '2' failed, SLURM status is: 'FAILED'. For further error"
        " details see the cluster/cloud log and the log files of the involved rule(s).\n"
        "    jobid: 7\n"
        "    log: results/r/logs/evaluate/iter_0000.log, "
        f"{slurm_log} (check log file(s) for error details)\n"
        "\n"
        "Finished jobid: 9 (Rule: update_0000)\n")
    text = failures(tmp_path, tail_lines=5)
    assert text.startswith("Error in rule evaluate:")
    assert "--- results/r/logs/evaluate/iter_0000.log (last 5 lines)" in text
    assert "evaluate: refused" in text and "line 94" not in text
    assert "Exceeded job memory limit" in text
    assert "update_0000" not in text
