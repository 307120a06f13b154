# Inputs of a run: the frozen config, the base model, the personas, iteration 0's policy.
# resources/ is shared between runs, so its rules take their settings as params, not the
# run's config file as input: starting a new run never re-makes another run's inputs.


# Frozen once the base model is prepared: the frozen config records its weights' sha256.
# `ancient`: a model folder prepared again later (same weights: the Snakefile refuses
# others) re-makes nothing; the same for iteration 0's policy below.
rule freeze_config:
    localrule: True
    input:
        ancient(MODEL),
    output:
        CONFIG,
    params:
        args=compose_args(config),
    log:
        log_path("freeze_config"),
    conda:
        ENV
    shell:
        "rlver compose {params.args} --base-model {input:q} --out {output} 2>&1 | tee {log}"


# A conversion on the submit host: no queue wait, and the model source is read where it
# was given.
rule prepare_model:
    localrule: True
    output:
        directory(MODEL),
    params:
        source=CFG.model.source,
    log:
        log_path("prepare_model"),
    conda:
        ENV
    shell:
        "rlver prepare-model --source {params.source:q} --out {output} 2>&1 | tee {log}"


rule personas:
    localrule: True
    output:
        train=f"{PERSONAS}/train.parquet",
        test=f"{PERSONAS}/test.parquet",
    params:
        spec=rlver_config.to_json(CFG.personas),
    log:
        log_path("personas"),
    conda:
        ENV
    shell:
        "rlver personas --spec {params.spec:q} --train {output.train} --test {output.test} "
        "2>&1 | tee {log}"


rule init_policy:
    localrule: True
    input:
        ancient(MODEL),
    output:
        directory(policy(0)),
    log:
        log_path("init_policy"),
    conda:
        ENV
    shell:
        "rlver init-policy --model {input} --out {output} 2>&1 | tee {log}"
