# Training dialogues of one iteration, one job per shard.


rule rollout:
    input:
        config=CONFIG,
        policy=policy("{iteration}"),
        personas=f"{PERSONAS}/train.parquet",
    output:
        str(L.shard("{iteration}", "{shard}")),
    log:
        log_path("rollout", "{iteration}", "{shard}"),
    threads: CFG.cluster.rollout.cpus
    conda:
        ENV
    resources:
        **slurm_resources("rollout"),
    shell:
        "rlver rollout --config {input.config} --iteration {wildcards.iteration} "
        "--shard {wildcards.shard} --policy {input.policy} --personas {input.personas} "
        "--out {output} --threads {threads} 2>&1 | tee {log}"
