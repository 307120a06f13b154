# Training dialogues of one iteration, one job per shard.


rule rollout:
    input:
        config=CONFIG,
        policy=f"{RUN}/iter_{{iteration}}/policy",
        personas=f"{PERSONAS}/train.parquet",
    output:
        f"{RUN}/iter_{{iteration}}/rollouts/shard_{{shard}}.parquet",
    log:
        f"{LOGS}/rollout/iter_{{iteration}}_shard_{{shard}}.log",
    threads: 1
    conda:
        ENV
    resources:
        mem_mb=4000,
        runtime=120,
    shell:
        "rlver rollout --config {input.config} --iteration {wildcards.iteration} "
        "--shard {wildcards.shard} --policy {input.policy} --personas {input.personas} "
        "--out {output} --threads {threads} 2>&1 | tee {log}"
