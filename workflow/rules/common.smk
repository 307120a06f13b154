# Config composition, validation and the file names every rule uses.
import sys

sys.path.insert(0, workflow.basedir)

from snakemake.exceptions import WorkflowError

from rlver import config as rlver_config
from rlver import layout
from rlver.errors import RlverInputError
from rlver.models import check_source
from rlver.personas import check_persona_set


def compose_run_config(snakemake_config):
    """The run's config from --config (see rlver.config.snakemake_overrides), refused if it
    differs from the run's frozen config."""
    experiment, run, overrides = rlver_config.snakemake_overrides(snakemake_config)
    cfg = rlver_config.compose(experiment, overrides, run=run)
    frozen = f"results/{cfg.run}/config.yaml"
    if os.path.exists(frozen):
        rlver_config.check_unchanged(cfg, frozen)
    check_source(cfg.model.source)
    return cfg


def compose_args(snakemake_config):
    """The same config as `rlver compose` arguments (rule freeze_config writes it)."""
    import shlex

    experiment, run, overrides = rlver_config.snakemake_overrides(snakemake_config)
    return shlex.join(["--experiment", experiment, "--run", CFG.run, *overrides])


try:
    CFG = compose_run_config(config)
    check_persona_set(CFG.personas, f"resources/personas/{CFG.personas.name}")
except RlverInputError as exc:
    raise WorkflowError(f"rlver: {exc}")

if workflow.is_main_process:  # not again in every job
    from rlver.simulator.health import workflow_note

    if note := workflow_note(CFG.simulator):
        print(note, file=sys.stderr)

L = layout.Run(f"results/{CFG.run}")  # every path of the run (rlver/layout.py)
RUN = str(L.root)
CONFIG = str(L.config)
MODEL = str(layout.model_dir(CFG.model.name))
PERSONAS = str(layout.persona_dir(CFG.personas.name))
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


def log_path(stage, i=None, shard=None):
    return str(L.log(stage, i, shard))


def evaluated_iterations():
    """0, every, 2*every, ... and always the final policy."""
    every = CFG.evaluation.every
    return sorted(set(range(0, ITERATIONS + 1, every)) | {ITERATIONS})


wildcard_constraints:
    iteration=r"\d{4}",
    shard=r"\d{3}",
