"""Stopping what an earlier, killed submission of an update left running.

Killing Snakemake kills the process that waits on the update, not the job it submitted:
a Slurm job runs on, and so does a local one. A rerun first stops that job (its id is in
`update/job.json`) and clears the torch extension build locks it may have left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

#: The id of the update's latest Slurm job, next to its submitit folder.
JOB_FILE = "job.json"


def cancel_earlier_job(update_dir: Path, wait_s: float = 300.0) -> None:
    """Stop a job of this update that is still running, and wait until it is gone.

    Killing Snakemake kills the process that waits on the update, not the job it
    submitted: a Slurm job runs on, and so does a local one (submitit's local controller
    and its tasks are left to init and ignore SIGTERM, as Slurm jobs do). Without this,
    the rerun's job and the orphan would write the same folders.
    """
    import subprocess

    path = update_dir / JOB_FILE
    if not path.is_file():
        return
    info = json.loads(path.read_text())
    job_id = str(info["job_id"])
    if info.get("launcher") == "slurm":
        def alive() -> bool:
            res = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"],
                                 capture_output=True, text=True, check=False)
            return res.returncode == 0 and res.stdout.strip() not in (
                "", "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT")

        def stop() -> None:
            subprocess.run(["scancel", job_id], check=False)
    else:
        folder = str(update_dir / "submitit")
        pids = local_job_processes(int(job_id), folder)

        def alive() -> bool:
            return any(running(pid) for pid in pids)

        def stop() -> None:
            # Frozen first, so the controller cannot start a task between the look at its
            # children and the kill.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pids[0], signal.SIGSTOP)
            pids[:] = local_job_processes(int(job_id), folder) or pids
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    if not alive():
        return
    print(f"update: stopping job {job_id}, an earlier submission of this update that is "
          "still running (its Snakemake was killed)", file=sys.stderr, flush=True)
    stop()
    deadline = time.monotonic() + wait_s
    while alive():
        if time.monotonic() > deadline:
            raise RuntimeError(f"update: job {job_id} (an earlier submission of this update) "
                               f"is still running {wait_s:.0f} s after it was stopped. Fix: "
                               "stop it by hand (scancel, or kill its processes) and rerun.")
        time.sleep(1)
    if info.get("launcher") != "slurm":  # a Slurm job's node may keep its own cache
        clear_extension_locks(since=path.stat().st_mtime)


def clear_extension_locks(since: float) -> None:
    """Remove torch extension build locks created since `since` (the killed job's
    submission). Loading a DeepSpeed op takes `<TORCH_EXTENSIONS_DIR>/<op>/lock` for a
    moment even when the op is built; a task killed in that moment leaves the lock behind,
    and every later load, the rerun's included, waits on it forever. A lock that a living
    process holds open (another run's job building or loading the op) is left alone."""
    from torch.utils.cpp_extension import get_default_build_root

    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    recent = []
    for lock in [*root.glob("*/lock"), *root.glob("*/*/lock")]:
        with contextlib.suppress(OSError):
            if lock.stat().st_mtime >= since:
                recent.append(lock)
    held = held_open(recent)  # a scan of /proc, only when there is something to check
    for lock in recent:
        with contextlib.suppress(OSError):
            if str(lock.resolve()) not in held:
                lock.unlink()
                print(f"update: removed {lock}, left by the stopped job", file=sys.stderr,
                      flush=True)


def held_open(paths: list[Path]) -> set[str]:
    """Those of `paths` that some process has open (torch's FileBaton keeps its lock file
    open until it releases it), read from /proc; empty where there is no /proc."""
    wanted = {str(p.resolve()) for p in paths}
    held: set[str] = set()
    if not wanted:
        return held
    for fd in Path("/proc").glob("[0-9]*/fd/*"):
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target in wanted:
                held.add(target)
    return held


def running(pid: int) -> bool:
    """The process exists and is not a zombie (a container's init may never reap one)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def local_job_processes(controller: int, folder: str) -> list[int]:
    """The controller of a submitit local job (its job id is the controller's pid) and its
    tasks, if that pid is still this job's controller (pids are reused); else []."""
    def cmdline(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    if "submitit.local._local" not in cmdline(controller) or folder not in cmdline(controller):
        return []
    pids = [controller]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == controller:
            pids.append(int(stat.parent.name))
    return pids
