# The benchmark protocol on the test personas, for each evaluated iteration's policy.


rule evaluate:
    input:
        config=CONFIG,
        policy=policy("{iteration}"),
        personas=f"{PERSONAS}/test.parquet",
    output:
        metrics=eval_metrics("{iteration}"),
        dialogues=str(L.eval_dialogues("{iteration}")),
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        log_path("evaluate", "{iteration}"),
    threads: CFG.cluster.evaluate.cpus
    conda:
        ENV
    resources:
        **slurm_resources("evaluate"),
    shell:
        "rlver evaluate --config {input.config} --iteration {wildcards.iteration} "
        "--policy {input.policy} --personas {input.personas} --out-dir {params.out_dir} "
        "--threads {threads} 2>&1 | tee {log}"
