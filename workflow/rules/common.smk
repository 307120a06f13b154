# Config composition, validation and the file names every rule uses.
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.exceptions import WorkflowError

from rlver import config as rlver_config
from rlver import layout
from rlver import retention_tasks as rlver_retention_tasks
from rlver.errors import RlverInputError
from rlver.models import check_source, prepared_sha256
from rlver.personas import check_persona_set
from rlver.snakemake_config import snakemake_overrides, storage_dirs


def compose_run_config(snakemake_config, results, resources):
    """The run's config from --config (see rlver.snakemake_config.snakemake_overrides),
    with the prepared base model's sha256 once it is prepared (refused if it was prepared
    from another source, rlver.models.prepared_sha256); refused if it differs from the
    run's frozen config but in extendable keys, whose changes are recorded (not by a dry
    run)."""
    experiment, run, overrides = snakemake_overrides(snakemake_config)
    cfg = rlver_config.compose(experiment, overrides, run=run)
    check_source(cfg.model.source)
    cfg.model.sha256 = prepared_sha256(
        layout.model_dir(cfg.model.name, resources), cfg.model.source) or ""
    run_dir = layout.Run(results / cfg.run)
    if run_dir.config.exists():
        frozen = rlver_config.load(run_dir.config).model.sha256
        if not (frozen and cfg.model.sha256):  # unknown on one side: nothing to compare
            cfg.model.sha256 = frozen
        changes = rlver_config.check_unchanged(cfg, run_dir.config)
        check_carried_state(cfg, run_dir, changes)
        for key, frozen, now in changes:
            print(f"rlver: run {cfg.run}: {key} {frozen!r} -> {now!r}"
                  + (" (dry run: not recorded)" if workflow.dryrun else ""), file=sys.stderr)
        if not workflow.dryrun:
            rlver_config.record_changes(run_dir.config, changes)
    return cfg


def check_carried_state(cfg, run_dir, changes):
    """PPO's critic carries over from update to update, but the last update of a plan
    keeps none: a PPO run can get more iterations only before its last update is done."""
    planned = next((frozen for key, frozen, _ in changes if key == "iterations"), None)
    if planned is None or cfg.algorithm.name != "ppo":
        return
    last = planned - 1
    if run_dir.update_metrics(last).exists() and not run_dir.critic(last).exists():
        raise RlverInputError(
            f"{run_dir.update_metrics(last)}: the run's last planned update is done and kept "
            f"no critic (field iterations: {planned} -> {cfg.iterations}), so update "
            f"{planned} would train a new critic from scratch. Fix: start a new run "
            "(--config run=NAME), or extend a PPO run before its last update ends."
        )


def compose_args(snakemake_config):
    """The same config as `rlver compose` arguments (rule freeze_config writes it)."""
    import shlex

    experiment, run, overrides = snakemake_overrides(snakemake_config)
    return shlex.join(["--experiment", experiment, "--run", CFG.run, *overrides])


try:
    # Where the run's files live (--config results_dir=... resources_dir=...; default
    # results/ and resources/ here): not part of the run's config.
    RESULTS, RESOURCES = storage_dirs(config)
    CFG = compose_run_config(config, RESULTS, RESOURCES)
    check_persona_set(CFG.personas, layout.persona_dir(CFG.personas.name, RESOURCES))
except RlverInputError as exc:
    raise WorkflowError(f"rlver: {exc}")

if workflow.is_main_process:  # not again in every job
    from rlver.budget import budget_note
    from rlver.simulator.health import workflow_note

    for note in (budget_note(CFG), workflow_note(CFG.simulator)):
        if note:
            print(note, file=sys.stderr)

L = layout.Run(RESULTS / CFG.run)  # every path of the run (rlver/layout.py)
RUN = str(L.root)
CONFIG = str(L.config)
MODEL = str(layout.model_dir(CFG.model.name, RESOURCES))
PERSONAS = str(layout.persona_dir(CFG.personas.name, RESOURCES))
ITERATIONS = CFG.iterations
SHARDS = CFG.rollout.shards
# The software of every rule (used with --software-deployment-method conda).
ENV = "../../environment.yml"
REPORT = str(L.report)


def policy(i):
    return str(L.policy(i))


def policy_output(i):
    """iter_<i>/policy as update_<i-1>'s output: temporary (Snakemake deletes it once the
    rollouts and the update of iteration i are done) unless it is evaluated or
    algorithm.keep_policies is `all`. Iteration 0's, the KL reference, is always evaluated."""
    out = directory(policy(i))
    if CFG.algorithm.keep_policies == "all" or i in evaluated_iterations():
        return out
    return temp(out)


def rollout_shards(i):
    return [str(p) for p in L.shards(i, SHARDS)]


def update_metrics(i):
    return str(L.update_metrics(i))


def eval_metrics(i):
    return str(L.eval_metrics(i))


def retention_metrics(i):
    return str(L.retention_metrics(i))


def slurm_resources(job):
    """The resources of a rollout, evaluate or retention job (config cluster.<job>), named
    as Snakemake's Slurm executor plugin reads them; partition, account and QoS fall back to
    the update job's, and an empty one is left out (the site's default)."""
    want = CFG.cluster[job]
    named = {
        "slurm_partition": want.partition or CFG.cluster.partition,
        "slurm_account": want.account or CFG.cluster.account,
        "qos": want.qos or CFG.cluster.qos,
    }
    return {k: v for k, v in named.items() if v} | {
        "gpu": want.gpus,
        "cpus_per_task": want.cpus,
        "mem_mb": want.mem_mb,
        "runtime": want.runtime_min,
    }


def log_path(stage, i=None, shard=None):
    return str(L.log(stage, i, shard))


def evaluated_iterations():
    return rlver_config.evaluated_iterations(CFG)


def retention_iterations():
    return rlver_retention_tasks.retention_iterations(CFG)


wildcard_constraints:
    iteration=r"\d{4}",
    shard=r"\d{3}",
