# The run's HTML report: learning curves, outcomes, emotion trajectories, examples.


rule report:
    localrule: True
    input:
        config=CONFIG,
        evals=[eval_metrics(i) for i in evaluated_iterations()],
        retention=[retention_metrics(i) for i in retention_iterations()],
        updates=[update_metrics(i) for i in range(ITERATIONS)],
        rollouts=[p for i in range(ITERATIONS) for p in rollout_shards(i)],
    output:
        directory(REPORT),
    params:
        run_dir=lambda wildcards, input: os.path.dirname(input.config),
    log:
        log_path("report"),
    conda:
        ENV
    shell:
        "rlver report --run-dir {params.run_dir} --out {output} 2>&1 | tee {log}"
