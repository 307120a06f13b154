"""The update stage as a job: the input checks, submission through submitit and the job
body on each rank (its spec: `spec`; the preemption signal's handling: `preemption`).

`run_update` checks its inputs, submits `UpdateJob` through submitit (the local executor
on one machine, Slurm on a cluster: `cluster.launcher`), waits through any requeues and
surfaces the job id and log on failure. The job sets up torch.distributed from
submitit's environment and runs `trainer.train` on every rank.

On preemption or timeout (submitit's signal, USR2) every rank saves a DeepSpeed
checkpoint to `update/resume/` at the next optimizer-step boundary and the job requeues
itself (`UpdateJob.checkpoint`); the requeued job continues from that step and ends with
the weights of an uninterrupted run.
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path
from typing import Any

import submitit

from rlver import layout
from rlver.errors import RlverInputError, check_index
from rlver.io import write_json
from rlver.train.orphans import JOB_FILE, cancel_earlier_job
from rlver.train.preemption import Preemption
from rlver.train.spec import UpdateSpec


def check_inputs(spec: UpdateSpec) -> None:
    """Refuse a damaged policy, and rollouts from another config or another policy, before
    any job starts."""
    from rlver import config as config_mod
    from rlver.models import check_policy, verified_policy_sha256
    from rlver.schema import read_metadata

    check_index("--iteration", spec.iteration, config_mod.load(spec.config_path).iterations,
                f"{spec.config_path}'s iterations", "pass an iteration the run trains on.")
    # Damaged weights are named here: inside the job they would surface as its traceback.
    want_policy = verified_policy_sha256(spec.policy_dir)
    if spec.reference_dir.is_dir():
        # The layout only: hashing the base model again at every update (15 GB at 7B)
        # costs more than it finds; iteration 0's rollouts verified its sha256.
        check_policy(spec.reference_dir)
    want_cfg = config_mod.run_hash(spec.config_path)
    for path in spec.rollout_paths:
        meta = read_metadata(path)
        if meta["config_hash"] != want_cfg:
            raise RlverInputError(
                f"{path}: written under config {meta['config_hash']}, this run's config is "
                f"{want_cfg} (field config_hash). Fix: delete the file and rerun its rollout."
            )
        if meta["policy_sha256"] != want_policy:
            raise RlverInputError(
                f"{path}: sampled by policy {meta['policy_sha256'][:12]}, not by "
                f"{spec.policy_dir} ({want_policy[:12]}) (field policy_sha256). "
                "Fix: delete the file and rerun its rollout."
            )


def job_parameters(cfg: Any, iteration: int, stage: str = "update") -> dict[str, Any]:
    """submitit's parameters for the update job (or a resident block's, `stage`), from
    `cluster.*`."""
    cl = cfg.cluster
    params: dict[str, Any] = {
        "timeout_min": cl.timeout_min,
        "nodes": cl.nodes,
        "tasks_per_node": cl.tasks_per_node,
        # local: the GPUs the job sees (CUDA_VISIBLE_DEVICES=0..n-1; 0 runs on the CPU).
        "gpus_per_node": cl.gpus_per_node,
        "name": f"rlver-{stage}-{cfg.run}-{layout.it(iteration)}",
    }
    if cl.launcher == "slurm":
        params |= {
            "cpus_per_task": cl.cpus_per_task,
            "slurm_partition": cl.partition or None,
            "slurm_account": cl.account or None,
            "slurm_qos": cl.qos or None,
            "slurm_additional_parameters": dict(cl.slurm_additional_parameters),
            "slurm_signal_delay_s": cl.signal_delay_s,
        }
        if cl.mem_gb:
            params["mem_gb"] = cl.mem_gb
    return {k: v for k, v in params.items() if v is not None}


def submit_update(spec: UpdateSpec) -> Any:
    """Check the inputs and submit the job (one task per rank); returns the submitit job."""
    from rlver import config as config_mod

    check_inputs(spec)
    cfg = config_mod.load(spec.config_path)
    cl = cfg.cluster
    executor = submitit.AutoExecutor(folder=Path(spec.update_dir) / "submitit",
                                     cluster=cl.launcher, slurm_max_num_timeout=cl.max_requeues)
    executor.update_parameters(**job_parameters(cfg, spec.iteration))
    cancel_earlier_job(Path(spec.update_dir))
    job = executor.submit(UpdateJob(), spec)
    write_json(Path(spec.update_dir) / JOB_FILE, {"job_id": job.job_id, "launcher": cl.launcher})
    print(f"update iter {spec.iteration}: submitted job {job.job_id} ({cl.launcher}); "
          f"logs: {job.paths.stdout.parent}", file=sys.stderr, flush=True)
    return job


def run_update(spec: UpdateSpec) -> dict[str, Any]:
    """Stage `update`: submit the job, wait (through any requeues), return rank 0's metrics."""
    job = submit_update(spec)
    result: dict[str, Any] = job_results(job)[0]
    return result


def job_results(job: Any) -> list[Any]:
    """The results of a submitit job (one per rank). A job that failed on bad input or a
    full disk (an RlverInputError inside it) raises that message here, naming the job's
    log; any other failure raises with the job's traceback."""
    try:
        return list(job.results())
    except Exception as exc:
        text = str(exc)
        marker = f"{RlverInputError.__module__}.{RlverInputError.__name__}: "
        if marker in text:
            message = text.rsplit(marker, 1)[1].strip().splitlines()[0]
            raise RlverInputError(
                f"{message} (update job {job.job_id}; its log: {job.paths.stderr})"
            ) from exc
        raise RuntimeError(
            f"update job {job.job_id} failed; its log: {job.paths.stderr}\n{text}"
        ) from exc


class UpdateJob(submitit.helpers.Checkpointable):
    """The submitit job body, run once per rank.

    `resume`: this is a requeued job; continue from update_dir/resume if a checkpoint
    was completed there (a signal that came before the first step leaves none).
    """

    def __init__(self, resume: bool = False) -> None:
        self.resume = resume

    def __call__(self, spec: UpdateSpec) -> dict[str, Any]:
        from rlver import config as config_mod
        from rlver.train.trainer import train

        cfg = config_mod.load(spec.config_path)
        # torch.distributed's variables come from submitit's view of this job only: any
        # inherited from the submitting process (an in-process vLLM engine sets
        # LOCAL_WORLD_SIZE, for one) describe another job, so they are overwritten.
        dist = submitit.helpers.TorchDistributedEnvironment().export(
            set_cuda_visible_devices=False, overwrite=True)
        # Which host each rank landed on: a multi-node job's logs name all its nodes.
        nodes = ",".join(submitit.JobEnvironment().hostnames)
        print(f"update: rank {dist.rank}/{dist.world_size} (local rank {dist.local_rank}) on "
              f"{socket.gethostname()}; nodes {nodes}; rendezvous at "
              f"{dist.master_addr}:{dist.master_port}", file=sys.stderr, flush=True)
        return train(spec, cfg, resume=self.resume, preemption=Preemption())

    def checkpoint(self, spec: UpdateSpec) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on rank 0 after `train` saved update_dir/resume: requeue."""
        return submitit.helpers.DelayedSubmission(UpdateJob(resume=True), spec)
