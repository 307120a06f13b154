# rlver: RLVER as a Snakemake workflow. Reads like a table of contents:
# the config is composed once and frozen (common.smk); each stage family is one file.
#
#   snakemake --profile profiles/local                          # embedded default (smoke)
#   snakemake --profile profiles/slurm --config experiment=NAME # on a Slurm cluster
from snakemake.utils import min_version

min_version("9.0")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
# One job per stage, or resident blocks of cluster.iterations_per_job iterations (one
# rule per block, writing the same files; two rules for one file would be ambiguous).
if CFG.cluster.iterations_per_job == 1:

    include: "workflow/rules/rollout.smk"
    include: "workflow/rules/update.smk"
    include: "workflow/rules/evaluate.smk"

else:

    include: "workflow/rules/block.smk"


include: "workflow/rules/retention.smk"
include: "workflow/rules/report.smk"


# The simulated user served by the workflow itself (simulator=served): started with the
# run, restarted when lost, stopped at its end.
if CFG.simulator.backend == "served":

    include: "workflow/rules/served.smk"


# The whole results tree, not only the report: Snakemake regenerates a deleted
# intermediate file (a rollout shard, say) only when a requested target needs it.
rule all:
    default_target: True
    input:
        REPORT,
        [update_metrics(i) for i in range(ITERATIONS)],
        [p for i in range(ITERATIONS) for p in rollout_shards(i)],
        [eval_metrics(i) for i in evaluated_iterations()],
        [retention_metrics(i) for i in retention_iterations()],
