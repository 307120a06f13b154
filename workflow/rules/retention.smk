# General abilities kept (the paper's Table 2): lm-eval's tasks of retention.tasks on each
# measured policy (the first, the last and every retention.every-th), one job per policy.
# The same rule runs with resident blocks (cluster.iterations_per_job > 1), on the
# policies the blocks keep, rather than inside the block job: lm-eval loads the policy
# into its own model (its hf or vLLM backend), so the block's engines in memory would not
# be reused, and a measurement inside the block would hold the block's whole allocation
# (every node and GPU of the update) for a one-GPU job. Beside the block, it runs on its
# own resources (cluster.retention) while the next block trains.


rule retention:
    input:
        config=CONFIG,
        policy=policy("{iteration}"),
    output:
        metrics=retention_metrics("{iteration}"),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        log_path("retention", "{iteration}"),
    threads: CFG.cluster.retention.cpus
    conda:
        ENV
    resources:
        **slurm_resources("retention"),
    shell:
        "rlver retention --config {input.config} --iteration {wildcards.iteration} "
        "--policy {input.policy} --out-dir {params.out_dir} --threads {threads} "
        "2>&1 | tee {log}"
