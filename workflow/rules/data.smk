# Inputs of a run: the frozen config, the base model, the personas, iteration 0's policy.
# resources/ is shared between runs, so its rules take their settings as params, not the
# run's config file as input: starting a new run never re-makes another run's inputs.


rule freeze_config:
    output:
        CONFIG,
    log:
        f"{LOGS}/freeze_config.log",
    run:
        rlver_config.freeze(CFG, output[0])
        with open(log[0], "w") as f:
            print(f"froze run {CFG.run} (config {rlver_config.config_hash(CFG)})", file=f)


rule prepare_model:
    output:
        directory(MODEL),
    params:
        source=CFG.model.source,
    log:
        f"{LOGS}/prepare_model.log",
    shell:
        "rlver prepare-model --source {params.source:q} --out {output} 2>&1 | tee {log}"


rule personas:
    output:
        train=f"{PERSONAS}/train.parquet",
        test=f"{PERSONAS}/test.parquet",
    params:
        spec=rlver_config.to_json(CFG.personas),
    log:
        f"{LOGS}/personas.log",
    shell:
        "rlver personas --spec {params.spec:q} --train {output.train} --test {output.test} "
        "2>&1 | tee {log}"


rule init_policy:
    input:
        MODEL,
    output:
        directory(policy(0)),
    log:
        f"{LOGS}/init_policy.log",
    shell:
        "rlver init-policy --model {input} --out {output} 2>&1 | tee {log}"
