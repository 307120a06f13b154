# The served simulated user (simulator=served): the run's vLLM servers are kept up by a
# supervisor in this Snakemake process (rlver/served/supervisor.py), not by rules: a
# Snakemake job ends before its dependants start, and a server has to outlive them all.
# It starts with the run, only if a job that talks to the simulated user is to run; it
# replaces lost servers, and stops them when Snakemake ends. A Snakemake killed without a
# chance to stop them stops renewing their lease, and they stop by themselves.
import atexit

from rlver.served.supervisor import Supervisor

SERVED = []  # the running supervisor, if any


def served_jobs_to_run():
    """Whether the jobs Snakemake is about to run include one that needs the server."""
    names = {job.rule.name for job in workflow.dag.needrun_jobs()}
    return bool(names & {"rollout", "evaluate"}) or any(n.startswith("block_") for n in names)


onstart:
    if served_jobs_to_run():
        try:
            SERVED.append(Supervisor(CFG, RUN))
            SERVED[0].start()
        except RlverInputError as exc:
            raise WorkflowError(f"rlver: {exc}")
        atexit.register(SERVED[0].stop, "snakemake exited")


onsuccess:
    for supervisor in SERVED:
        supervisor.stop("the run finished")


onerror:
    for supervisor in SERVED:
        supervisor.stop("the run failed")
