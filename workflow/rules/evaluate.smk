# The benchmark protocol on the test personas, for each evaluated iteration's policy.


rule evaluate:
    input:
        config=CONFIG,
        policy=f"{RUN}/iter_{{iteration}}/policy",
        personas=f"{PERSONAS}/test.parquet",
    output:
        metrics=f"{RUN}/iter_{{iteration}}/eval/metrics.json",
        dialogues=f"{RUN}/iter_{{iteration}}/eval/dialogues.parquet",
    params:
        out_dir=lambda wildcards, output: os.path.dirname(output.metrics),
    log:
        f"{LOGS}/evaluate/iter_{{iteration}}.log",
    threads: 1
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "rlver evaluate --config {input.config} --iteration {wildcards.iteration} "
        "--policy {input.policy} --personas {input.personas} --out-dir {params.out_dir} "
        "--threads {threads} 2>&1 | tee {log}"
